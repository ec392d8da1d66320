import assert from "node:assert/strict";
import { createIdGenerator, ID_PATTERN, idTime } from "./_ulid.ts";

Deno.test("ids carry their time, match the pattern and sort in creation order even within a millisecond", () => {
  const next = createIdGenerator();
  const t = Date.UTC(2025, 5, 1, 12);
  const ids = [next(t), next(t), next(t), next(t - 5), next(t + 1), next(2 ** 48 - 1)];
  for (const id of ids) assert.match(id, ID_PATTERN);
  assert.deepEqual(ids.toSorted(), ids);
  assert.equal(new Set(ids).size, ids.length);
  assert.equal(idTime(ids[0]!), t);
  assert.equal(idTime(ids[3]!), t, "a clock stepping back does not break the order");
  assert.equal(idTime(ids[5]!), 2 ** 48 - 1);
  assert.equal(createIdGenerator()(0).slice(0, 10), "0000000000");
  assert.throws(() => next(2 ** 48), /must be an integer in \[0, 2\^48\)/);
});
