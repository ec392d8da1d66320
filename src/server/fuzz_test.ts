/** Property-based fuzzing of every route's input: never a 5xx, nothing stored from a refused request. */
import assert from "node:assert/strict";
import fc from "fast-check";
import { loadModel } from "../model/checkpoint.ts";
import { fixturePath, useBackend } from "../model/_test_utils.ts";
import { PairStore } from "../store/pairs.ts";
import { createApp } from "./app.ts";
import { PolicyHolder } from "./policy.ts";

const KEY = "fuzz-key";
const ROUTES: [string, string][] = [
  ["POST", "/v1/pairs"],
  ["POST", "/v1/pairs/01ARZ3NDEKTSV4RRFFQ69G5FAV/feedback"],
  ["POST", "/v1/preferences"],
  ["POST", "/v1/chat/completions"],
  ["POST", "/v1/completions/chatcmpl-0123456789abcdef0123456789abcdef/feedback"],
  ["GET", "/v1/pairs"],
  ["GET", "/v1/export"],
];

/** Bodies near the real shapes (so validation gets exercised deeply), and arbitrary JSON. */
const body = fc.oneof(
  fc.jsonValue(),
  fc.record({
    prompt: fc.oneof(fc.string(), fc.integer(), fc.constant(null)),
    n: fc.oneof(fc.integer({ min: -2, max: 12 }), fc.string()),
    max_new_tokens: fc.integer({ min: -1, max: 5 }),
    temperature: fc.double(),
  }, { requiredKeys: [] }),
  fc.record({
    messages: fc.array(fc.record({ role: fc.string(), content: fc.oneof(fc.string(), fc.integer()) })),
    max_tokens: fc.integer({ min: -1, max: 4 }),
    stream: fc.boolean(),
  }, { requiredKeys: [] }),
  fc.record({ choice: fc.oneof(fc.constantFrom("a", "b", "tie"), fc.string()), label: fc.anything() }, {
    requiredKeys: [],
  }),
);

Deno.test("fuzzed requests never get a 5xx, store nothing when refused, and need a key", async () => {
  await useBackend("wasm");
  const kv = await Deno.openKv(":memory:");
  const store = new PairStore(kv);
  const loaded = await loadModel(fixturePath("gpt2_tiny"), { trainable: false });
  const policy = new PolicyHolder({ model: loaded.model, tokenizer: loaded.tokenizer, version: 1 });
  const app = createApp({ store, policy, apiKeys: [KEY], limits: { requestsPerMinute: 1e9, maxNewTokens: 4 } });
  const total = async () => Object.values(await store.counts()).reduce((a, b) => a + b, 0);
  try {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...ROUTES),
        body,
        fc.boolean(),
        fc.constantFrom("?status=labeled", "?limit=-1", "?cursor=%00", "?format=kto", ""),
        async ([method, path], value, authed, query) => {
          const before = await total();
          const res = await app.request(path + query, {
            method,
            headers: { "content-type": "application/json", ...(authed ? { authorization: `Bearer ${KEY}` } : {}) },
            body: method === "POST" ? JSON.stringify(value) : undefined,
          });
          await res.arrayBuffer();
          assert.ok(res.status < 500, `${method} ${path}${query} ${JSON.stringify(value)} -> ${res.status}`);
          if (!authed) assert.equal(res.status, 401);
          if (res.status >= 400) assert.equal(await total(), before, "a refused request stored something");
        },
      ),
      { numRuns: 300, seed: 20261123 },
    );
  } finally {
    policy.dispose();
    kv.close();
  }
});
