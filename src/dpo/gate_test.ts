import assert from "node:assert/strict";
import { decideGate, GateBar, normalQuantile } from "./gate.ts";

Deno.test("normalQuantile: matches the standard normal's known quantiles", () => {
  const known: [number, number][] = [[0.5, 0], [0.9, 1.2815516], [0.95, 1.6448536], [0.975, 1.959964], [
    0.99,
    2.3263479,
  ]];
  for (const [p, z] of known) {
    assert.ok(Math.abs(normalQuantile(p) - z) < 1e-6, `${p}`);
    assert.ok(Math.abs(normalQuantile(1 - p) + z) < 1e-6, `${1 - p}`);
  }
  assert.ok(Math.abs(normalQuantile(0.001) + 3.0902323) < 1e-6);
  assert.throws(() => normalQuantile(1), RangeError);
});

Deno.test("decideGate: a non-inferiority bound on paired differences", () => {
  const settings = { margin: 0.02, confidence: 0.95 };
  // Equal answers: no difference, no variance: promoted.
  const same = Array.from({ length: 200 }, (_, i) => i % 2);
  assert.equal(decideGate(same, same, settings).promoted, true);
  // 10 prompts better, 30 worse out of 200: mean −0.1, clearly worse: refused.
  const served = Array(200).fill(0).map((_, i) => (i < 100 ? 1 : 0));
  const worse = served.map((s, i) => (i < 30 ? 0 : i >= 100 && i < 110 ? 1 : s));
  const refused = decideGate(worse, served, settings);
  assert.equal(refused.promoted, false);
  assert.ok(Math.abs(refused.mean_difference + 0.1) < 1e-12);
  assert.deepEqual([refused.candidate_accuracy, refused.served_accuracy], [0.4, 0.5]);
  // One prompt worse out of 200: mean −0.005, bound −0.005 − 1.645·s/√200 ≈ −0.013, within the margin.
  const one = served.map((s, i) => (i === 0 ? 0 : s));
  const r = decideGate(one, served, settings);
  const sd = Math.sqrt((1 - 0.005) ** 2 / 199 + 199 * 0.005 ** 2 / 199);
  assert.ok(Math.abs(r.lower_bound - (-0.005 - 1.6448536 * sd / Math.sqrt(200))) < 1e-6);
  assert.equal(r.promoted, true);
  // Better is always promoted.
  assert.equal(decideGate(served.map(() => 1), served, settings).promoted, true);
  assert.throws(() => decideGate([1], [1, 0], settings), /1 scores against 2/);
});

Deno.test("GateBar: a run of promotions within the margin of the one before cannot drift below the best", () => {
  const settings = { margin: 0.02, confidence: 0.95 };
  const n = 1000;
  // Version k answers the first 900 − 10k prompts right: each is 1 point below the one before it.
  const answers = (k: number) => Array.from({ length: n }, (_, i) => (i < 900 - 10 * k ? 1 : 0));
  const bar = new GateBar(0, answers(0));
  // Against the version before it, v2 (1 point below v1) passes: that is what compounds into a drift.
  assert.equal(decideGate(answers(2), answers(1), settings).promoted, true);
  const first = decideGate(answers(1), bar.scores, settings);
  assert.equal(first.promoted, true);
  bar.promoted(1, answers(1));
  // A less accurate version promoted does not lower the bar: v0 stays the one compared with.
  assert.equal(bar.version, 0);
  const second = decideGate(answers(2), bar.scores, settings);
  assert.equal(second.promoted, false, JSON.stringify(second));
  assert.ok(Math.abs(second.served_accuracy - 0.9) < 1e-12);
  // A better one raises it; an equal one, newer, takes its place.
  bar.promoted(3, answers(-1));
  assert.deepEqual([bar.version, bar.scores], [3, answers(-1)]);
  bar.promoted(4, answers(-1));
  assert.equal(bar.version, 4);
});
