/**
 * Statistics of the learning benchmark over seeds: the mean and a two-sided 95% Student t interval, and the
 * same for paired differences between two arms run on the same seeds.
 */

/** A mean over seeds with its 95% interval: mean ± half. */
export interface Interval {
  n: number;
  mean: number;
  /** Half-width of the 95% interval (t over n − 1 degrees of freedom); NaN with fewer than two values. */
  half: number;
  min: number;
  max: number;
}

// t(0.975, df) for df 1..30 (standard tables); beyond 30 the Cornish–Fisher expansion below is within 1e-4.
const T975 = [
  12.706,
  4.303,
  3.182,
  2.776,
  2.571,
  2.447,
  2.365,
  2.306,
  2.262,
  2.228,
  2.201,
  2.179,
  2.16,
  2.145,
  2.131,
  2.12,
  2.11,
  2.101,
  2.093,
  2.086,
  2.08,
  2.074,
  2.069,
  2.064,
  2.06,
  2.056,
  2.052,
  2.048,
  2.045,
  2.042,
];

/** The 0.975 quantile of Student's t with `df` degrees of freedom (the factor of a two-sided 95% interval). */
export function t975(df: number): number {
  if (!(Number.isInteger(df) && df >= 1)) {
    throw new RangeError(`Cannot take a t quantile with ${df} degrees of freedom`);
  }
  if (df <= T975.length) return T975[df - 1]!;
  const z = 1.959964;
  return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2);
}

/** Mean and 95% t interval of `xs` (one value per seed). */
export function interval(xs: readonly number[]): Interval {
  const n = xs.length;
  if (n === 0) return { n, mean: NaN, half: NaN, min: NaN, max: NaN };
  const mean = xs.reduce((a, x) => a + x, 0) / n;
  const sd = n > 1 ? Math.sqrt(xs.reduce((a, x) => a + (x - mean) ** 2, 0) / (n - 1)) : NaN;
  return { n, mean, half: n > 1 ? t975(n - 1) * sd / Math.sqrt(n) : NaN, min: Math.min(...xs), max: Math.max(...xs) };
}

/** `a − b` seed by seed (the seeds both have), as an interval: the paired comparison of two arms. */
export function pairedDifference(a: ReadonlyMap<number, number>, b: ReadonlyMap<number, number>): Interval {
  return interval([...a].filter(([seed]) => b.has(seed)).map(([seed, v]) => v - b.get(seed)!));
}

/** An accuracy interval in points, as "93.1 ± 1.2" (without the ± part for one seed). */
export function formatPoints(i: Interval, signed = false): string {
  const m = 100 * i.mean;
  const text = `${signed && m > 0 ? "+" : ""}${m.toFixed(1)}`;
  return Number.isNaN(i.half) ? text : `${text} ± ${(100 * i.half).toFixed(1)}`;
}

/**
 * The largest drop of a value below the best before it, in the values' units (0 when none falls below an
 * earlier best): over a run's successive versions, how far a version fell below the best one before it.
 */
export function largestDrop(values: readonly number[]): number {
  let best = -Infinity, drop = 0;
  for (const v of values) {
    drop = Math.max(drop, best - v);
    best = Math.max(best, v);
  }
  return drop;
}

/** The standard deviation (n − 1) of the differences between successive values; NaN with fewer than 3 values. */
export function successiveSd(values: readonly number[]): number {
  const d = values.slice(1).map((v, i) => v - values[i]!);
  if (d.length < 2) return NaN;
  const m = d.reduce((a, x) => a + x, 0) / d.length;
  return Math.sqrt(d.reduce((a, x) => a + (x - m) ** 2, 0) / (d.length - 1));
}

/** The first `x` whose value reaches `target`, or null when none does. */
export function firstReaching(points: readonly { x: number; y: number }[], target: number): number | null {
  return points.find((p) => p.y >= target - 1e-12)?.x ?? null;
}
