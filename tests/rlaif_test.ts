/**
 * RLAIF against a real OpenAI-compatible server: another instance of this server, on loopback, behind an
 * API key, serving a tiny model. The hf judge reaches it only with the key (checked at start-up), asks every pair in both
 * orders, and a judge whose answers cannot be read (the tiny model writes no verdict line) ends the pair
 * `judge_failed` after a bounded number of requests instead of retrying forever.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { buildJudge } from "../src/cli/_services.ts";
import { createHfJudge } from "../src/judge/hf.ts";
import { runJudgeRole } from "../src/roles/judge.ts";
import { loadModel } from "../src/model/io/checkpoint.ts";
import { fixturePath, useBackend } from "../src/model/_test_utils.ts";
import { createApp } from "../src/server/app.ts";
import { PolicyHolder } from "../src/server/policy.ts";
import { type Completion, PairStore } from "../src/store/pairs.ts";

const KEY = "judge-server-key-0123";

Deno.test("the hf judge against this server with a key: checked at start-up, both orders asked, failures bounded", async () => {
  await useBackend("wasm");
  const judgeKv = await Deno.openKv(":memory:");
  // The tiny Llama with a longer context (RoPE has no position weights), so the judge's prompt fits.
  const modelDir = await Deno.makeTempDir({ prefix: "rlaif_model_" });
  for await (const f of Deno.readDir(fixturePath("llama_tiny"))) {
    await Deno.copyFile(join(fixturePath("llama_tiny"), f.name), join(modelDir, f.name));
  }
  const config = JSON.parse(await Deno.readTextFile(join(modelDir, "config.json")));
  await Deno.writeTextFile(join(modelDir, "config.json"), JSON.stringify({ ...config, max_position_embeddings: 4096 }));
  const loaded = await loadModel(modelDir, { trainable: false });
  const policy = new PolicyHolder({ model: loaded.model, tokenizer: loaded.tokenizer, version: 1 });
  const app = createApp({ store: new PairStore(judgeKv), policy, apiKeys: [KEY], limits: { maxNewTokens: 8 } });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
  const endpoint = `http://127.0.0.1:${server.addr.port}`;
  const kv = await Deno.openKv(":memory:");
  try {
    // Without the key: a clear error before any pair is claimed; with it, the judge is built.
    const choice = { judge: "hf", settings: { hf_endpoint: endpoint, hf_model: "policy" } };
    await assert.rejects(
      buildJudge(choice),
      /Cannot use judge 'hf:policy'.*HTTP 401.*--judge-token or DPO_JUDGE_TOKEN/s,
    );
    const built = await buildJudge({ ...choice, settings: { ...choice.settings, judge_token: KEY } });
    assert.equal(built.kind, "hf");

    const store = new PairStore(kv);
    const { pair } = await store.create({
      prompt: "2+2=",
      promptText: "2+2=",
      responses: [" 4", " 5"],
      policyVersion: 0,
    });
    const judge = createHfJudge({
      endpointUrl: endpoint,
      model: "policy",
      token: KEY,
      maxTokens: 4,
      maxRetries: 1,
      initialBackoffMs: 5,
      maxBackoffMs: 10,
    });
    const stop = new AbortController();
    await runJudgeRole({
      store,
      judge,
      owner: "j",
      concurrency: 1,
      leaseMs: 200,
      maxAttempts: 2,
      backoffMs: 20,
      pollMs: 10,
      signal: stop.signal,
      onError: (_id, _err, final) => final && stop.abort(),
    });
    const failed = await store.get(pair.id);
    assert.equal(failed?.status, "judge_failed");
    assert.match(failed!.statusReason!, /no final 'Verdict: A\|B\|TIE' line/);
    // 2 attempts × 2 orders × (1 try + 1 retry) requests at most (a failed order cancels the other's
    // retry), every one authenticated and served; then nothing more.
    const requests = judge.counters.requests;
    assert.ok(requests >= 4 && requests <= 8, `${requests} requests`);
    const served: Completion[] = [];
    for await (const e of judgeKv.list<Completion>({ prefix: ["completion"] })) served.push(e.value);
    const shownFirst = (c: Completion) => c.messages?.at(-1)?.content.split("[Response A]\n")[1]?.split("\n")[0];
    const judging = served.filter((c) => shownFirst(c) !== undefined);
    assert.ok(judging.length >= 4 && judging.length <= requests, `${judging.length} served`);
    assert.deepEqual(new Set(judging.map(shownFirst)), new Set([" 4", " 5"]), "each answer shown first once a try");
  } finally {
    await server.shutdown();
    policy.dispose();
    judgeKv.close();
    kv.close();
    await Deno.remove(modelDir, { recursive: true });
  }
});
