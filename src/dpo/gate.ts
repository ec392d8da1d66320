/**
 * The promotion gate: a trained policy is published (served) only when it is not worse than the best version
 * served so far (the bar, `GateBar`; the starting model before any). Both answer the gate's prompts, a
 * held-out set kept apart from the one the dashboard and the benchmarks report (so that the reported accuracy
 * is not the figure the gate selected on), greedily; each prompt gives a paired difference
 * d = score(candidate) − score(bar) (for a 0/1 checker: −1, 0 or 1).
 * The gate promotes when the one-sided lower confidence bound of the mean difference is not below
 * −margin: d̄ − z(confidence) · s/√n ≥ −margin (a non-inferiority test on paired data; with no variance the
 * bound is d̄ itself). A candidate it refuses is not published: training goes on from it, and its pairs
 * stay held until a later candidate passes (nothing trained is lost or trained twice), or, after
 * `GATE_RESET_AFTER` refusals in a row, the trainer goes back to the served version and trains them again.
 */
import { z } from "zod";

/** Candidates the gate may refuse in a row before training goes back to the served version (0: never). */
export const GATE_RESET_AFTER = 8;

/** One decision of the gate, kept by the trainer (`TrainingRecords.recordGate`). */
export const GateDecisionSchema = z.object({
  at: z.number().int().nonnegative(),
  /** The trainer's optimizer step when the candidate was evaluated. */
  step: z.number().int().nonnegative(),
  /**
   * The served version it was compared with: the best on the gate's prompts of those served so far in this
   * trainer run (0: the starting model, nothing published yet). `served_accuracy` is that version's.
   */
  served_version: z.number().int().nonnegative(),
  prompts: z.number().int().positive(),
  candidate_accuracy: z.number(),
  served_accuracy: z.number(),
  /** Mean paired difference candidate − served, and its one-sided lower confidence bound. */
  mean_difference: z.number(),
  lower_bound: z.number(),
  margin: z.number().nonnegative(),
  confidence: z.number().gt(0.5).lt(1),
  promoted: z.boolean(),
  /** The version the candidate was published as, when promoted. */
  version: z.number().int().positive().optional(),
});
/** One decision of the gate. */
export type GateDecision = z.infer<typeof GateDecisionSchema>;

/** The gate's settings. */
export interface GateSettings {
  /** How far below the served version's accuracy a candidate may be and still pass (e.g. 0.02). */
  margin: number;
  /** One-sided confidence of the bound (e.g. 0.95). */
  confidence: number;
}

/**
 * What candidates are compared with: the gate answers of the most accurate version served so far. Comparing
 * with the version served now instead would let a run of promotions, each within the margin of the one before
 * it, drift below the best by more than the margin; against the bar, every promoted version is within the
 * margin of the best served before it (on the gate's prompts, with the stated confidence).
 */
export class GateBar {
  #version: number;
  #scores: readonly number[];

  /** Starts from the served version's (or the starting model's, as version 0) answers. */
  constructor(version: number, scores: readonly number[]) {
    this.#version = version;
    this.#scores = scores;
  }

  get version(): number {
    return this.#version;
  }

  get scores(): readonly number[] {
    return this.#scores;
  }

  /** A candidate with these answers was published as `version`: it is the bar when at least as accurate. */
  promoted(version: number, scores: readonly number[]): void {
    if (sum(scores) >= sum(this.#scores)) {
      this.#version = version;
      this.#scores = scores;
    }
  }
}

function sum(xs: readonly number[]): number {
  return xs.reduce((a, x) => a + x, 0);
}

/** Decides on a candidate from per-prompt scores of the candidate and of the bar (`GateBar`). */
export function decideGate(
  candidate: readonly number[],
  served: readonly number[],
  settings: GateSettings,
): Pick<GateDecision, "candidate_accuracy" | "served_accuracy" | "mean_difference" | "lower_bound" | "promoted"> {
  const n = candidate.length;
  if (n === 0 || served.length !== n) {
    throw new Error(`Cannot decide on a candidate from ${n} scores against ${served.length} of the served version`);
  }
  const d = candidate.map((c, i) => c - served[i]!);
  const mean = (xs: readonly number[]) => xs.reduce((a, x) => a + x, 0) / xs.length;
  const dBar = mean(d);
  const variance = n > 1 ? d.reduce((a, x) => a + (x - dBar) ** 2, 0) / (n - 1) : 0;
  const lower = dBar - normalQuantile(settings.confidence) * Math.sqrt(variance / n);
  return {
    candidate_accuracy: mean(candidate),
    served_accuracy: mean(served),
    mean_difference: dBar,
    lower_bound: lower,
    promoted: lower >= -settings.margin,
  };
}

/**
 * The standard normal quantile Φ⁻¹(p), by Acklam's rational approximation (relative error below 1.2e-9),
 * enough for a confidence bound.
 */
export function normalQuantile(p: number): number {
  if (!(p > 0 && p < 1)) throw new RangeError(`Cannot take the normal quantile of ${p}: expected 0 < p < 1`);
  const a = [
    -39.69683028665376,
    220.9460984245205,
    -275.9285104469687,
    138.357751867269,
    -30.66479806614716,
    2.506628277459239,
  ];
  const b = [-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972, -13.28068155288572];
  const c = [
    -0.007784894002430293,
    -0.3223964580411365,
    -2.400758277161838,
    -2.549732539343734,
    4.374664141464968,
    2.938163982698783,
  ];
  const d = [0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416];
  const low = 0.02425;
  const tail = (q: number) =>
    (((((c[0]! * q + c[1]!) * q + c[2]!) * q + c[3]!) * q + c[4]!) * q + c[5]!) /
    ((((d[0]! * q + d[1]!) * q + d[2]!) * q + d[3]!) * q + 1);
  if (p < low) return tail(Math.sqrt(-2 * Math.log(p)));
  if (p > 1 - low) return -tail(Math.sqrt(-2 * Math.log(1 - p)));
  const q = p - 0.5;
  const r = q * q;
  return (((((a[0]! * r + a[1]!) * r + a[2]!) * r + a[3]!) * r + a[4]!) * r + a[5]!) * q /
    (((((b[0]! * r + b[1]!) * r + b[2]!) * r + b[3]!) * r + b[4]!) * r + 1);
}
