import assert from "node:assert/strict";
import { serialize } from "node:v8";
import { serializedBound } from "./_size.ts";

Deno.test("serializedBound is never less than V8's serialization of plain data", () => {
  const emoji = "a😀b".repeat(50);
  const samples: unknown[] = [
    "",
    "ascii",
    emoji,
    emoji.slice(0, 1), // a one-byte string cut out of a two-byte one may stay two-byte
    "é".repeat(300),
    0,
    -1,
    2 ** 31,
    1.5,
    NaN,
    true,
    null,
    undefined,
    [],
    [1, "two", { three: 3 }],
    { a: 1, "1": "x", nested: { list: [emoji, null, false] } },
    Object.assign(Object.create(null), { k: "v" }),
    { responses: Array.from({ length: 100 }, (_, i) => `${i}`.repeat(i)) },
  ];
  for (const value of samples) {
    const bound = serializedBound(value);
    assert.ok(bound !== undefined, `plain data is bounded: ${JSON.stringify(value)?.slice(0, 40)}`);
    assert.ok(bound + 2 >= serialize(value).byteLength, `${JSON.stringify(value)?.slice(0, 40)}`);
  }
  for (const value of [new Date(), new Map(), new Uint8Array(3), 1n, new Deno.KvU64(1n), [, 1, , 2]]) {
    assert.equal(serializedBound(value), undefined, "left to the serializer");
  }
  const cycle: Record<string, unknown> = {};
  cycle.self = cycle;
  assert.equal(serializedBound(cycle), undefined);
});
