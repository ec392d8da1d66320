/**
 * A conversation through the whole loop on a chat model: the policy stops on its template's end-of-turn,
 * the judge sees the conversation and clean answers, export is TRL's conversational format, and the
 * trainer scores exactly the tokens the policy emitted, ended by the token it stopped on. And the chat
 * endpoint as the official OpenAI SDK sees it over HTTP, a generation that fails mid-stream included.
 */
import assert from "node:assert/strict";
import OpenAI, { APIError } from "openai";
import type { CausalLM } from "../src/model/arch/causal_lm.ts";
import { loadModel } from "../src/model/io/checkpoint.ts";
import { generate } from "../src/model/decoding/generate.ts";
import { fixturePath, useBackend } from "../src/model/_test_utils.ts";
import { writeChatModel } from "../src/model/_test_chat_model.ts";
import { encodeStoredPair } from "../src/dpo/online.ts";
import { buildJudgeMessages } from "../src/judge/judge_prompt.ts";
import type { Judge, JudgeInput } from "../src/judge/types.ts";
import { runJudgeRole } from "../src/roles/judge.ts";
import { createApp } from "../src/server/app.ts";
import { PolicyHolder } from "../src/server/policy.ts";
import { PairStore } from "../src/store/pairs.ts";

const KEY = "chat-test-key-0001";
const MESSAGES = [{ role: "system", content: "Be brief." }, { role: "user", content: "What is 2+2?" }];
const STEPS = 8;

/**
 * gpt2_tiny's greedy answer to MESSAGES (its template renders them as the chat model's does) and a token
 * of it to make the end-of-turn: a multi-character token first emitted at step 2 or later.
 */
async function pickEndOfTurn(): Promise<{ greedy: number[]; at: number }> {
  const base = await loadModel(new URL("./fixtures/gpt2_tiny", import.meta.url).pathname, { trainable: false });
  try {
    const prompt = base.tokenizer.applyChatTemplate(MESSAGES, { addGenerationPrompt: true });
    const [g] = await generate(base.model, base.tokenizer, [base.tokenizer.encode(prompt)], {
      temperature: 0,
      maxNewTokens: STEPS,
      stopAtEos: false,
    });
    const greedy = g!.tokenIds;
    const at = greedy.findIndex((id, i) => {
      const token = base.tokenizer.idToToken(id)!;
      return i >= 2 && id !== base.tokenizer.eosTokenId && !greedy.slice(0, i).includes(id) && token.length > 1 &&
        !prompt.includes(token);
    });
    assert.ok(at >= 2, `no usable end-of-turn in the greedy answer ${greedy}`);
    return { greedy, at };
  } finally {
    base.model.dispose();
  }
}

Deno.test("a conversation end to end: stop on end-of-turn, clean judge input, TRL export, trained terminator", async () => {
  await useBackend("wasm");
  const { greedy, at } = await pickEndOfTurn();
  const end = greedy[at]!;
  const { dir, endToken } = await writeChatModel(end);
  const loaded = await loadModel(dir, { trainable: false });
  const kv = await Deno.openKv(":memory:");
  const policy = new PolicyHolder({ model: loaded.model, tokenizer: loaded.tokenizer, version: 1 });
  try {
    const tok = loaded.tokenizer;
    assert.equal(tok.endOfTurnId, end);
    const answer = tok.decode(greedy.slice(0, at), { skipSpecialTokens: true });
    const store = new PairStore(kv);
    const app = createApp({ store, policy, apiKeys: [KEY] });
    const call = (path: string, body?: unknown) =>
      app.request(path, {
        method: body === undefined ? "GET" : "POST",
        headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });

    // The OpenAI endpoint: the answer stops at the end-of-turn, which is neither in the text nor counted.
    const completion = await (await call("/v1/chat/completions", {
      messages: MESSAGES,
      temperature: 0,
      max_tokens: STEPS,
    })).json();
    assert.deepEqual(completion.choices[0].message, { role: "assistant", content: answer, refusal: null });
    assert.equal(completion.choices[0].finish_reason, "stop");
    assert.equal(completion.usage.completion_tokens, at);
    const streamed = await (await call("/v1/chat/completions", {
      messages: MESSAGES,
      temperature: 0,
      max_tokens: STEPS,
      stream: true,
    })).text();
    const chunks = streamed.split("\n\n").filter((e) => e.startsWith("data: {")).map((e) => JSON.parse(e.slice(6)));
    assert.equal(chunks.map((c) => c.choices[0].delta.content ?? "").join(""), answer);
    assert.equal(chunks.at(-1).choices[0].finish_reason, "stop");

    // A pair sampled for the conversation: the prompt is rendered with the template, the answers are clean.
    const created = await (await call("/v1/pairs", { messages: MESSAGES, n: 2, temperature: 0, max_new_tokens: STEPS }))
      .json();
    assert.deepEqual(created.messages, MESSAGES);
    assert.equal(created.prompt_text, tok.applyChatTemplate(MESSAGES, { addGenerationPrompt: true }));
    assert.deepEqual(created.responses, [answer, answer]);
    assert.equal(created.status, "identical", "two greedy answers: nothing to judge");
    // A pair with two different answers for the conversation (the greedy one and another), as sampling gives.
    const other = answer === "20" ? "21" : "20";
    const { pair: sampled } = await store.create({
      messages: MESSAGES,
      promptText: created.prompt_text,
      responses: [answer, other],
      policyVersion: 0,
    });

    // The judge gets the messages and the answers; the LLM judge shows them as turns, no template in sight.
    const seen: JudgeInput[] = [];
    const judge: Judge = {
      id: "capture",
      kind: "verifier",
      judge: (input) => {
        seen.push(input);
        return Promise.resolve({ choice: "a", latencyMs: 0, judgeId: "capture" });
      },
    };
    const stop = new AbortController();
    await runJudgeRole({
      store,
      judge,
      owner: "judge",
      concurrency: 1,
      leaseMs: 10_000,
      pollMs: 5,
      signal: stop.signal,
      onVerdict: () => stop.abort(),
    });
    assert.deepEqual(seen, [{ prompt: MESSAGES, a: answer, b: other, pairId: sampled.id }]);
    const shown = buildJudgeMessages(seen[0]!.prompt, seen[0]!.a, seen[0]!.b)[1]!.content;
    assert.match(shown, /System: Be brief\.\n\nUser: What is 2\+2\?\n\[End of prompt\]/);
    assert.ok(!shown.includes("assistant:") && !shown.includes(endToken), "neither the template nor its tokens");

    // Export: TRL's conversational preference format.
    const exported = JSON.parse((await (await call("/v1/export?format=trl")).text()).trim());
    assert.deepEqual(exported, {
      prompt: MESSAGES,
      chosen: [{ role: "assistant", content: answer }],
      rejected: [{ role: "assistant", content: other }],
    });

    // Training: the prompt the policy saw, the tokens it emitted, and the end-of-turn it stopped on.
    const labeled = (await store.get(sampled.id))!;
    assert.equal(labeled.status, "labeled");
    const pair = encodeStoredPair(tok, labeled, loaded.model.contextLength);
    assert.deepEqual(pair.promptIds, tok.encode(created.prompt_text));
    assert.deepEqual([...pair.chosenIds, pair.eosId], greedy.slice(0, at + 1));
  } finally {
    policy.dispose();
    kv.close();
    await Deno.remove(dir, { recursive: true });
  }
});

