/**
 * Property-based fuzzing of every route's input: never a 5xx, nothing stored from a refused request, a
 * list stored whole or not at all, and every pair stored one the trainer can use. The routes come from
 * the app itself, so a new route is fuzzed without a change here.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { promptFitProblem } from "../dpo/fit.ts";
import { loadModel, saveModel } from "../model/io/checkpoint.ts";
import { fixturePath, useBackend } from "../model/_test_utils.ts";
import { PairStore } from "../store/pairs.ts";
import { KvCheckpointStore } from "../store/checkpoints.ts";
import { createTrainer } from "../dpo/checkpoint.ts";
import { parseDpoConfig } from "../dpo/config.ts";
import { encodeStoredPair, runOnlineTrainer } from "../dpo/online.ts";
import { createApp } from "./app.ts";
import { PolicyHolder } from "./policy.ts";

const KEY = "fuzz-test-key-0001";
/** A valid-looking id for a route's `:param`, by the path segment before it; a pair id otherwise. */
const IDS: Record<string, string> = {
  pairs: "01ARZ3NDEKTSV4RRFFQ69G5FAV",
  completions: "chatcmpl-0123456789abcdef0123456789abcdef",
};

/** Every method and path the app serves (its middleware aside), with each `:param` filled in. */
function routesOf(app: { routes: { method: string; path: string }[] }): [string, string][] {
  const seen = new Set<string>();
  for (const { method, path } of app.routes) {
    if (method === "ALL") continue; // middleware
    const parts = path.split("/");
    const filled = parts.map((part, i) => part.startsWith(":") ? IDS[parts[i - 1]!] ?? IDS.pairs : part).join("/");
    seen.add(`${method} ${filled}`);
  }
  return [...seen].map((r) => r.split(" ") as [string, string]);
}

/** Mostly `valid`, sometimes `invalid`: requests get past the schema often enough to reach the rules behind it. */
function mostly<T, U>(valid: fc.Arbitrary<T>, invalid: fc.Arbitrary<U>): fc.Arbitrary<T | U> {
  return fc.oneof({ arbitrary: valid, weight: 9 }, { arbitrary: invalid, weight: 1 });
}

/** Strings with what breaks naive code: lone surrogates, blanks, NUL, and any code point. */
const text = fc.string({
  unit: fc.oneof(
    fc.constantFrom("\ud800", "\udbff", "\udc00", " ", "\n", "\t", "\u0000", "word "),
    fc.string({ unit: "binary", minLength: 1, maxLength: 1 }),
  ),
  maxLength: 12,
});
const junk = fc.oneof(fc.integer(), fc.string(), fc.constant(null), fc.double());
/** Prompts around gpt2_tiny's 64-token context ("x" × n is n tokens; 62 is the most that fits). */
const longPrompt = fc.integer({ min: 55, max: 80 }).map((n) => "x".repeat(n));
const prompt = fc.oneof(text, longPrompt);
const messages = mostly(
  fc.array(fc.record({ role: fc.constantFrom("system", "user", "assistant", "tool"), content: prompt }), {
    minLength: 1,
    maxLength: 3,
  }),
  fc.array(fc.record({ role: fc.string(), content: prompt }), { maxLength: 2 }),
);
/** Answers that are often equal up to blanks, so the chosen ≠ rejected rule gets exercised. */
const answer = fc.oneof(
  fc.constantFrom("4", " 4", "4\n", "\t4 ", "5", "", " ", "\ud800", "\ud800 "),
  text,
  fc.array(fc.record({ role: fc.constant("assistant"), content: fc.constantFrom("4", "4 ", "5") }), { maxLength: 2 }),
);
const preference = fc.record({ prompt: fc.oneof(prompt, messages), chosen: answer, rejected: answer });
const goodPreference = fc.record({
  prompt: fc.oneof(text, fc.array(fc.record({ role: fc.constant("user"), content: text }), { minLength: 1 })),
  chosen: fc.constantFrom("4", "four"),
  rejected: fc.constantFrom("5", "five"),
});

const SAMPLING = {
  n: mostly(fc.integer({ min: 2, max: 3 }), junk),
  max_new_tokens: mostly(fc.integer({ min: 1, max: 4 }), junk),
  temperature: mostly(fc.double({ min: 0, max: 2, noNaN: true }), junk),
};

/** Bodies near the real shapes of the routes that take input, so their rules get exercised. */
const SHAPED: Record<string, fc.Arbitrary<unknown>> = {
  "/v1/pairs": fc.oneof(
    { arbitrary: fc.record({ prompt: mostly(prompt, junk), ...SAMPLING }), weight: 4 },
    { arbitrary: fc.record({ messages, ...SAMPLING }), weight: 4 },
    { arbitrary: fc.record({ prompt, messages, ...SAMPLING }, { requiredKeys: [] }), weight: 1 },
  ),
  "/v1/chat/completions": fc.record({
    messages: mostly(messages, junk),
    max_tokens: mostly(fc.integer({ min: 1, max: 4 }), junk),
    stop: mostly(fc.oneof(text, fc.array(text, { maxLength: 5 })), junk),
    seed: mostly(fc.nat(), junk),
    stream: mostly(fc.boolean(), junk),
  }, { requiredKeys: ["messages"] }),
  "/v1/preferences": fc.oneof(
    mostly(goodPreference, preference),
    fc.array(mostly(goodPreference, preference), { maxLength: 5 }),
  ),
};

