/** A progress line with count, rate and ETA, drawn on stderr only when it is a terminal. */

/** Options for `createProgress`. */
export interface ProgressOptions {
  /** What is counted ("pairs", "tokens"). */
  unit: string;
  /** Expected total, for the percentage and ETA. */
  total?: number;
  /** Draw even when stderr is not a terminal (as plain lines). Default false. */
  force?: boolean;
}

/** A progress reporter: `tick(n)` adds work done, `done()` ends the line. */
export interface Progress {
  tick(n?: number): void;
  done(): void;
}

/** Formats seconds as `1h02m`, `3m05s` or `12s`. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return "?";
  const s = Math.round(seconds);
  if (s >= 3600) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${s}s`;
}

/** Starts a progress line; silent when stderr is not a terminal unless `force`. */
export function createProgress(options: ProgressOptions): Progress {
  const tty = Deno.stderr.isTerminal();
  const enabled = tty || (options.force ?? false);
  const start = performance.now();
  let count = 0;
  let lastDraw = 0;
  const encoder = new TextEncoder();
  const draw = (final: boolean) => {
    const elapsed = (performance.now() - start) / 1000;
    const rate = count / Math.max(elapsed, 1e-9);
    const total = options.total;
    const pct = total ? ` ${((100 * count) / total).toFixed(1)}%` : "";
    const eta = total && !final ? ` ETA ${formatDuration((total - count) / rate)}` : "";
    const line =
      `${count}${total ? `/${total}` : ""} ${options.unit}${pct} ${rate.toFixed(1)} ${options.unit}/s${eta}` +
      (final ? ` in ${formatDuration(elapsed)}` : "");
    Deno.stderr.writeSync(encoder.encode(tty ? `\r\x1b[K${line}${final ? "\n" : ""}` : `${line}\n`));
  };
  return {
    tick(n = 1) {
      count += n;
      const now = performance.now();
      if (enabled && now - lastDraw > (tty ? 100 : 5000)) {
        lastDraw = now;
        draw(false);
      }
    },
    done() {
      if (enabled) draw(true);
    },
  };
}
