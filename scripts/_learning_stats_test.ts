import assert from "node:assert/strict";
import {
  firstReaching,
  formatPoints,
  interval,
  largestDrop,
  pairedDifference,
  successiveSd,
  t975,
} from "./_learning_stats.ts";

// Reference quantiles from SciPy (`scipy.stats.t.ppf(0.975, df)`), not from this code.
Deno.test("t975 matches SciPy's Student t quantiles, in the table and beyond it", () => {
  for (const [df, want] of [[4, 2.7764], [30, 2.0423], [31, 2.0395], [60, 2.0003], [200, 1.9719]] as const) {
    assert.ok(Math.abs(t975(df) - want) < 1e-3, `df ${df}: ${t975(df)} against ${want}`);
  }
  assert.throws(() => t975(0), RangeError);
});

Deno.test("interval: mean ± t·s/√n over seeds, no half-width for one seed", () => {
  const i = interval([0.9, 0.92, 0.94, 0.96, 0.98]);
  assert.ok(Math.abs(i.mean - 0.94) < 1e-12);
  // s = 0.0316228, s/√5 = 0.0141421, × 2.776 = 0.03926
  assert.ok(Math.abs(i.half - 0.03926) < 1e-4);
  assert.equal(formatPoints(i), "94.0 ± 3.9");
  assert.ok(Number.isNaN(interval([0.5]).half));
  assert.equal(formatPoints(interval([0.5])), "50.0");
});

Deno.test("pairedDifference takes the seeds both arms have, seed by seed", () => {
  const a = new Map([[1, 0.9], [2, 0.8], [3, 0.7]]);
  const b = new Map([[1, 0.85], [2, 0.75], [4, 0.1]]);
  const d = pairedDifference(a, b);
  assert.equal(d.n, 2);
  assert.ok(Math.abs(d.mean - 0.05) < 1e-12);
  assert.equal(formatPoints(d, true), "+5.0 ± 0.0");
});

Deno.test("largestDrop: how far a value fell below the best before it", () => {
  assert.equal(largestDrop([]), 0);
  assert.equal(largestDrop([0.5, 0.6, 0.7]), 0);
  // the run: 93 then 87.5, 85.5, ... 69: the drop is 93 − 69 = 24 points
  assert.ok(Math.abs(largestDrop([0.425, 0.735, 0.93, 0.875, 0.855, 0.69, 0.935, 0.76]) - 0.24) < 1e-12);
  assert.ok(Math.abs(largestDrop([0.9, 0.8, 0.95, 0.9]) - 0.1) < 1e-12);
});

Deno.test("successiveSd: the spread of version-to-version changes", () => {
  assert.ok(Number.isNaN(successiveSd([0.5, 0.6])));
  assert.ok(successiveSd([0.1, 0.2, 0.3, 0.4]) < 1e-12); // a steady climb does not swing
  // differences +0.2, −0.2: sd √(0.08) = 0.2828
  assert.ok(Math.abs(successiveSd([0.5, 0.7, 0.5]) - Math.sqrt(0.08)) < 1e-12);
});

Deno.test("firstReaching: the first point at or above the target", () => {
  const pts = [{ x: 64, y: 0.8 }, { x: 128, y: 0.95 }, { x: 192, y: 0.9 }];
  assert.equal(firstReaching(pts, 0.95), 128);
  assert.equal(firstReaching(pts, 0.99), null);
});
