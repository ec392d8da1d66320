import assert from "node:assert/strict";
import { pickCandidates } from "./candidates.ts";

Deno.test("pickCandidates: never two of the same text; best against the worst different text; null when all match", () => {
  // Scored: the best, against the worst text that differs from it (" 56" and "56 " are one text).
  assert.deepEqual(pickCandidates([" 56", "56 ", "57", "12"], [1, 1, 0, 0]), [0, 2]);
  assert.deepEqual(pickCandidates(["a", "b", "c"], [0.5, 0.2, 0.9]), [2, 1]);
  // The worst by score is the best's own text: the next worst different text instead.
  assert.deepEqual(pickCandidates(["x", "x", "y"], [1, 0, 0.5]), [0, 2]);
  // Unscored, or all scores equal: two different texts, whatever the random draws.
  for (const draw of [0, 0.3, 0.6, 0.99]) {
    for (const scores of [undefined, [1, 1, 1, 1]]) {
      const [a, b] = pickCandidates(["same", " same", "other", "same\n"], scores, () => draw)!;
      assert.notEqual(a === 2, b === 2, `one of them is the different text (draw ${draw})`);
    }
  }
  assert.equal(pickCandidates([" 56", "56", "56\n"]), null);
  assert.equal(pickCandidates([" 56", "56"], [1, 0]), null);
});
