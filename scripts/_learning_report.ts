/**
 * The learning benchmark's results: the per-seed rows (the schema of docs/learning.json and .csv), the
 * summary over seeds, the tables printed, and the plot. Kept apart from the runs so that a results file can be
 * reported again (`--from`) without training anything.
 */
import { z } from "zod";
import {
  firstReaching,
  formatPoints,
  type Interval,
  interval,
  largestDrop,
  pairedDifference,
  successiveSd,
} from "./_learning_stats.ts";
import { type Curve, plotBands } from "./_learning_plot.ts";

/** The benchmark's arms: those run by default, then the levers against swings between versions. */
export const ARMS = [
  "online",
  "frozen",
  "offline",
  "lora",
  "thumbs",
  "gate",
  "noisy-sigmoid",
  "noisy-robust",
  "isqrt",
  "cosine",
  "ema",
  "ema-isqrt",
  "gate-isqrt",
  "gate-ema",
  "gate-ema-isqrt",
  "adaptive-beta",
] as const;
/** One arm. */
export type Arm = typeof ARMS[number];
/** The arms run when --arms is not given. */
export const DEFAULT_ARMS: Arm[] = ARMS.slice(0, 8);

/** One run's held-out accuracy after every round (with --per-round): what its versions did one after another. */
export const TraceSchema = z.object({
  arm: z.enum(ARMS),
  seed: z.number().int().positive(),
  /** Judgments done when each version was evaluated (the first, 0: the base). */
  judgments: z.array(z.number().int().nonnegative()),
  /** Held-out accuracy of each version (the gate arms: of the served version). */
  accuracy: z.array(z.number().min(0).max(1)),
});
/** One run's accuracy after every round. */
export type Trace = z.infer<typeof TraceSchema>;

const Count = z.number().int().nonnegative();

/** One arm, seed and budget: a row of the CSV and of the JSON's `rows`. */
export const RowSchema = z.object({
  task: z.string(),
  arm: z.enum(ARMS),
  seed: z.number().int().positive(),
  judgments: z.number().int().positive(),
  /** Held-out accuracy of the policy (the gate arm: of the served version). */
  accuracy: z.number().min(0).max(1),
  /** Sampling, judging, training (and the gate) so far, in seconds; the reported evaluations excluded. */
  seconds: z.number().nonnegative(),
  /** Judged pairs that were ties (not trained); null for thumbs. */
  ties: Count.nullable(),
  /** Labeled pairs trained on (thumbs: thumbs trained on). */
  trained: Count,
  /** Labeled pairs whose verdict was flipped (the noisy arms). */
  flipped: Count,
  /** Verifier calls on sampled answers (N per judged pair, one per thumbs). */
  judge_calls: Count,
  /** Verifier calls on gate prompts (the gate arm). */
  gate_calls: Count,
  /** Candidates the gate promoted and refused (the gate arm). */
  promotions: Count,
  refusals: Count,
});
/** One arm, seed and budget. */
export type Row = z.infer<typeof RowSchema>;

/** What a results file must hold to be reported again (it holds more: the machine, the DPO settings). */
export const ResultsFileSchema = z.object({
  command: z.string(),
  wall_seconds: z.number().nonnegative(),
  settings: z.object({
    task: z.string(),
    /** Absent in files written before it was recorded: then the arms in the order of the rows. */
    arms: z.array(z.enum(ARMS)).min(1).optional(),
    seeds: z.array(z.number().int().positive()).min(1),
    budgets: z.array(z.number().int().positive()).min(1),
    round_sizes: z.array(z.number().int().positive()),
    eval_prompts: z.number().int().positive(),
    noise: z.number().min(0).lt(0.5),
  }),
  base_accuracy: z.number().min(0).max(1),
  rows: z.array(RowSchema).min(1),
  traces: z.array(TraceSchema).optional(),
});

/** Everything the tables and the plot are made from. */
export interface Results {
  task: string;
  arms: Arm[];
  seeds: number[];
  budgets: number[];
  /** Prompts per round (the gate decides once a round). */
  rounds: number;
  evalPrompts: number;
  noise: number;
  baseAccuracy: number;
  rows: Row[];
  /** Per-round accuracy of every run (with --per-round); empty otherwise. */
  traces: Trace[];
}

