import assert from "node:assert/strict";
import { loadModel, saveModel } from "../model/io/checkpoint.ts";
import { loadTokenizer } from "../model/io/tokenizer.ts";
import { fixturePath, readExpected, useBackend } from "../model/_test_utils.ts";
import { KvCheckpointStore } from "../store/checkpoints.ts";
import { PairStore } from "../store/pairs.ts";
import { holdsFence, takeFence, trainedPairs } from "../store/training_records.ts";
import { createTrainer } from "./checkpoint.ts";
import { parseDpoConfig } from "./config.ts";
import { promptFitProblem } from "./fit.ts";
import { encodeCompletion, encodeStoredPair, runOnlineTrainer } from "./online.ts";
import { scorePairs } from "../model/logprobs.ts";

Deno.test("encodeStoredPair: a conversation's answers end with the end-of-turn, a plain prompt's with eos", async () => {
  // llama_tiny: ChatML with <|im_end|> = 318 after each turn, eos <|endoftext|> = 316.
  const { chat } = await readExpected("llama_tiny");
  const chatml = await loadTokenizer(fixturePath("llama_tiny"));
  const plainTemplate = await loadTokenizer(fixturePath("gpt2_tiny")); // "role: content\n": no end-of-turn token
  const kv = await Deno.openKv(":memory:");
  try {
    const store = new PairStore(kv);
    const answer = chatml.decode(chat!.answer_ids);
    const { pair: conversation } = await store.importLabeled({
      messages: chat!.messages,
      promptText: chat!.text,
      chosen: answer,
      rejected: "20",
    });
    const encoded = encodeStoredPair(chatml, conversation, 64);
    assert.deepEqual(encoded, {
      promptIds: chat!.ids,
      chosenIds: chat!.answer_ids,
      rejectedIds: chatml.encode("20"),
      eosId: 318,
    });
    const room = 64 - chat!.ids.length - 1;
    assert.equal(room, 16);
    const long = (await store.importLabeled({
      messages: chat!.messages,
      promptText: chat!.text,
      chosen: answer.repeat(4),
      rejected: "20",
    })).pair;
    assert.equal(encodeStoredPair(chatml, long, 64).chosenIds.length, room, "cut to fit, the terminator still scored");

    const { pair: plain } = await store.importLabeled({ prompt: "What is 12+7?", chosen: "19", rejected: "20" });
    assert.equal(encodeStoredPair(chatml, plain, 64).eosId, undefined, "plain text ends with the trainer's eos");
    assert.equal(encodeStoredPair(plainTemplate, conversation, 64).eosId, undefined, "no end-of-turn token: eos");
  } finally {
    kv.close();
  }
});

