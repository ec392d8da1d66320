/**
 * The chat API as the official `openai` SDK uses it, over HTTP: the request shapes the SDK sends (nulls, text
 * parts, the developer role), streamed usage, log-probs checked against the scoring path, n choices, model
 * names and kept versions, and errors raised as the SDK's own error classes.
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import { loadModel } from "../src/model/io/checkpoint.ts";
import { generate } from "../src/model/decoding/generate.ts";
import { buildScoringBatch, tokenLogProbs } from "../src/model/logprobs.ts";
import * as tf from "../src/model/tf.ts";
import { fixturePath, useBackend } from "../src/model/_test_utils.ts";
import { createApp } from "../src/server/app.ts";
import { PolicyHolder } from "../src/server/policy.ts";
import { PairStore } from "../src/store/pairs.ts";

const KEY = "openai-test-key-0001";

async function serve(options: { requestsPerMinute?: number } = {}) {
  await useBackend("wasm");
  const loaded = await loadModel(fixturePath("gpt2_tiny"), { trainable: false });
  const kept = await loadModel(fixturePath("gpt2_tiny"), { trainable: false });
  const policy = new PolicyHolder({ model: loaded.model, tokenizer: loaded.tokenizer, version: 3 });
  const kv = await Deno.openKv(":memory:");
  const store = new PairStore(kv);
  let keptLoads = 0;
  const app = createApp({
    store,
    policy,
    apiKeys: [KEY],
    limits: { requestsPerMinute: options.requestsPerMinute ?? 600 },
    kept: {
      list: () => Promise.resolve([{ version: 2, publishedAt: Date.UTC(2026, 0, 1) }, { version: 3, publishedAt: 0 }]),
      load: (version) => {
        keptLoads++;
        return Promise.resolve({ model: kept.model, tokenizer: kept.tokenizer, version });
      },
    },
  });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
  const baseURL = `http://127.0.0.1:${server.addr.port}/v1`;
  const client = new OpenAI({ apiKey: KEY, baseURL, maxRetries: 0 });
  const close = async () => {
    await server.shutdown();
    policy.dispose();
    kv.close();
  };
  return { client, baseURL, store, loaded, close, keptLoads: () => keptLoads };
}

Deno.test("openai SDK: the request shapes it sends are accepted: nulls, text parts, developer, assistant without content", async () => {
  const { client, store, close } = await serve();
  try {
    const completion = await client.chat.completions.create({
      model: "policy",
      messages: [
        { role: "developer", content: "Be brief." },
        { role: "user", content: [{ type: "text", text: "What is" }, { type: "text", text: "2+2?" }] },
        { role: "assistant", content: null },
        { role: "user", content: "Answer." },
      ],
      max_tokens: null,
      max_completion_tokens: 4,
      stop: null,
      seed: null,
      temperature: null,
      top_p: null,
      n: null,
      logprobs: null,
      user: "u-1",
    });
    const [choice] = completion.choices;
    assert.equal(completion.object, "chat.completion");
    assert.equal(completion.model, "policy");
    assert.equal(completion.system_fingerprint, "policy-v3");
    assert.equal(choice!.message.refusal, null);
    assert.equal(choice!.logprobs, null);
    assert.ok(completion.usage!.completion_tokens <= 4);
    // What the model saw: developer as system, the parts joined, the empty assistant turn kept.
    const kept = await store.getCompletion(completion.id);
    assert.deepEqual(kept!.messages, [
      { role: "system", content: "Be brief." },
      { role: "user", content: "What is\n2+2?" },
      { role: "assistant", content: "" },
      { role: "user", content: "Answer." },
    ]);
  } finally {
    await close();
  }
});

Deno.test("openai SDK: a stream with include_usage ends with the usage; n choices stream and are each kept for feedback", async () => {
  const { client, baseURL, close } = await serve();
  try {
    const chunks: OpenAI.ChatCompletionChunk[] = [];
    const stream = await client.chat.completions.create({
      model: "policy",
      messages: [{ role: "user", content: "Tell a story" }],
      max_tokens: 5,
      n: 2,
      stream: true,
      stream_options: { include_usage: true },
    });
    for await (const chunk of stream) chunks.push(chunk);
    const last = chunks.at(-1)!;
    assert.deepEqual(last.choices, []);
    assert.ok(last.usage!.completion_tokens > 0 && last.usage!.completion_tokens <= 10);
    assert.equal(last.usage!.total_tokens, last.usage!.prompt_tokens + last.usage!.completion_tokens);
    assert.ok(chunks.slice(0, -1).every((c) => c.usage === null), "usage is null on every chunk but the last");
    const finished = new Set(chunks.flatMap((c) => c.choices.filter((x) => x.finish_reason).map((x) => x.index)));
    assert.deepEqual([...finished].sort(), [0, 1]);
    // Each choice takes its own thumbs.
    for (const id of [last.id, `${last.id}-1`]) {
      const res = await fetch(`${baseURL}/completions/${id}/feedback`, {
        method: "POST",
        headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
        body: JSON.stringify({ label: id === last.id }),
      });
      assert.equal(res.status, 200, await res.text());
    }
  } finally {
    await close();
  }
});

Deno.test("openai SDK: logprobs and top_logprobs are the model's own, as the scoring path computes them", async () => {
  const { client, loaded, close } = await serve();
  try {
    const completion = await client.chat.completions.create({
      model: "policy",
      messages: [{ role: "user", content: "What is 2+2?" }],
      max_tokens: 6,
      temperature: 0,
      logprobs: true,
      top_logprobs: 3,
    });
    const content = completion.choices[0]!.logprobs!.content!;
    assert.ok(content.length > 0);
    assert.equal(content.map((t) => t.token).join(""), completion.choices[0]!.message.content);
    for (const t of content) {
      assert.equal(t.top_logprobs.length, 3);
      assert.equal(t.top_logprobs[0]!.token, t.token, "greedy: the chosen token is the most likely");
      assert.ok(Math.abs(t.top_logprobs[0]!.logprob - t.logprob) < 1e-6);
      assert.ok(t.top_logprobs[1]!.logprob <= t.top_logprobs[0]!.logprob);
      assert.deepEqual(t.bytes, [...new TextEncoder().encode(t.token)]);
    }
    // The same tokens through the scoring path the trainer uses (checked against PyTorch elsewhere).
    const tok = loaded.tokenizer;
    const prompt = tok.encode(tok.applyChatTemplate([{ role: "user", content: "What is 2+2?" }], {
      addGenerationPrompt: true,
    }));
    // Greedy decoding is deterministic: the same call gives the token ids the server generated.
    const [again] = await generate(loaded.model, tok, [prompt], { temperature: 0, maxNewTokens: 6 });
    const ids = again!.tokenIds;
    assert.equal(again!.text, completion.choices[0]!.message.content);
    const batch = buildScoringBatch([{ promptIds: prompt, completionIds: ids }], {
      eosId: tok.eosTokenId,
      maxLength: loaded.model.contextLength,
    });
    const scored = tf.tidy(() => tokenLogProbs(loaded.model, batch));
    const expected = Array.from(await scored.data()).slice(0, ids.length); // the eos scored last is not a token here
    scored.dispose();
    assert.equal(content.length, ids.length);
    content.forEach((t, i) => assert.ok(Math.abs(t.logprob - expected[i]!) < 1e-4, `${t.logprob} vs ${expected[i]}`));
  } finally {
    await close();
  }
});

Deno.test("openai SDK: models are listed; a kept version is served by name; an unknown one is a NotFoundError", async () => {
  const { client, close, keptLoads } = await serve();
  try {
    const models = [];
    for await (const model of client.models.list()) models.push(model.id);
    assert.deepEqual(models, ["policy", "policy@v3", "policy@v2"]);
    const request = { messages: [{ role: "user" as const, content: "Hi" }], max_tokens: 2 };
    const old = await client.chat.completions.create({ ...request, model: "policy@v2" });
    assert.deepEqual([old.model, old.system_fingerprint], ["policy@v2", "policy-v2"]);
    await client.chat.completions.create({ ...request, model: "policy@v2" });
    assert.equal(keptLoads(), 1, "a kept version is loaded once, then reused");
    const current = await client.chat.completions.create({ ...request, model: "policy@v3" });
    assert.equal(current.system_fingerprint, "policy-v3");
    for (const model of ["gpt-4o", "policy@v1"]) {
      await assert.rejects(client.chat.completions.create({ ...request, model }), (err: unknown) => {
        assert.ok(err instanceof OpenAI.NotFoundError, String(err));
        assert.equal(err.code, "model_not_found");
        assert.equal(err.param, "model");
        return true;
      });
    }
  } finally {
    await close();
  }
});

Deno.test("openai SDK: errors arrive as its own classes, in OpenAI's shape, with the parameter named", async () => {
  const { client, baseURL, close } = await serve({ requestsPerMinute: 12 });
  try {
    const request = { model: "policy", messages: [{ role: "user" as const, content: "Hi" }], max_tokens: 2 };
    const rejects = (p: Promise<unknown>, cls: new (...args: never[]) => Error, param: string | null, match: RegExp) =>
      assert.rejects(p, (err: unknown) => {
        assert.ok(err instanceof cls, `${err}`);
        const e = err as InstanceType<typeof OpenAI.APIError>;
        assert.equal(e.param ?? null, param);
        assert.match(e.message, match);
        return true;
      });
    await rejects(
      client.chat.completions.create({ ...request, temperature: 3 }),
      OpenAI.BadRequestError,
      "temperature",
      /temperature/,
    );
    await rejects(
      client.chat.completions.create({ ...request, messages: [{ role: "user", content: null as unknown as string }] }),
      OpenAI.BadRequestError,
      "messages[0].content",
      /only an assistant message may have no content/,
    );
    await rejects(
      client.chat.completions.create({
        ...request,
        tools: [{ type: "function", function: { name: "f", parameters: {} } }],
      }),
      OpenAI.BadRequestError,
      "tools",
      /not supported/,
    );
    await rejects(
      client.chat.completions.create({ ...request, response_format: { type: "json_object" } }),
      OpenAI.BadRequestError,
      "response_format",
      /response_format/,
    );
    await rejects(
      client.chat.completions.create({ ...request, stream: true, logprobs: true }),
      OpenAI.BadRequestError,
      "logprobs",
      /not supported with stream/,
    );
    const stranger = new OpenAI({ apiKey: "not-the-key-at-all", baseURL, maxRetries: 0 });
    await rejects(stranger.chat.completions.create(request), OpenAI.AuthenticationError, null, /API key/);
    await rejects(stranger.models.list(), OpenAI.AuthenticationError, null, /API key/);
    // The rate limit (12 a minute, 7 used above) in OpenAI's shape, with Retry-After.
    let limited: unknown;
    for (let i = 0; i < 10 && limited === undefined; i++) {
      await client.chat.completions.create(request).catch((err) => limited = err);
    }
    assert.ok(limited instanceof OpenAI.RateLimitError, `${limited}`);
    assert.equal(limited.type, "rate_limit_error");
    assert.ok(Number(limited.headers?.get("retry-after")) >= 1);
  } finally {
    await close();
  }
});

Deno.test("a chat app's signals become pairs: opposite thumbs, an edit, a pick among n, a regeneration", async () => {
  const { client, baseURL, store, close } = await serve();
  const post = async (path: string, body: unknown) => {
    const res = await fetch(`${baseURL}${path}`, {
      method: "POST",
      headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    return { status: res.status, body: await res.json() };
  };
  try {
    const messages = [{ role: "user" as const, content: "Name a color" }];
    // Two answers to the same conversation (different seeds), one thumbs up and one down: one pair.
    const answers = [];
    for (const seed of [1, 2, 3, 4, 5, 6]) {
      const r = await client.chat.completions.create({ model: "policy", messages, max_tokens: 4, seed });
      answers.push({ id: r.id, text: r.choices[0]!.message.content! });
    }
    const [first, second] = answers.filter((a, i, all) => all.findIndex((b) => b.text.trim() === a.text.trim()) === i);
    assert.ok(first && second, "two different answers among six samples");
    assert.deepEqual((await post(`/completions/${first.id}/feedback`, { label: true })).body.pairs, []);
    const down = await post(`/completions/${second.id}/feedback`, { label: false, annotator: "u1" });
    const thumbs = (await store.get(down.body.pairs[0]))!;
    assert.deepEqual([thumbs.status, thumbs.responses], ["labeled", [first.text, second.text]]);

    // An edit: the user's text over the answer.
    const edit = await post(`/completions/${second.id}/edit`, { text: "blue", annotator: "u1" });
    assert.equal(edit.status, 201);
    assert.deepEqual((await store.get(edit.body.pairs[0]))!.responses, ["blue", second.text]);
    assert.equal((await post(`/completions/${second.id}/edit`, { text: "red" })).status, 409);

    // n = 3 side by side, the user picks one: a pair against each other answer that differs from it.
    const three = await client.chat.completions.create({ model: "policy", messages, max_tokens: 4, n: 3 });
    const pick = await post(`/completions/${three.id}/choice`, { index: 1 });
    assert.equal(pick.status, 201);
    assert.equal(pick.body.id, `${three.id}-1`);
    const texts = three.choices.map((c) => c.message.content!);
    const others = texts.filter((t, i) => i !== 1 && t.trim() !== texts[1]!.trim());
    assert.equal(pick.body.pairs.length, others.length);
    assert.equal((await post(`/completions/${three.id}/choice`, { index: 0 })).status, 409);

    // "Try again": the replaced answer and the new one go to the judge as a pair.
    const before = (await store.counts()).awaiting_judgment + (await store.counts()).identical;
    const again = await client.chat.completions.create({
      model: "policy",
      messages,
      max_tokens: 4,
      // @ts-ignore: this server's extension of the request
      replaces: first.id,
    });
    const counts = await store.counts();
    assert.equal(counts.awaiting_judgment + counts.identical, before + 1);
    const regenerated = (await store.list({ limit: 1 })).pairs[0]!;
    assert.deepEqual(regenerated.responses, [first.text, again.choices[0]!.message.content]);
    await assert.rejects(
      client.chat.completions.create({
        model: "policy",
        messages: [{ role: "user", content: "Another question" }],
        // @ts-ignore: this server's extension of the request
        replaces: first.id,
      }),
      (err: unknown) => err instanceof OpenAI.BadRequestError && /answers another conversation/.test(err.message),
    );
  } finally {
    await close();
  }
});
