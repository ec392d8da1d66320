import assert from "node:assert/strict";
import { BatchedGet } from "./_batched_get.ts";

/** `kv` counting its reads (getMany and get calls). */
function counting(kv: Deno.Kv) {
  const counts = { getMany: 0, get: 0 };
  const proxy = new Proxy(kv, {
    get(target, prop) {
      if (prop === "getMany" || prop === "get") counts[prop]++;
      const value = Reflect.get(target, prop, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  return { kv: proxy, counts };
}

Deno.test("batched get: reads that arrive together share a getMany, each gets its own entry, as fresh as a get", async () => {
  const { kv, counts } = counting(await Deno.openKv(":memory:"));
  for (let i = 0; i < 25; i++) await kv.set(["k", i], i);
  const reads = new BatchedGet(kv);
  const entries = await Promise.all(Array.from({ length: 25 }, (_, i) => reads.get(["k", i])));
  assert.deepEqual(entries.map((e) => e.value), Array.from({ length: 25 }, (_, i) => i));
  assert.ok(counts.getMany + counts.get <= 4, `one read alone, then ten at a time (${JSON.stringify(counts)})`);
  await kv.set(["k", 3], "changed");
  assert.equal((await reads.get(["k", 3])).value, "changed");
  assert.equal((await reads.get(["missing"])).versionstamp, null);
  kv.close();
});
