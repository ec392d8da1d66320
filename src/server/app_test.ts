import { Webhook } from "standardwebhooks";
import { createWebhookJudge, verdictToken } from "../judge/webhook.ts";
import assert from "node:assert/strict";
import { loadModel } from "../model/io/checkpoint.ts";
import { fixturePath, useBackend } from "../model/_test_utils.ts";
import { PairStore } from "../store/pairs.ts";
import { legacyEqualCandidates } from "../store/_test_helpers.ts";
import { type AppDeps, createApp } from "./app.ts";
import { PolicyHolder } from "./policy.ts";
import { backlogOf } from "../roles/feeder.ts";

const KEY = "app-test-key-0001";
const FEEDER = "feeder-test-key-0001";
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
  return { app, kv, store, policy, loaded, call, close };
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
    ["POST", "/v1/chat/completions", { messages: [] }, {}, 400], // OpenAI's status (and shape) for the chat API
    ["GET", "/v1/export?format=csv", undefined, {}, 422],
  ];
  for (const [method, path, body, headers, status] of cases) {
    const res = await call(method, path, body, headers);
    assert.equal(res.status, status, `${method} ${path} ${JSON.stringify(body)?.slice(0, 60)}`);
    const json = await res.json();
    // The API's shape {code, message}; OpenAI's {message, type, param, code} on the chat routes.
    assert.equal(typeof (path.startsWith("/v1/chat/") ? json.error.type : json.error.code), "string");
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

Deno.test("signed verdicts (standardwebhooks library): bound to their pair, each webhook-id once, no API key", async () => {
  const { app, call, close } = await setup();
  const made = async () => (await (await call("POST", "/v1/pairs", { prompt: "Hi", max_new_tokens: 4 })).json()).id;
  const [pairId, otherId] = [await made(), await made()];
  const labelers = new Webhook(SECRET); // the official library, as a labelers' system would use it
  const send = (path: string, payload: Record<string, unknown>, msgId: string, sign = true) => {
    const body = JSON.stringify(payload);
    const signature = sign ? labelers.sign(msgId, new Date(), body) : "v1,AAAA";
    return app.request(path, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "webhook-id": msgId,
        "webhook-timestamp": String(Math.floor(Date.now() / 1000)),
        "webhook-signature": signature,
      },
      body,
    });
  };
  const url = (id: string) => `/v1/pairs/${id}/feedback`;
  const verdict = { choice: "a", annotator: "labeler-7", pair_id: pairId, token: await verdictToken(SECRET, pairId) };
  assert.equal((await send(url(pairId), verdict, "msg_bad", false)).status, 401, "a bad signature");
  // A signed body that does not name the pair, or names it without its token: refused.
  assert.equal((await send(url(pairId), { choice: "a" }, "msg_0")).status, 401);
  assert.equal((await send(url(pairId), { ...verdict, token: "x".repeat(32) }, "msg_1")).status, 401);
  const ok = await send(url(pairId), verdict, "msg_2");
  assert.equal(ok.status, 200);
  assert.equal((await ok.json()).verdict.judge.kind, "webhook");
  // The captured verdict replayed onto another pending pair (same bytes, same headers): refused.
  const replayed = await send(url(otherId), verdict, "msg_3");
  assert.equal(replayed.status, 401);
  assert.match((await replayed.json()).error.message, /must carry 'pair_id'/);
  // The same webhook-id a second time, even with a body bound to the other pair: refused as a replay.
  const bound = { ...verdict, pair_id: otherId, token: await verdictToken(SECRET, otherId) };
  assert.equal((await send(url(otherId), bound, "msg_2")).status, 409);
  assert.equal((await send(url(otherId), bound, "msg_4")).status, 200);
  // Signed requests reach the pair feedback route only: elsewhere they need an API key.
  assert.equal((await send("/v1/stats", {}, "msg_5")).status, 401);
  close();
});

