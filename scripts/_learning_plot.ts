/**
 * The learning benchmark's plot: held-out accuracy against judgments, a mean line and its 95% band per arm,
 * in side-by-side panels, as a small self-contained SVG.
 */
import type { Interval } from "./_learning_stats.ts";

/** One arm's curve: an interval over seeds at each number of judgments. */
export interface Curve {
  name: string;
  color: string;
  /** Dashed: a curve repeated in a panel for comparison. */
  dashed?: boolean;
  points: { x: number; y: Interval }[];
}

/** One panel of the plot. */
export interface Panel {
  title: string;
  curves: Curve[];
}

const PANEL_W = 440, H = 440, L = 52, R = 120, T = 56, B = 60;

/** Panels side by side, sharing the y range; `title` above them, `note` under them. */
export function plotBands(panels: Panel[], title: string, note: string): string {
  const all = panels.flatMap((p) => p.curves.flatMap((c) => c.points));
  const maxX = Math.max(1, ...all.map((p) => p.x));
  const lows = all.map((p) => p.y.mean - (Number.isNaN(p.y.half) ? 0 : p.y.half));
  const minY = Math.max(0, Math.floor(Math.min(...lows) * 10) / 10);
  const W = PANEL_W * panels.length;
  const y = (v: number) => T + (1 - (v - minY) / (1 - minY)) * (H - T - B);
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="18" text-anchor="middle" font-size="14">${escape(title)}</text>`,
    `<text x="${W / 2}" y="${H - 6}" text-anchor="middle" fill="#555">${escape(note)}</text>`,
  ];
  panels.forEach((panel, k) => {
    const x0 = k * PANEL_W;
    const x = (v: number) => x0 + L + (v / maxX) * (PANEL_W - L - R);
    parts.push(`<text x="${x0 + (PANEL_W - R + L) / 2}" y="40" text-anchor="middle">${escape(panel.title)}</text>`);
    for (let v = Math.ceil(minY * 10) / 10; v <= 1.0001; v += 0.1) {
      parts.push(
        `<line x1="${x(0)}" x2="${x(maxX)}" y1="${y(v).toFixed(1)}" y2="${y(v).toFixed(1)}" stroke="#e4e4e4"/>`,
        `<text x="${x(0) - 6}" y="${(y(v) + 4).toFixed(1)}" text-anchor="end">${Math.round(v * 100)}%</text>`,
      );
    }
    const ticks = [...new Set(panel.curves.flatMap((c) => c.points.map((p) => p.x)))].sort((a, b) => a - b);
    for (const v of ticks) {
      parts.push(
        `<line x1="${x(v)}" x2="${x(v)}" y1="${y(minY)}" y2="${y(minY) + 4}" stroke="#888"/>`,
        `<text x="${x(v)}" y="${y(minY) + 17}" text-anchor="middle" font-size="11">${v}</text>`,
      );
    }
    parts.push(
      `<text x="${x(maxX / 2)}" y="${H - 28}" text-anchor="middle">judgments (pairs, or thumbs)</text>`,
      `<text x="${x0 + 13}" y="${(T + H - B) / 2}" text-anchor="middle" ` +
        `transform="rotate(-90 ${x0 + 13} ${(T + H - B) / 2})">held-out accuracy</text>`,
    );
    for (const c of panel.curves) {
      const band = c.points.filter((p) => !Number.isNaN(p.y.half));
      if (band.length > 1 && !c.dashed) {
        const upper = band.map((p) => `${x(p.x).toFixed(1)},${y(Math.min(1, p.y.mean + p.y.half)).toFixed(1)}`);
        const lower = band.map((p) => `${x(p.x).toFixed(1)},${y(Math.max(minY, p.y.mean - p.y.half)).toFixed(1)}`);
        parts.push(
          `<polygon points="${[...upper, ...lower.reverse()].join(" ")}" fill="${c.color}" fill-opacity="0.18"/>`,
        );
      }
    }
    panel.curves.forEach((c, i) => {
      const d = c.points.map((p, j) => `${j === 0 ? "M" : "L"}${x(p.x).toFixed(1)},${y(p.y.mean).toFixed(1)}`);
      const dash = c.dashed ? ` stroke-dasharray="5 4"` : "";
      parts.push(
        `<path d="${d.join(" ")}" fill="none" stroke="${c.color}" stroke-width="2"${dash}/>`,
        ...c.points.map((p) =>
          `<circle cx="${x(p.x).toFixed(1)}" cy="${y(p.y.mean).toFixed(1)}" r="2.5" fill="${c.color}"/>`
        ),
        `<text x="${x(maxX) + 10}" y="${T + 14 + i * 18}" fill="${c.color}">${escape(c.name)}</text>`,
      );
    });
  });
  parts.push("</svg>");
  return parts.join("\n") + "\n";
}

function escape(text: string): string {
  return text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");
}
