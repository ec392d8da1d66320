import assert from "node:assert/strict";
import { loadModel } from "../model/checkpoint.ts";
import { fixturePath, useBackend } from "../model/_test_utils.ts";
import { signWebhook } from "../judge/webhook.ts";
import { PairStore } from "../store/pairs.ts";
import { type AppDeps, createApp } from "./app.ts";
import { PolicyHolder } from "./policy.ts";

const KEY = "test-key-1";
const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async function setup(overrides: Partial<AppDeps> = {}) {
  await useBackend("wasm");
  const kv = await Deno.openKv(":memory:");
  const store = new PairStore(kv);
  const loaded = await loadModel(fixturePath("gpt2_tiny"), { trainable: false });
  const policy = new PolicyHolder({ model: loaded.model, tokenizer: loaded.tokenizer, version: 1 });
  const app = createApp({ store, policy, apiKeys: [KEY], webhookSecret: SECRET, ...overrides });
  const call = (method: string, path: string, body?: unknown, headers: Record<string, string> = {}) =>
    app.request(path, {
      method,
      headers: {
        authorization: `Bearer ${KEY}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
        ...headers,
      },
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
  const close = () => {
    policy.dispose();
    kv.close();
  };
  return { app, store, policy, loaded, call, close };
}

Deno.test("health needs no key; everything else refuses a missing or wrong key with one error shape", async () => {
  const { app, call, close } = await setup();
  assert.equal((await app.request("/healthz")).status, 200);
  const none = await app.request("/v1/pairs");
  assert.equal(none.status, 401);
  assert.deepEqual(Object.keys((await none.json()).error), ["code", "message"]);
  assert.equal((await call("GET", "/v1/stats", undefined, { authorization: "Bearer nope" })).status, 401);
  assert.equal((await app.request("/metrics")).status, 401);
  const missing = await call("GET", "/v1/nothing");
  assert.equal(missing.status, 404);
  assert.equal((await missing.json()).error.code, "not_found");
  close();
});

Deno.test("pairs: create (idempotent), read, list by status, one verdict, then 409", async () => {
  const { call, close } = await setup();
  const created = await call("POST", "/v1/pairs", { prompt: "What is 2+2?", n: 3, max_new_tokens: 8 }, {
    "idempotency-key": "k1",
  });
  assert.equal(created.status, 201);
  const pair = await created.json();
  assert.equal(pair.responses.length, 3);
  assert.equal(pair.status, "awaiting_judgment");
  assert.equal(pair.policy_version, 1);
  assert.notEqual(pair.candidates[0], pair.candidates[1]);
  const again = await call("POST", "/v1/pairs", { prompt: "What is 2+2?", n: 3, max_new_tokens: 8 }, {
    "idempotency-key": "k1",
  });
  assert.equal(again.status, 200);
  assert.equal((await again.json()).id, pair.id);

  assert.equal((await (await call("GET", `/v1/pairs/${pair.id}`)).json()).id, pair.id);
  const pending = await (await call("GET", "/v1/pairs?status=awaiting_judgment")).json();
  assert.deepEqual(pending.pairs.map((p: { id: string }) => p.id), [pair.id]);

  const verdict = await call("POST", `/v1/pairs/${pair.id}/feedback`, { choice: "b", annotator: "ann", reason: "x" });
  assert.equal(verdict.status, 200);
  const labeled = await verdict.json();
  assert.equal(labeled.status, "labeled");
  assert.equal(labeled.chosen, pair.b);
  assert.equal(labeled.rejected, pair.a);
  const second = await call("POST", `/v1/pairs/${pair.id}/feedback`, { choice: "a" });
  assert.equal(second.status, 409);
  assert.equal((await second.json()).error.code, "conflict");
  assert.equal((await (await call("GET", `/v1/pairs/${pair.id}`)).json()).chosen, pair.b, "no overwrite");
  close();
});

Deno.test("bad input gets a clear 4xx and stores nothing", async () => {
  const { call, store, close } = await setup({ limits: { bodyBytes: 2048 } });
  const cases: [string, string, unknown, Record<string, string>, number][] = [
    ["POST", "/v1/pairs", "{not json", {}, 400],
    ["POST", "/v1/pairs", { prompt: "hi" }, { "content-type": "text/plain" }, 415],
    ["POST", "/v1/pairs", { prompt: "hi", messages: [{ role: "user", content: "hi" }] }, {}, 422],
    ["POST", "/v1/pairs", { prompt: "hi", n: 1 }, {}, 422],
    ["POST", "/v1/pairs", { prompt: "x".repeat(4000) }, {}, 413],
    ["GET", "/v1/pairs/not-an-id", undefined, {}, 422],
    ["GET", "/v1/pairs/01ARZ3NDEKTSV4RRFFQ69G5FAV", undefined, {}, 404],
    ["GET", "/v1/pairs?limit=1000", undefined, {}, 422],
    ["POST", "/v1/pairs/01ARZ3NDEKTSV4RRFFQ69G5FAV/feedback", { choice: "a" }, {}, 404],
    ["POST", "/v1/pairs/01ARZ3NDEKTSV4RRFFQ69G5FAV/feedback", { choice: "c" }, {}, 422],
    ["POST", "/v1/preferences", [{ prompt: "p", chosen: "c" }], {}, 422],
    ["POST", "/v1/chat/completions", { messages: [] }, {}, 422],
    ["GET", "/v1/export?format=csv", undefined, {}, 422],
  ];
  for (const [method, path, body, headers, status] of cases) {
    const res = await call(method, path, body, headers);
    assert.equal(res.status, status, `${method} ${path} ${JSON.stringify(body)?.slice(0, 60)}`);
    const json = await res.json();
    assert.equal(typeof json.error.code, "string");
    assert.equal(typeof json.error.message, "string");
  }
  assert.deepEqual(Object.values(await store.counts()).reduce((a, b) => a + b, 0), 0);
  close();
});

Deno.test("preferences import (one or a batch) and export in TRL's format", async () => {
  const { call, close } = await setup();
  const one = await call("POST", "/v1/preferences", { prompt: "2+2=", chosen: "4", rejected: "5" });
  assert.equal(one.status, 201);
  const batch = await call("POST", "/v1/preferences", [
    { prompt: [{ role: "user", content: "hi" }], chosen: [{ role: "assistant", content: "hello" }], rejected: "go" },
    { prompt: "1+1=", chosen: "2", rejected: "3" },
  ], { "idempotency-key": "batch-1" });
  assert.equal(batch.status, 201);
  const repeat = await call("POST", "/v1/preferences", [
    { prompt: [{ role: "user", content: "hi" }], chosen: [{ role: "assistant", content: "hello" }], rejected: "go" },
    { prompt: "1+1=", chosen: "2", rejected: "3" },
  ], { "idempotency-key": "batch-1" });
  assert.equal(repeat.status, 200, "an idempotent repeat creates nothing");
  const exported = (await (await call("GET", "/v1/export?format=trl")).text()).trim().split("\n").map((l) =>
    JSON.parse(l)
  );
  assert.equal(exported.length, 3);
  assert.deepEqual(exported[0], { prompt: "2+2=", chosen: "4", rejected: "5" });
  assert.deepEqual(exported[1].prompt, [{ role: "user", content: "hi" }]);
  assert.deepEqual(exported[1].chosen, [{ role: "assistant", content: "hello" }]);
  const stats = await (await call("GET", "/v1/stats")).json();
  assert.equal(stats.pairs.labeled, 3);
  close();
});

Deno.test("chat completions: OpenAI wire format, plain and streamed; thumbs up/down; KTO export", async () => {
  const { call, close } = await setup();
  const messages = [{ role: "user", content: "What is 2+2?" }];
  const plain = await call("POST", "/v1/chat/completions", { messages, max_tokens: 6, seed: 1 });
  assert.equal(plain.status, 200);
  const body = await plain.json();
  assert.equal(body.object, "chat.completion");
  assert.match(body.id, /^chatcmpl-[0-9a-f]{32}$/);
  assert.equal(body.choices[0].message.role, "assistant");
  assert.ok(["stop", "length"].includes(body.choices[0].finish_reason));
  assert.equal(body.usage.total_tokens, body.usage.prompt_tokens + body.usage.completion_tokens);

  const streamed = await call("POST", "/v1/chat/completions", { messages, max_tokens: 6, seed: 1, stream: true });
  assert.match(streamed.headers.get("content-type") ?? "", /text\/event-stream/);
  const events = (await streamed.text()).split("\n\n").filter((e) => e.startsWith("data: ")).map((e) => e.slice(6));
  assert.equal(events.at(-1), "[DONE]");
  const chunks = events.slice(0, -1).map((e) => JSON.parse(e));
  assert.ok(chunks.every((c) => c.object === "chat.completion.chunk" && c.id === chunks[0].id));
  const text = chunks.map((c) => c.choices[0].delta.content ?? "").join("");
  assert.equal(text, body.choices[0].message.content, "same seed, same text, streamed or not");
  assert.ok(chunks.at(-1).choices[0].finish_reason);

  assert.equal((await call("POST", `/v1/completions/${body.id}/feedback`, { label: true })).status, 200);
  assert.equal((await call("POST", `/v1/completions/${body.id}/feedback`, { label: false })).status, 409);
  assert.equal((await call("POST", `/v1/completions/${chunks[0].id}/feedback`, { label: false })).status, 200);
  const kto = (await (await call("GET", "/v1/export?format=kto")).text()).trim().split("\n").map((l) => JSON.parse(l));
  assert.deepEqual(kto.map((k) => k.label).sort(), [false, true]);
  assert.deepEqual(kto[0].prompt, messages);
  close();
});

Deno.test("signed webhook verdicts need no API key; bad signatures are refused", async () => {
  const { app, call, close } = await setup();
  const pair = await (await call("POST", "/v1/pairs", { prompt: "Hi", max_new_tokens: 4 })).json();
  const body = JSON.stringify({ choice: "a", annotator: "labeler-7" });
  const ts = Math.floor(Date.now() / 1000);
  const sig = await signWebhook(SECRET, "msg_1", ts, body);
  const send = (signature: string) =>
    app.request(`/v1/pairs/${pair.id}/feedback`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "webhook-id": "msg_1",
        "webhook-timestamp": String(ts),
        "webhook-signature": signature,
      },
      body,
    });
  assert.equal((await send("v1,AAAA")).status, 401);
  const ok = await send(sig);
  assert.equal(ok.status, 200);
  assert.equal((await ok.json()).verdict.judge.kind, "webhook");
  close();
});

Deno.test("rate limits per key answer 429 with Retry-After; metrics are Prometheus text", async () => {
  const { call, close } = await setup({ limits: { requestsPerMinute: 3 } });
  for (let i = 0; i < 3; i++) assert.equal((await call("GET", "/v1/stats")).status, 200);
  const limited = await call("GET", "/v1/stats");
  assert.equal(limited.status, 429);
  assert.ok(Number(limited.headers.get("retry-after")) >= 1);
  // A key of the server's own (start's feeder) is not limited; the limited key stays limited.
  const feeder = { authorization: "Bearer feeder" };
  const own = await setup({ apiKeys: [KEY, "feeder"], unlimitedKeys: ["feeder"], limits: { requestsPerMinute: 3 } });
  for (let i = 0; i < 6; i++) assert.equal((await own.call("GET", "/v1/stats", undefined, feeder)).status, 200);
  for (let i = 0; i < 3; i++) assert.equal((await own.call("GET", "/v1/stats")).status, 200);
  assert.equal((await own.call("GET", "/v1/stats")).status, 429);
  own.close();
  const metrics = await (await call("GET", "/metrics")).text();
  assert.match(metrics, /^# TYPE dpo_pairs gauge$/m);
  assert.match(metrics, /^dpo_policy_version 1$/m);
  assert.match(metrics, /^dpo_http_requests_total\{route="\/v1\/stats",status="200"\} 3$/m);
  close();
});

Deno.test("a policy swap mid-request fails nothing; new requests get the new version", async () => {
  const { call, policy, close } = await setup();
  const next = await loadModel(fixturePath("gpt2_tiny"), { trainable: false });
  const slow = call("POST", "/v1/chat/completions", {
    messages: [{ role: "user", content: "Tell a story" }],
    max_tokens: 40,
    stream: true,
  });
  await new Promise((r) => setTimeout(r, 5));
  policy.swap({ model: next.model, tokenizer: next.tokenizer, version: 2 });
  const res = await slow;
  assert.equal(res.status, 200);
  assert.match(await res.text(), /\[DONE\]/);
  const after = await (await call("POST", "/v1/pairs", { prompt: "Hi", max_new_tokens: 4 })).json();
  assert.equal(after.policy_version, 2);
  close();
});

Deno.test("concurrent generating requests share decoding steps; /metrics shows the batch", async () => {
  const { call, close } = await setup();
  const messages = [{ role: "user", content: "Tell a story" }];
  const responses = await Promise.all([
    call("POST", "/v1/pairs", { prompt: "Hi", n: 3, max_new_tokens: 8 }),
    call("POST", "/v1/chat/completions", { messages, max_tokens: 8, stream: true }),
    call("POST", "/v1/chat/completions", { messages, max_tokens: 8, seed: 3 }),
  ]);
  assert.deepEqual(responses.map((r) => r.status), [201, 200, 200]);
  await Promise.all(responses.map((r) => r.text()));
  const metrics = await (await call("GET", "/metrics")).text();
  const value = (name: string) => Number(new RegExp(`^${name} (\\d+)$`, "m").exec(metrics)?.[1]);
  assert.ok(value("dpo_decode_steps_total") > 0, metrics);
  assert.ok(value("dpo_decode_row_steps_total") > 2 * value("dpo_decode_steps_total"), "more than 2 rows per step");
  assert.equal(value("dpo_decode_running_rows"), 0);
  close();
});