/** `model`, except that while `fail.on` its forward calls after the first of a request throw. */
function failingAfterFirstToken(model: CausalLM, fail: { on: boolean; calls: number }): CausalLM {
  return new Proxy(model, {
    get(target, prop) {
      if (prop === "forward") {
        return (...args: Parameters<CausalLM["forward"]>) => {
          if (fail.on && ++fail.calls > 1) throw new Error("Cannot run the forward pass: the device was lost");
          return target.forward(...args);
        };
      }
      const value = Reflect.get(target, prop, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

Deno.test("the OpenAI SDK streams a completion, and gets an error, not an empty success, when generation fails mid-stream", async () => {
  await useBackend("wasm");
  const loaded = await loadModel(fixturePath("gpt2_tiny"), { trainable: false });
  const fail = { on: false, calls: 0 };
  const policy = new PolicyHolder({
    model: failingAfterFirstToken(loaded.model, fail),
    tokenizer: loaded.tokenizer,
    version: 1,
  });
  const kv = await Deno.openKv(":memory:");
  const app = createApp({ store: new PairStore(kv), policy, apiKeys: [KEY] });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
  const client = new OpenAI({ apiKey: KEY, baseURL: `http://127.0.0.1:${server.addr.port}/v1`, maxRetries: 0 });
  const messages: OpenAI.ChatCompletionMessageParam[] = [{ role: "user", content: "What is 2+2?" }];
  const request = { model: "policy", messages, max_tokens: 6, temperature: 0 };
  const logged: string[] = [];
  const consoleError = console.error;
  console.error = (...args: unknown[]) => logged.push(args.join(" "));
  try {
    // A healthy stream: the role, the text, a finish reason, and [DONE] (the SDK ends without an error).
    const deltas: OpenAI.ChatCompletionChunk[] = [];
    for await (const chunk of await client.chat.completions.create({ ...request, stream: true })) deltas.push(chunk);
    assert.equal(deltas[0]!.choices[0]!.delta.role, "assistant");
    assert.ok(deltas.at(-1)!.choices[0]!.finish_reason);

    // The forward pass fails after the first token: the 200 and the role chunk are sent, then the error.
    fail.on = true;
    const seen: OpenAI.ChatCompletionChunk[] = [];
    await assert.rejects(
      async () => {
        for await (const chunk of await client.chat.completions.create({ ...request, stream: true })) seen.push(chunk);
      },
      (err: unknown) => {
        assert.ok(err instanceof APIError, `expected an APIError, got ${err}`);
        assert.equal(err.type, "server_error");
        assert.match(err.message, /the server failed while generating this completion/);
        assert.ok(!err.message.includes("device was lost"), "no internals reach the client");
        return true;
      },
    );
    assert.equal(seen[0]?.choices[0]?.delta.role, "assistant", "the stream had begun");
    assert.ok(seen.every((c) => c.choices[0]!.finish_reason === null), "no finish reason: it did not finish");
    assert.ok(
      logged.some((l) => l.includes("failed after streaming began") && l.includes("device was lost")),
      logged.join("\n"),
    );

    // The server goes on serving.
    fail.on = false;
    const after = await client.chat.completions.create(request);
    assert.equal(after.choices[0]!.message.role, "assistant");
  } finally {
    console.error = consoleError;
    await server.shutdown();
    policy.dispose();
    kv.close();
  }
});