Deno.test("online rounds: leases outlive a round longer than the lease; stale and untrainable pairs end, the loop goes on", async () => {
  await useBackend("wasm");
  const kv = await Deno.openKv(":memory:");
  const policy = await loadModel(fixturePath("gpt2_tiny"));
  const reference = await loadModel(fixturePath("gpt2_tiny"), { trainable: false });
  const trainer = createTrainer(policy, reference, parseDpoConfig({ per_device_train_batch_size: 1 }));
  const tmpDir = await Deno.makeTempDir({ prefix: "online_rounds_" });
  try {
    const store = new PairStore(kv);
    const checkpoints = new KvCheckpointStore(kv);
    for (let v = 0; v < 3; v++) await checkpoints.publish(fixturePath("gpt2_tiny"));
    const good: string[] = [];
    const add = async (i: number) =>
      good.push((await store.importLabeled({ prompt: `${i}+1=`, chosen: `${i + 1}`, rejected: `${i + 2}` })).pair.id);
    for (let i = 0; i < 3; i++) await add(i);
    // A prompt longer than the 64-token context, and a pair sampled from v0 while v3 is served.
    const poison = (await store.importLabeled({ prompt: "1+".repeat(80), chosen: "2", rejected: "3" })).pair.id;
    const old = (await store.create({ prompt: "5+5=", promptText: "5+5=", responses: ["10", "11"], policyVersion: 0 }))
      .pair.id;
    await store.recordVerdict(old, { choice: "a", judge: { kind: "verifier", id: "test" } });
    for (let i = 3; i < 6; i++) await add(i);

    const fence = await takeFence(kv, { owner: "t", instance: "t#1" });
    const stop = new AbortController();
    const lost: string[] = [];
    const retired: [string, string, string][] = [];
    let intruderClaimed = -1;
    let steps = 0;
    const holding: number[] = [];
    let holdingWhenGated: number[] | undefined;
    await runOnlineTrainer({
      store,
      publisher: checkpoints,
      trainer,
      encode: (pair) => encodeStoredPair(policy.tokenizer, pair, 64),
      problem: (pair) => promptFitProblem(policy.tokenizer, pair.promptText, 64),
      savePolicy: (dir) => saveModel({ ...policy, model: trainer.policy }, dir),
      tmpDir,
      owner: "t#1",
      fence,
      startVersion: 3,
      holdsFence: () => holdsFence(kv, fence),
      mode: "rounds",
      batchPairs: 1,
      roundPairs: 6,
      roundEpochs: 2,
      publishEverySteps: 1,
      refRefreshRounds: 0,
      maxStaleness: 1,
      leaseMs: 600,
      pollMs: 10,
      signal: stop.signal,
      // Each step takes at least 200 ms: the round of 12 steps lasts about four leases.
      onStep: async () => {
        await new Promise((r) => setTimeout(r, 200));
        if (++steps === 12) {
          const intruder = await store.claim({
            status: "labeled",
            role: "train",
            owner: "x",
            leaseMs: 1000,
            limit: 10,
          });
          intruderClaimed = intruder.length;
        }
      },
      onLeaseLost: (ids) => lost.push(...ids),
      onRetired: (pair, status, reason) => retired.push([pair.id, status, reason]),
      onHolding: (pairs) => void holding.push(pairs),
      gate: () => {
        holdingWhenGated = [...holding];
        return Promise.resolve(true);
      },
      onPublish: () => stop.abort(),
    });
    // The round's pairs counted as work in progress (the feeder's backlog) until the gate passed them.
    assert.deepEqual([holdingWhenGated, holding], [[], [0]]);
    assert.equal(intruderClaimed, 0, "every lease of the round was still live at its last step");
    assert.deepEqual(lost, []);
    assert.deepEqual(retired.map(([id, status]) => [id, status]), [[poison, "rejected"], [old, "stale"]]);
    assert.match(retired[0]![2], /the prompt has 16\d tokens, but the model's context of 64 tokens/);
    assert.match(retired[1]![2], /sampled from policy v0, more than max_staleness 1 versions before v3/);
    assert.equal((await store.get(poison))?.status, "rejected");
    assert.deepEqual((await trainedPairs(kv, 4)).toSorted(), good.toSorted());
    const counts = await store.counts();
    assert.deepEqual([counts.trained, counts.rejected, counts.stale, counts.labeled], [6, 1, 1, 0]);
  } finally {
    policy.model.dispose();
    reference.model.dispose();
    trainer.optimizer.dispose();
    kv.close();
    await Deno.remove(tmpDir, { recursive: true });
  }
});

Deno.test("online KTO: thumbs on served answers are trained exactly once, recorded in the version, and move the policy", async () => {
  await useBackend("wasm");
  const kv = await Deno.openKv(":memory:");
  const policy = await loadModel(fixturePath("gpt2_tiny"));
  const reference = await loadModel(fixturePath("gpt2_tiny"), { trainable: false });
  const config = parseDpoConfig({ per_device_train_batch_size: 2, learning_rate: 5e-3, beta: 0.5 });
  const trainer = createTrainer(policy, reference, config);
  const tmpDir = await Deno.makeTempDir({ prefix: "online_kto_" });
  const tok = policy.tokenizer;
  try {
    const store = new PairStore(kv);
    const checkpoints = new KvCheckpointStore(kv);
    const answers: [string, string, boolean][] = [];
    // Each answer to a conversation of its own: no two opposite thumbs meet to make a DPO pair here.
    for (let i = 0; i < 8; i++) {
      answers.push([`What is ${i}+1? Answer:`, ` ${i + 1}`, true], [
        `What is ${i}+2? Answer:`,
        ` ${i + 9} and more`,
        false,
      ]);
    }
    const ids: string[] = [];
    for (const [k, [prompt, text, label]] of answers.entries()) {
      const id = `chatcmpl-${k.toString(16).padStart(32, "0")}`;
      await store.recordCompletion({ id, prompt, promptText: prompt, text, policyVersion: 0 });
      await store.recordCompletionFeedback(id, { label });
      ids.push(id);
    }
    // The same thumbs' log-probs before and after: up answers should gain on down answers.
    const logp = async (model: typeof policy.model) =>
      (await scorePairs(
        model,
        answers.map(([prompt, text]) => ({ promptIds: tok.encode(prompt), completionIds: tok.encode(text) })),
        { eosId: tok.eosTokenId, maxLength: 64 },
      )).map((s) => s.logp);
    const before = await logp(policy.model);
    const fence = await takeFence(kv, { owner: "t", instance: "t#1" });
    const stop = new AbortController();
    const kto: number[] = [];
    let published = 0;
    await runOnlineTrainer({
      store,
      publisher: checkpoints,
      trainer,
      encode: (pair) => encodeStoredPair(tok, pair, 64),
      problem: (pair) => promptFitProblem(tok, pair.promptText, 64),
      savePolicy: (dir) => saveModel({ ...policy, model: trainer.policy }, dir),
      tmpDir,
      owner: "t#1",
      fence,
      startVersion: null,
      holdsFence: () => holdsFence(kv, fence),
      mode: "stream",
      batchPairs: 2,
      roundPairs: 2,
      roundEpochs: 1,
      publishEverySteps: 4,
      refRefreshRounds: 0,
      maxStaleness: 100,
      leaseMs: 60_000,
      pollMs: 10,
      signal: stop.signal,
      kto: {
        batch: 4,
        encode: (c) => encodeCompletion(tok, c, 64),
        problem: () => null,
        onStep: (m) => void kto.push(m.loss),
      },
      onPublish: () => {
        if (++published === 1) stop.abort();
      },
    });
    assert.equal(kto.length, 4, "16 thumbs, 4 a step");
    assert.deepEqual((await trainedPairs(kv, 1)).toSorted(), ids.toSorted(), "every thumbs in v1's record, once");
    for (const id of ids) assert.equal((await store.getCompletion(id))!.trainedInto, 1);
    // Settled: nothing is claimable again.
    assert.deepEqual(await store.claimFeedback({ owner: "x", leaseMs: 1000, limit: 100 }), []);
    const after = await logp(trainer.policy);
    const gain = (i: number) => after[i]! - before[i]!;
    const up = answers.flatMap(([, , label], i) => (label ? [gain(i)] : []));
    const down = answers.flatMap(([, , label], i) => (label ? [] : [gain(i)]));
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    assert.ok(mean(up) > mean(down), `up answers gained ${mean(up)}, down answers ${mean(down)}`);
    assert.ok(mean(up) > 0, `up answers' log-probs rose: ${mean(up)}`);
  } finally {
    policy.model.dispose();
    reference.model.dispose();
    trainer.optimizer.dispose();
    kv.close();
    await Deno.remove(tmpDir, { recursive: true });
  }
});