/** Results read back from a results file, validated, with the command and wall time of the run that wrote it. */
export function resultsFromFile(
  text: string,
  path: string,
): { results: Results; command: string; wallSeconds: number } {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new Error(`Cannot read the results file '${path}' as it is not JSON: ${(err as Error).message}`);
  }
  const parsed = ResultsFileSchema.safeParse(raw);
  if (!parsed.success) {
    throw new Error(`Cannot read the results file '${path}': ${z.prettifyError(parsed.error)}`);
  }
  const { settings, rows } = parsed.data;
  const results: Results = {
    task: settings.task,
    arms: settings.arms ?? [...new Set(rows.map((r) => r.arm))],
    seeds: settings.seeds,
    budgets: settings.budgets,
    rounds: settings.round_sizes.length,
    evalPrompts: settings.eval_prompts,
    noise: settings.noise,
    baseAccuracy: parsed.data.base_accuracy,
    rows,
    traces: parsed.data.traces ?? [],
  };
  return { results, command: parsed.data.command, wallSeconds: parsed.data.wall_seconds };
}

/** Per arm and budget (0: the base): the accuracy interval over seeds, and mean counts per seed. */
export interface Summary {
  arm: Arm;
  judgments: number;
  accuracy: Interval;
  ties: number | null;
  judge_calls: number;
  gate_calls: number;
  promotions: number;
  seconds: number;
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
const fmtInt = (v: number) => Math.round(v).toLocaleString("en-US");

/** The summary over seeds of every arm at 0 and at each budget. */
export function summarize(r: Results): Summary[] {
  const out: Summary[] = [];
  for (const arm of r.arms) {
    const base = interval(r.seeds.map(() => r.baseAccuracy));
    const zero = { judge_calls: 0, gate_calls: 0, promotions: 0, seconds: 0 };
    out.push({ arm, judgments: 0, accuracy: base, ties: arm === "thumbs" ? null : 0, ...zero });
    for (const judgments of r.budgets) {
      const at = r.rows.filter((row) => row.arm === arm && row.judgments === judgments);
      out.push({
        arm,
        judgments,
        accuracy: interval(at.map((row) => row.accuracy)),
        ties: arm === "thumbs" ? null : mean(at.map((row) => row.ties ?? 0)),
        judge_calls: mean(at.map((row) => row.judge_calls)),
        gate_calls: mean(at.map((row) => row.gate_calls)),
        promotions: mean(at.map((row) => row.promotions)),
        seconds: mean(at.map((row) => row.seconds)),
      });
    }
  }
  return out;
}

/** The rows as CSV, a header line first; a null is an empty cell. */
export function toCsv(rows: Row[]): string {
  const columns = Object.keys(RowSchema.shape) as (keyof Row)[];
  const lines = rows.map((row) =>
    columns.map((k) => {
      const v = row[k];
      return v === null ? "" : typeof v === "number" && !Number.isInteger(v) ? v.toFixed(4) : String(v);
    }).join(",")
  );
  return [columns.join(","), ...lines].join("\n") + "\n";
}

/** Paired comparisons reported when both arms ran: [a, b, what a − b measures]. */
const CONTRASTS: [Arm, Arm, string][] = [
  ["online", "frozen", "refreshing the reference"],
  ["online", "offline", "sampling on-policy"],
  ["lora", "online", "LoRA instead of the full model"],
  ["thumbs", "online", "thumbs instead of pairs"],
  ["gate", "online", "serving through the gate"],
  ["noisy-sigmoid", "online", "flipped verdicts"],
  ["noisy-robust", "noisy-sigmoid", "robust DPO on flipped verdicts"],
  ["isqrt", "online", "1/√step learning-rate decay"],
  ["cosine", "online", "cosine decay over the run"],
  ["ema", "online", "EMA of the weights"],
  ["ema-isqrt", "online", "EMA and 1/√step decay"],
  ["gate-isqrt", "gate", "1/√step decay behind the gate"],
  ["gate-ema", "gate", "EMA behind the gate"],
  ["gate-ema-isqrt", "gate", "EMA and decay behind the gate"],
  ["adaptive-beta", "online", "β adapted toward a KL target"],
];

/** How one run's versions moved: from its per-round trace. */
export interface Swing {
  /** Largest drop of a version below the best before it (points as a fraction). */
  drop: number;
  /** Standard deviation of the differences between successive versions from the first at 90% on (all without one). */
  sd: number;
  /** Judgments at the first version with ≥ 95% (null: none). */
  first95: number | null;
  /** Largest drop after the first version with ≥ 90% (the swings of a trained policy, not of early learning). */
  lateDrop: number;
}

/** The swing measures of one trace. */
export function swingOf(t: Trace): Swing {
  const points = t.judgments.map((x, i) => ({ x, y: t.accuracy[i]! }));
  const at90 = t.accuracy.findIndex((a) => a >= 0.9);
  return {
    drop: largestDrop(t.accuracy),
    sd: successiveSd(at90 < 0 ? t.accuracy : t.accuracy.slice(at90)),
    first95: firstReaching(points, 0.95),
    lateDrop: at90 < 0 ? 0 : largestDrop(t.accuracy.slice(at90)),
  };
}

/** The swing table (Markdown), one line per arm with traces: means ± 95% intervals over seeds. */
export function swingTable(r: Results): string {
  const arms = r.arms.filter((a) => r.traces.some((t) => t.arm === a));
  if (arms.length === 0) return "";
  const lines = [
    "swings between successive versions (per-round evaluation; points, mean ± 95% interval over seeds): the " +
    "largest drop of a version below the best before it, the same after the first version at 90% or more, the sd " +
    "of successive differences from that version on, and the judgments at the first version with 95% or more (seeds that reached it):",
    "| arm | largest drop | drop after 90% | sd of differences | first ≥ 95% at | final |",
    "|---|---:|---:|---:|---:|---:|",
  ];
  for (const arm of arms) {
    const traces = r.traces.filter((t) => t.arm === arm);
    const swings = traces.map(swingOf);
    const reached = swings.map((s) => s.first95).filter((x): x is number => x !== null);
    const first = reached.length === 0 ? "–" : `${fmtInt(mean(reached))} (${reached.length}/${swings.length})`;
    lines.push(
      `| ${arm} | ${formatPoints(interval(swings.map((s) => s.drop)))} | ${
        formatPoints(interval(swings.map((s) => s.lateDrop)))
      } | ${formatPoints(interval(swings.map((s) => s.sd)))} | ${first} | ${
        formatPoints(interval(traces.map((t) => t.accuracy.at(-1)!)))
      } |`,
    );
  }
  const contrasts = CONTRASTS.filter(([a, b]) => arms.includes(a) && arms.includes(b));
  if (contrasts.length > 0 && r.seeds.length > 1) {
    lines.push("", "paired differences of the largest drop after 90% and of the sd (points, a − b):");
    lines.push("| a − b | drop after 90% | sd of differences |", "|---|---:|---:|");
    for (const [a, b, what] of contrasts) {
      const by = (arm: Arm, f: (s: Swing) => number) =>
        new Map(r.traces.filter((t) => t.arm === arm).map((t) => [t.seed, f(swingOf(t))]));
      const cell = (f: (s: Swing) => number) => formatPoints(pairedDifference(by(a, f), by(b, f)), true);
      lines.push(`| ${a} − ${b} (${what}) | ${cell((s) => s.lateDrop)} | ${cell((s) => s.sd)} |`);
    }
  }
  return lines.join("\n");
}

/** The tables, as Markdown: accuracy, ties and judge calls, paired differences, the gate, the time per run. */
export function tables(r: Results, summary: Summary[]): string {
  const at = (arm: Arm, j: number) => summary.find((s) => s.arm === arm && s.judgments === j)!;
  const header = (first: string) =>
    `| ${first} | ${r.budgets.map(fmtInt).join(" | ")} |\n|---|${r.budgets.map(() => "---:").join("|")}|`;
  const lines = [
    `held-out accuracy (%, ${r.evalPrompts} prompts, greedy; base ${(100 * r.baseAccuracy).toFixed(1)}%), ` +
    `mean ± 95% interval (t) over ${r.seeds.length} seed(s) ${r.seeds.join(",")}, against judgments:`,
    header("arm"),
    ...r.arms.map((arm) => `| ${arm} | ${r.budgets.map((j) => formatPoints(at(arm, j).accuracy)).join(" | ")} |`),
    "",
    "ties (judged pairs not trained) / judge calls (verifier calls on sampled answers), mean per seed:",
    header("arm"),
    ...r.arms.map((arm) => {
      const cells = r.budgets.map((j) => {
        const s = at(arm, j);
        const gate = s.gate_calls > 0 ? ` + ${fmtInt(s.gate_calls)} gate` : "";
        return `${s.ties === null ? "–" : fmtInt(s.ties)} / ${fmtInt(s.judge_calls)}${gate}`;
      });
      return `| ${arm} | ${cells.join(" | ")} |`;
    }),
  ];
  const contrasts = CONTRASTS.filter(([a, b]) => r.arms.includes(a) && r.arms.includes(b));
  if (contrasts.length > 0 && r.seeds.length > 1) {
    lines.push("", "paired differences (points, a − b seed by seed, mean ± 95% interval):", header("a − b"));
    for (const [a, b, what] of contrasts) {
      const cells = r.budgets.map((j) => {
        const by = (arm: Arm) =>
          new Map(
            r.rows.filter((row) => row.arm === arm && row.judgments === j).map((row) => [row.seed, row.accuracy]),
          );
        return formatPoints(pairedDifference(by(a), by(b)), true);
      });
      lines.push(`| ${a} − ${b} (${what}) | ${cells.join(" | ")} |`);
    }
  }
  const last = r.budgets.at(-1)!;
  for (const arm of r.arms.filter((a) => a.startsWith("gate"))) {
    lines.push(
      "",
      `${arm}: ${at(arm, last).promotions.toFixed(1)} of ${r.rounds} candidates promoted per seed (mean)`,
    );
  }
  const swings = swingTable(r);
  if (swings) lines.push("", swings);
  lines.push("", "seconds of sampling, judging and training per run (evaluations excluded), mean over seeds:");
  for (const arm of r.arms) lines.push(`  ${arm}: ${at(arm, last).seconds.toFixed(0)} s`);
  return lines.join("\n");
}

const COLORS: Record<Arm, string> = {
  online: "#1f77b4",
  frozen: "#ff7f0e",
  offline: "#7f7f7f",
  lora: "#d62728",
  thumbs: "#9467bd",
  gate: "#2ca02c",
  "noisy-sigmoid": "#8c564b",
  "noisy-robust": "#e377c2",
  isqrt: "#17becf",
  cosine: "#bcbd22",
  ema: "#9edae5",
  "ema-isqrt": "#393b79",
  "gate-isqrt": "#2f6f2f",
  "gate-ema": "#98df8a",
  "gate-ema-isqrt": "#637939",
  "adaptive-beta": "#e7969c",
};

/** The plot: three panels (the pair arms; LoRA, thumbs and the gate; the noisy judge), online repeated dashed. */
export function plot(r: Results, summary: Summary[]): string {
  const curve = (arm: Arm, dashed = false): Curve => ({
    name: dashed ? `${arm} (dashed)` : arm,
    color: COLORS[arm],
    dashed,
    points: summary.filter((s) => s.arm === arm).map((s) => ({ x: s.judgments, y: s.accuracy })),
  });
  const pick = (arms: Arm[]) => arms.filter((a) => r.arms.includes(a));
  const withOnline = (arms: Arm[]) =>
    pick(arms).length === 0
      ? []
      : [...pick(arms).map((a) => curve(a)), ...(r.arms.includes("online") ? [curve("online", true)] : [])];
  const panels = [
    { title: "verifier judge, pairs", curves: pick(["online", "frozen", "offline"]).map((a) => curve(a)) },
    { title: "LoRA, thumbs, the gate (served)", curves: withOnline(["lora", "thumbs", "gate"]) },
    {
      title: `${Math.round(r.noise * 100)}% of verdicts flipped`,
      curves: withOnline(["noisy-sigmoid", "noisy-robust"]),
    },
    { title: "levers: decay, EMA", curves: withOnline(["isqrt", "cosine", "ema", "ema-isqrt", "adaptive-beta"]) },
    {
      title: "levers behind the gate (served)",
      curves: pick(["gate", "gate-isqrt", "gate-ema", "gate-ema-isqrt"]).map((a) => curve(a)),
    },
  ].filter((p) => p.curves.length > 0);
  return plotBands(
    panels,
    `Held-out accuracy against judgments (${r.task}; base ${(100 * r.baseAccuracy).toFixed(0)}%)`,
    `mean and 95% band (Student t) over seeds ${r.seeds.join(",")}; ${r.evalPrompts} held-out prompts, greedy`,
  );
}