/** Arbitrary JSON, and bodies near every route's shape (a new route gets these too). */
const anyBody = fc.oneof(
  fc.jsonValue(),
  fc.record({ choice: fc.oneof(fc.constantFrom("a", "b", "tie"), fc.string()), label: fc.anything() }, {
    requiredKeys: [],
  }),
  ...Object.values(SHAPED),
);

Deno.test("fuzzed requests never get a 5xx, store nothing when refused, and store only trainable pairs", async () => {
  await useBackend("wasm");
  const kv = await Deno.openKv(":memory:");
  const store = new PairStore(kv);
  const loaded = await loadModel(fixturePath("gpt2_tiny"), { trainable: false });
  const policy = new PolicyHolder({ model: loaded.model, tokenizer: loaded.tokenizer, version: 1 });
  const app = createApp({ store, policy, apiKeys: [KEY], limits: { requestsPerMinute: 1e9, maxNewTokens: 4 } });
  const routes = routesOf(app);
  // The list is the app's: the routes this test was written against are all in it.
  for (const path of ["/v1/pairs", "/v1/preferences", "/v1/chat/completions", `/v1/pairs/${IDS.pairs}/feedback`]) {
    assert.ok(routes.some(([, p]) => p === path), `${path} in ${routes}`);
  }
  const total = async () => Object.values(await store.counts()).reduce((a, b) => a + b, 0);
  try {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...routes).chain((route) =>
          fc.tuple(fc.constant(route), SHAPED[route[1]] ? mostly(SHAPED[route[1]]!, anyBody) : anyBody)
        ),
        mostly(fc.constant(true), fc.constant(false)),
        fc.constantFrom("?status=labeled", "?limit=-1", "?cursor=%00", "?format=kto", "?points=0", ""),
        async ([[method, path], value], authed, query) => {
          const before = await total();
          const res = await app.request(path + query, {
            method,
            headers: { "content-type": "application/json", ...(authed ? { authorization: `Bearer ${KEY}` } : {}) },
            body: method === "POST" ? JSON.stringify(value) : undefined,
          });
          await res.arrayBuffer();
          const what = `${method} ${path}${query} ${JSON.stringify(value)?.slice(0, 300)} -> ${res.status}`;
          assert.ok(res.status < 500, what);
          if (!authed && (path.startsWith("/v1/") || path === "/metrics")) assert.equal(res.status, 401, what);
          const added = (await total()) - before;
          if (res.status >= 400) assert.equal(added, 0, `a refused request stored something: ${what}`);
          if (path === "/v1/preferences" && res.status === 201) {
            assert.equal(added, Array.isArray(value) ? value.length : 1, `a list stored in part: ${what}`);
          }
        },
      ),
      { numRuns: 500, seed: 20261123 },
    );
    // Everything stored is something the trainer can use.
    let stored = 0;
    for await (const pair of store.iterate()) {
      stored++;
      assert.equal(promptFitProblem(loaded.tokenizer, pair.promptText, loaded.model.contextLength), null, pair.id);
      if (pair.chosen !== undefined && pair.rejected !== undefined) {
        assert.notEqual(pair.responses[pair.chosen]!.trim(), pair.responses[pair.rejected]!.trim(), pair.id);
      }
    }
    assert.ok(stored > 0, "the fuzz stored nothing at all: it no longer reaches the store");

    // And the online trainer, run on what the fuzz left, trains all of it and finishes.
    const labeled = (await store.counts()).labeled;
    assert.ok(labeled > 0, "the fuzz labeled nothing: the trainer below would test nothing");
    await trainEverything(kv, store, labeled);
  } finally {
    policy.dispose();
    kv.close();
  }
});

/** Runs the online trainer on the store until no pair is left labeled; fails after 60 s. */
async function trainEverything(kv: Deno.Kv, store: PairStore, labeled: number): Promise<void> {
  const policy = await loadModel(fixturePath("gpt2_tiny"));
  const reference = await loadModel(fixturePath("gpt2_tiny"), { trainable: false });
  const trainer = createTrainer(policy, reference, parseDpoConfig({ per_device_train_batch_size: 1 }));
  const tmpDir = await Deno.makeTempDir({ prefix: "fuzz_train_" });
  const stop = new AbortController();
  const timeout = setTimeout(() => stop.abort(), 60_000);
  const context = policy.model.contextLength;
  try {
    const fence = await store.records.takeFence({ owner: "fuzz", instance: "fuzz#1" });
    await runOnlineTrainer({
      store,
      publisher: new KvCheckpointStore(kv),
      trainer,
      encode: (pair) => encodeStoredPair(policy.tokenizer, pair, context),
      problem: (pair) => promptFitProblem(policy.tokenizer, pair.promptText, context),
      savePolicy: (dir) => saveModel({ ...policy, model: trainer.policy }, dir),
      tmpDir,
      owner: "fuzz#1",
      fence,
      startVersion: null,
      holdsFence: () => store.records.holdsFence(fence),
      mode: "stream",
      batchPairs: 1,
      roundPairs: 1,
      roundEpochs: 1,
      publishEverySteps: 1,
      refRefreshRounds: 0,
      maxStaleness: 100,
      leaseMs: 60_000,
      pollMs: 10,
      signal: stop.signal,
      onPublish: async () => {
        if ((await store.counts()).labeled === 0) stop.abort();
      },
    });
  } finally {
    clearTimeout(timeout);
    policy.model.dispose();
    reference.model.dispose();
    trainer.optimizer.dispose();
    await Deno.remove(tmpDir, { recursive: true });
  }
  const counts = await store.counts();
  assert.equal(counts.labeled, 0, "the trainer did not finish within 60 s");
  assert.equal(counts.trained, labeled, "every labeled pair fits, so every one is trained (none rejected or stale)");
}