Deno.test("the webhook judge's delivery verifies with the standardwebhooks library and carries the pair's token", async () => {
  const delivered: { headers: Headers; body: string }[] = [];
  const judge = createWebhookJudge({
    url: "https://labelers.example/hook",
    secret: SECRET,
    feedbackUrl: "https://dpo.example/v1/pairs/{id}/feedback",
    fetch: (_input, init) => {
      delivered.push({ headers: new Headers(init!.headers), body: String(init!.body) });
      return Promise.resolve(new Response(null, { status: 204 }));
    },
  });
  assert.equal(await judge.judge({ prompt: "p", a: "x", b: "y", pairId: "01ARZ3NDEKTSV4RRFFQ69G5FAV" }), "pending");
  const { headers, body } = delivered[0]!;
  const message = new Webhook(SECRET).verify(body, Object.fromEntries(headers)) as {
    data: { id: string; token: string };
  };
  assert.equal(message.data.id, "01ARZ3NDEKTSV4RRFFQ69G5FAV");
  assert.equal(message.data.token, await verdictToken(SECRET, message.data.id));
});

Deno.test("rate limits per key answer 429 with Retry-After; metrics are Prometheus text", async () => {
  // A fixed clock: the windows are aligned to the minute, and a test must not straddle two.
  const now = () => Date.UTC(2026, 0, 1, 0, 0, 30);
  const { call, close } = await setup({ limits: { requestsPerMinute: 3 }, now });
  for (let i = 0; i < 3; i++) assert.equal((await call("GET", "/v1/stats")).status, 200);
  const limited = await call("GET", "/v1/stats");
  assert.equal(limited.status, 429);
  assert.ok(Number(limited.headers.get("retry-after")) >= 1);
  // A key of the server's own (start's feeder) is not limited; the limited key stays limited.
  const feeder = { authorization: `Bearer ${FEEDER}` };
  const own = await setup({ apiKeys: [KEY, FEEDER], unlimitedKeys: [FEEDER], limits: { requestsPerMinute: 3 }, now });
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

Deno.test("the rate limit is one limit for every instance on the KV, and a new minute starts a new window", async () => {
  let t = Date.UTC(2026, 0, 1, 0, 0, 10);
  // Two instances: two stores on one KV, as two processes would have.
  const kv = await Deno.openKv(":memory:");
  const [one, two] = [new PairStore(kv), new PairStore(kv)];
  const first = createApp({ store: one, apiKeys: [KEY], limits: { requestsPerMinute: 3 }, now: () => t });
  const other = createApp({ store: two, apiKeys: [KEY], limits: { requestsPerMinute: 3 }, now: () => t });
  const call = (_m: string, path: string) => first.request(path, { headers: { authorization: `Bearer ${KEY}` } });
  const viaOther = (path: string) => other.request(path, { headers: { authorization: `Bearer ${KEY}` } });
  assert.equal((await call("GET", "/v1/stats")).status, 200);
  assert.equal((await viaOther("/v1/stats")).status, 200);
  assert.equal((await call("GET", "/v1/stats")).status, 200);
  const limited = await viaOther("/v1/stats");
  assert.equal(limited.status, 429, "the third request was on the first instance, the fourth is over the limit");
  assert.equal(limited.headers.get("retry-after"), "50");
  assert.equal((await call("GET", "/v1/stats")).status, 429);
  t += 50_000; // the next minute
  assert.equal((await viaOther("/v1/stats")).status, 200);
  kv.close();
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
  // An unlimited key: the rate limit's KV commit would stagger the three requests' arrival at the decoder.
  const { call, close } = await setup({ unlimitedKeys: [KEY] });
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

Deno.test("a prompt the model could not train on is a 422 on every ingest route, before anything is generated or stored", async () => {
  const { call, store, loaded, close } = await setup();
  // gpt2_tiny: 64 positions, and "x" × n is n tokens; a prompt leaves room for a response token and eos.
  const context = loaded.model.contextLength;
  const fits = "x".repeat(context - 2);
  const long = "x".repeat(context - 1);
  const asMessages = [{ role: "user", content: long }];
  const refused = async (path: string, body: unknown, field: RegExp) => {
    const res = await call("POST", path, body);
    assert.equal(res.status, 422, `${path} ${JSON.stringify(body).slice(0, 80)}`);
    assert.match(res.headers.get("content-type") ?? "", /application\/json/);
    const { error } = await res.json();
    assert.equal(error.code, "invalid_request");
    assert.match(error.message, field);
  };
  await refused(
    "/v1/preferences",
    { prompt: long, chosen: "a", rejected: "b" },
    /^body\.prompt: the prompt has 63 tokens/,
  );
  await refused("/v1/preferences", [
    { prompt: "1+1=", chosen: "2", rejected: "3" },
    { prompt: "2+2=", chosen: "4", rejected: "5" },
    { prompt: asMessages, chosen: "a", rejected: "b" },
  ], /^body\[2\]\.prompt: the prompt has \d+ tokens/);
  await refused("/v1/pairs", { prompt: long, max_new_tokens: 2 }, /^body\.prompt: the prompt has 63 tokens/);
  await refused("/v1/pairs", { messages: asMessages, max_new_tokens: 2 }, /^body\.messages: the prompt has/);
  // The chat API answers in OpenAI's shape and status: 400, naming the parameter.
  for (const stream of [false, true]) {
    const res = await call("POST", "/v1/chat/completions", { messages: asMessages, max_tokens: 2, stream });
    assert.equal(res.status, 400);
    const { error } = await res.json();
    assert.deepEqual([error.type, error.param], ["invalid_request_error", "messages"]);
    assert.match(error.message, /^messages: the prompt has \d+ tokens/);
  }
  assert.equal(Object.values(await store.counts()).reduce((a, b) => a + b, 0), 0);
  assert.equal((await store.listCompletionFeedback()).completions.length, 0);

  // The longest prompt that fits is taken everywhere.
  assert.equal((await call("POST", "/v1/preferences", { prompt: fits, chosen: "a", rejected: "b" })).status, 201);
  assert.equal((await call("POST", "/v1/pairs", { prompt: fits, max_new_tokens: 4 })).status, 201);
  const chat = await call("POST", "/v1/chat/completions", {
    messages: [{ role: "user", content: "Hi" }],
    max_tokens: 2,
  });
  assert.equal(chat.status, 200);
  await chat.body?.cancel();
  close();
});

Deno.test("preferences whose answers are the same text after trimming blanks are a 422", async () => {
  const { call, store, close } = await setup();
  const cases: [unknown, RegExp][] = [
    [{ prompt: "2+2=", chosen: "4", rejected: "4" }, /^body: 'chosen' and 'rejected' must differ/],
    [{ prompt: "2+2=", chosen: "4", rejected: " 4\n" }, /^body: 'chosen' and 'rejected' must differ/],
    [{ prompt: "2+2=", chosen: [{ role: "assistant", content: "4" }], rejected: "\t4 " }, /^body: 'chosen'/],
    [[{ prompt: "1+1=", chosen: "2", rejected: "3" }, { prompt: "2+2=", chosen: "4 ", rejected: "4" }], /^body\[1\]: /],
  ];
  for (const [body, message] of cases) {
    const res = await call("POST", "/v1/preferences", body);
    assert.equal(res.status, 422, JSON.stringify(body));
    assert.match((await res.json()).error.message, message);
  }
  assert.equal(Object.values(await store.counts()).reduce((a, b) => a + b, 0), 0);
  close();
});

Deno.test("a list of preferences is stored all or nothing, and a repeat returns the first pairs", async () => {
  const { call, store, close } = await setup({ limits: { bodyBytes: 2 * 1024 * 1024 } });
  const item = (i: number) => ({ prompt: `${i}+1=`, chosen: `${i + 1}`, rejected: `${i + 2}` });
  const total = async () => Object.values(await store.counts()).reduce((a, b) => a + b, 0);

  // The third item is too large for one KV value: nothing of the list is stored.
  const tooLarge = await call(
    "POST",
    "/v1/preferences",
    [item(1), item(2), { ...item(3), chosen: "x".repeat(70_000) }],
    {
      "idempotency-key": "list-1",
    },
  );
  assert.equal(tooLarge.status, 413);
  assert.equal(await total(), 0, "items 0 and 1 were stored");
  const { error } = await tooLarge.json();
  assert.equal(error.code, "too_large");
  assert.match(error.message, /item \[2\] of 3 .*65536 bytes/);

  // Every item fits a value, but the list does not fit one commit: refused up front, naming the limit.
  const big = Array.from({ length: 100 }, (_, i) => ({
    ...item(i),
    chosen: `${i}`.padEnd(5000, "c"),
    rejected: `${i}`.padEnd(5000, "r"),
  }));
  const tooBig = await call("POST", "/v1/preferences", big);
  assert.equal(tooBig.status, 413);
  assert.match((await tooBig.json()).error.message, /in one commit.* 819200 bytes/);
  assert.equal(await total(), 0);

  // A good list under the key of the refused one: all stored, in order; a repeat returns the same pairs.
  const good = [item(1), item(2), item(3)];
  const stored = await call("POST", "/v1/preferences", good, { "idempotency-key": "list-1" });
  assert.equal(stored.status, 201);
  const first = (await stored.json()).pairs;
  assert.deepEqual(first.map((p: { created: boolean }) => p.created), [true, true, true]);
  const pairs = await Promise.all(first.map((p: { id: string }) => store.get(p.id)));
  assert.deepEqual(pairs.map((p) => p!.prompt), ["1+1=", "2+1=", "3+1="]);
  const repeat = await call("POST", "/v1/preferences", good, { "idempotency-key": "list-1" });
  assert.equal(repeat.status, 200);
  assert.deepEqual((await repeat.json()).pairs, first.map((p: { id: string }) => ({ id: p.id, created: false })));
  assert.equal((await store.counts()).labeled, 3);
  close();
});

Deno.test("every key shorter than 16 characters is refused when the app is built", async () => {
  const { store, policy, close } = await setup();
  assert.throws(
    () => createApp({ store, policy, apiKeys: [KEY, "short-key"] }),
    /Cannot use the API keys as every key must have at least 16 characters: one has 9/,
  );
  assert.throws(
    () => createApp({ store, policy, apiKeys: [KEY], labelKeys: ["label"] }),
    /Cannot use the label keys as every key must have at least 16 characters: one has 5/,
  );
  close();
});

Deno.test("stats, metrics and the pairs list show pairs ended stale, rejected or judge_failed, the trainer's lost leases and the judges' cost", async () => {
  const { call, store, close } = await setup();
  const ids = [];
  for (let i = 0; i < 2; i++) {
    ids.push((await store.importLabeled({ prompt: `${i}+1=`, chosen: `${i + 1}`, rejected: `${i + 2}` })).pair.id);
  }
  await store.retire(ids[0]!, "stale", "sampled from v0, more than 4 versions back");
  await store.retire(ids[1]!, "rejected", "the prompt no longer fits");
  const { pair } = await store.create({ prompt: "p", promptText: "p", responses: ["x", "y"], policyVersion: 1 });
  await store.recordJudgeFailure(pair.id, {
    error: "HTTP 401",
    maxAttempts: 1,
    backoffMs: 10,
    owner: "j",
    judgeId: "hf:judge",
  });
  await store.records.writeStatus({
    owner: "w",
    step: 7,
    policy_version: 1,
    ref_version: 0,
    leases_lost: 3,
    retired: 2,
    held_pairs: 1,
    updated_at: Date.now(),
  });
  const judged = await store.create({ prompt: "q", promptText: "q", responses: ["x", "z"], policyVersion: 1 });
  await store.recordVerdict(judged.pair.id, {
    choice: "a",
    judge: { kind: "hf", id: "hf:judge" },
    latencyMs: 300,
    usage: { requests: 2, promptTokens: 150, completionTokens: 12 },
  });
  await store.records.recordGate({ at: 1, step: 3, promoted: false });
  await store.records.recordGate({ at: 2, step: 6, promoted: true, version: 1 });
  const stats = await (await call("GET", "/v1/stats")).json();
  assert.deepEqual([stats.pairs.stale, stats.pairs.rejected, stats.pairs.judge_failed], [1, 1, 1]);
  // The feeder reads its backlog from here: the one labeled pair is held by the trainer, so it is not backlog.
  assert.deepEqual([stats.trainer.step, stats.trainer.held_pairs, stats.pairs.labeled], [7, 1, 1]);
  assert.equal(backlogOf(stats), stats.pairs.awaiting_judgment);
  assert.deepEqual(stats.gate, { promoted: 1, refused: 1, last: { at: 2, step: 6, promoted: true, version: 1 } });
  assert.deepEqual(stats.judges["hf:judge"], {
    calls: 2,
    failures: 1,
    latency_ms: 300,
    latency_ms_mean: 300,
    requests: 2,
    prompt_tokens: 150,
    completion_tokens: 12,
    votes: 0,
    votes_agreed: 0,
  });
  const metrics = await (await call("GET", "/metrics")).text();
  for (const status of ["stale", "rejected", "judge_failed"]) {
    assert.match(metrics, new RegExp(`^dpo_pairs\\{status="${status}"\\} 1$`, "m"));
  }
  assert.match(metrics, /^dpo_gate_decisions_total\{outcome="refused"\} 1$/m);
  assert.match(metrics, /^dpo_judge_calls_total\{judge="hf:judge"\} 2$/m);
  assert.match(metrics, /^dpo_judge_failures_total\{judge="hf:judge"\} 1$/m);
  assert.match(metrics, /^dpo_judge_latency_seconds_total\{judge="hf:judge"\} 0.3$/m);
  assert.match(metrics, /^dpo_judge_tokens_total\{judge="hf:judge",type="prompt"\} 150$/m);
  assert.match(metrics, /^dpo_trainer_leases_lost_total 3$/m);
  assert.match(metrics, /^dpo_trainer_retired_total 2$/m);
  const listed = await (await call("GET", "/v1/pairs?status=rejected")).json();
  assert.deepEqual(listed.pairs.map((p: { id: string }) => p.id), [ids[1]]);
  close();
});

Deno.test("n samples that are all the same text are stored identical: counted, never judged, never on the label page", async () => {
  const { call, store, close } = await setup();
  const res = await call("POST", "/v1/pairs", { prompt: "2+2=", n: 3, temperature: 0, max_new_tokens: 3 });
  assert.equal(res.status, 201);
  const pair = await res.json();
  assert.equal(pair.status, "identical");
  assert.equal(new Set(pair.responses).size, 1, "greedy decoding: three times the same answer");
  assert.equal((await (await call("GET", "/v1/stats")).json()).pairs.identical, 1);
  const judged = await store.claim({
    status: "awaiting_judgment",
    role: "judge",
    owner: "j",
    leaseMs: 1000,
    limit: 10,
  });
  assert.deepEqual(judged, []);
  const verdict = await call("POST", `/v1/pairs/${pair.id}/feedback`, { choice: "a" });
  assert.equal(verdict.status, 409);
  close();
});

Deno.test("the list the label page reads never shows the same text as a and b, even for pairs stored before that was refused", async () => {
  const { call, store, kv, close } = await setup();
  const same = await legacyEqualCandidates(kv, store, [" 56", "56"]);
  const mixed = await legacyEqualCandidates(kv, store, [" 56", " 56", " 57"]);
  const listed = await (await call("GET", "/v1/pairs?status=awaiting_judgment&limit=50")).json();
  const shown = listed.pairs.filter((p: { id: string }) => p.id === same.id || p.id === mixed.id);
  assert.deepEqual(shown.map((p: { id: string; a: string; b: string }) => [p.id, p.a, p.b]), [[
    mixed.id,
    " 56",
    " 57",
  ]]);
  for (const p of listed.pairs) assert.notEqual(p.a.trim(), p.b.trim(), p.id);
  assert.equal((await store.get(same.id))!.status, "identical");
  close();
});

Deno.test("/metrics counts every request under its route template: 401, 404, 413 and 422 included", async () => {
  const { app, call, close } = await setup({ limits: { bodyBytes: 1024 } });
  await app.request("/v1/stats"); // no key: 401
  await call("GET", "/v1/nothing-here"); // 404
  await call("POST", "/v1/preferences", { prompt: "p", chosen: "x".repeat(2000), rejected: "y" }); // 413
  await call("GET", "/v1/pairs/not-an-id"); // 422
  const metrics = await (await call("GET", "/metrics")).text();
  const count = (route: string, status: number) =>
    Number(
      new RegExp(`^dpo_http_requests_total\\{route="${route}",status="${status}"\\} (\\d+)$`, "m").exec(metrics)?.[1],
    );
  assert.equal(count("/v1/stats", 401), 1, metrics);
  assert.equal(count("unmatched", 404), 1, metrics);
  assert.equal(count("/v1/preferences", 413), 1, metrics);
  assert.equal(count("/v1/pairs/:id", 422), 1, metrics);
  close();
});

Deno.test("feedback-only: no policy, and every route that needs none works; client-supplied pairs; idempotency across instances", async () => {
  const kv = await Deno.openKv(":memory:");
  const store = new PairStore(kv);
  const a = createApp({ store, apiKeys: [KEY] });
  const b = createApp({ store, apiKeys: [KEY] });
  const call = (app: typeof a, method: string, path: string, body?: unknown, headers: Record<string, string> = {}) =>
    app.request(path, {
      method,
      headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json", ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  try {
    const sampled = await call(a, "POST", "/v1/pairs", { prompt: "Hi", n: 2 });
    assert.equal(sampled.status, 503);
    assert.equal((await sampled.json()).error.code, "no_policy");
    const chat = await call(a, "POST", "/v1/chat/completions", { messages: [{ role: "user", content: "Hi" }] });
    assert.equal(chat.status, 503);
    assert.deepEqual((await chat.json()).error.code, "no_policy");
    assert.equal((await call(a, "GET", "/v1/models")).status, 503);

    // A client's own answers, labeled with the model that wrote them, judged like sampled ones.
    const messages = [{ role: "user", content: "Name a color" }];
    const body = { messages, responses: ["red", " red ", "blue"], model: "my-llm-v3" };
    const first = await call(a, "POST", "/v1/pairs", body, { "idempotency-key": "k-1" });
    assert.equal(first.status, 201);
    const pair = await first.json();
    assert.deepEqual([pair.status, pair.source, pair.model, pair.prompt_text], [
      "awaiting_judgment",
      "client",
      "my-llm-v3",
      "",
    ]);
    assert.notEqual(pair.a.trim(), pair.b.trim(), "two different answers are the candidates");
    // The same Idempotency-Key on another instance returns the first pair.
    const again = await call(b, "POST", "/v1/pairs", body, { "idempotency-key": "k-1" });
    assert.equal(again.status, 200);
    assert.equal((await again.json()).id, pair.id);
    const same = await call(a, "POST", "/v1/pairs", { prompt: "p", responses: ["x", " x"] });
    assert.equal(same.status, 422);
    assert.match((await same.json()).error.message, /every response is the same text/);
    assert.equal((await call(a, "POST", "/v1/pairs", { prompt: "p", n: 2, model: "m" })).status, 422);

    assert.equal(
      (await call(b, "POST", "/v1/preferences", { prompt: "1+1=", chosen: "2", rejected: "3" })).status,
      201,
    );
    assert.equal(
      (await call(b, "POST", `/v1/pairs/${pair.id}/feedback`, { choice: "a", annotator: "ann" })).status,
      200,
    );
    const exported = (await (await call(a, "GET", "/v1/export")).text()).trim().split("\n");
    assert.equal(exported.length, 2);
    const health = await (await a.request("/healthz")).json();
    assert.equal(health.policy_version, null);
    const stats = await (await call(a, "GET", "/v1/stats")).json();
    assert.deepEqual([stats.policy_version, stats.pairs.labeled], [null, 2]);
    assert.doesNotMatch(await (await call(a, "GET", "/metrics")).text(), /dpo_policy_version/);
  } finally {
    kv.close();
  }
});
