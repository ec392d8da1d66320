import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { VersionEvalSchema } from "../dpo/evaluate.ts";
import { evalKey, trainedPairsPrefix } from "../store/keys.ts";
import { PairStore } from "../store/pairs.ts";
import { readTrainerStatus } from "../store/trainer_status.ts";
import { runTrainerRole, type TrainerEvent, type TrainerRoleOptions } from "./trainer.ts";
import { loadModel } from "../model/checkpoint.ts";
import { scorePairs } from "../model/logprobs.ts";
import { openCheckpoints } from "../store/open.ts";

const MODEL = fileURLToPath(new URL("../../tests/fixtures/gpt2_tiny", import.meta.url));

/** Runs the role until it has published `versions` versions; returns its events. */
async function runUntilPublished(options: TrainerRoleOptions, versions: number): Promise<TrainerEvent[]> {
  const events: TrainerEvent[] = [];
  const stop = new AbortController();
  await runTrainerRole(options, {
    signal: stop.signal,
    onEvent: (e) => {
      events.push(e);
      if (events.filter((x) => x.type === "publish").length >= versions) stop.abort();
    },
  });
  return events;
}

Deno.test({
  name: "trainer role: publishes versions, evaluates each against the base, records its status, resumes",
  // The role opens its own KV connection and TF.js backend, as it does in a worker.
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "trainer_role_" });
    const kvPath = join(dir, "dpo.kv");
    const kv = await Deno.openKv(kvPath);
    const store = new PairStore(kv);
    const options: TrainerRoleOptions = {
      kv: kvPath,
      checkpoints: `dir:${join(dir, "checkpoints")}`,
      model: MODEL,
      stateDir: join(dir, "trainer"),
      mode: "stream",
      roundSize: 4,
      roundEpochs: 1,
      publishEvery: 1,
      refRefreshRounds: 0,
      maxStaleness: 4,
      keep: 5,
      owner: "trainer-test",
      leaseMs: 60_000,
      pollMs: 20,
      backend: "wasm",
      dpo: { per_device_train_batch_size: 2, learning_rate: 1e-3 },
      eval: { task: "arithmetic", prompts: 4, maxNewTokens: 3 },
      releaseOwnLeases: true,
    };
    const runUntil = (versions: number) => runUntilPublished(options, versions);
    try {
      for (let i = 0; i < 4; i++) {
        await store.importLabeled({ prompt: `What is ${i}+1? Answer:`, chosen: ` ${i + 1}`, rejected: ` ${i + 2}` });
      }
      const events = await runUntil(2);
      const ready = events.find((e) => e.type === "ready");
      assert.ok(ready?.type === "ready" && ready.policy_version === 0 && typeof ready.base_accuracy === "number");
      const published = events.flatMap((e) => (e.type === "publish" ? [e] : []));
      assert.deepEqual(published.map((e) => e.version), [1, 2]);
      for (const e of published) {
        assert.equal(e.eval?.version, e.version);
        assert.equal(e.eval?.prompts, 4);
        assert.equal(e.eval?.base_accuracy, ready.base_accuracy);
        const stored = VersionEvalSchema.parse((await kv.get(evalKey(e.version))).value);
        assert.deepEqual(stored, e.eval);
      }
      // Version 0, the base policy, is recorded as the starting point.
      assert.equal(VersionEvalSchema.parse((await kv.get(evalKey(0))).value).win_rate_vs_base, 0.5);
      assert.equal(events.filter((e) => e.type === "step").length, 2);
      assert.ok(events.some((e) => e.type === "log" && /policy v2: held-out accuracy/.test(e.message)));
      const status = await readTrainerStatus(kv);
      assert.equal(status?.owner, "trainer-test");
      assert.equal(status?.step, 2);
      assert.equal(status?.policy_version, 2);

      // Two more pairs, still leased to this trainer as if it had stopped while holding them; a restart
      // releases them, resumes its own checkpoint, and the versions go on.
      for (let i = 4; i < 6; i++) {
        await store.importLabeled({ prompt: `What is ${i}+1? Answer:`, chosen: ` ${i + 1}`, rejected: ` ${i + 2}` });
      }
      const held = await store.claim({
        status: "labeled",
        role: "train",
        owner: "trainer-test",
        leaseMs: 600_000,
        limit: 10,
      });
      assert.equal(held.length, 2);
      const again = await runUntil(1);
      assert.ok(again.some((e) => e.type === "log" && /released 2 lease\(s\)/.test(e.message)));
      assert.ok(again.some((e) => e.type === "log" && /resuming the trainer at step 2 \(policy v2\)/.test(e.message)));
      assert.deepEqual(again.flatMap((e) => (e.type === "publish" ? [e.version] : [])), [3]);
      assert.equal((await readTrainerStatus(kv))?.step, 3);
      assert.equal((await store.counts()).trained, 6);
      const ids = [];
      for await (const e of kv.list<string[]>({ prefix: trainedPairsPrefix(3) })) ids.push(...e.value);
      assert.equal(ids.length, 2);
    } finally {
      kv.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("trainer role: evaluation needs the base model, said before anything loads", async () => {
  await assert.rejects(
    runTrainerRole({
      kv: ":memory:",
      checkpoints: "kv",
      stateDir: "unused",
      mode: "stream",
      roundSize: 1,
      roundEpochs: 1,
      publishEvery: 1,
      refRefreshRounds: 0,
      maxStaleness: 0,
      keep: 1,
      owner: "x",
      leaseMs: 1000,
      pollMs: 10,
      backend: "cpu",
      dpo: {},
      eval: { task: "arithmetic", prompts: 1, maxNewTokens: 1 },
    }, { signal: AbortSignal.abort(), onEvent: () => {} }),
    /Cannot evaluate policy versions: the base they are compared with is the starting model, and none was given/,
  );
});

Deno.test({
  name: "trainer role with LoRA: publishes only the adapter; a new trainer continues it, a server loads it merged",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "trainer_lora_" });
    const kvPath = join(dir, "dpo.kv");
    const kv = await Deno.openKv(kvPath);
    const store = new PairStore(kv);
    const llama = fileURLToPath(new URL("../../tests/fixtures/llama_tiny", import.meta.url));
    const options: TrainerRoleOptions = {
      kv: kvPath,
      checkpoints: "kv",
      model: llama,
      stateDir: join(dir, "trainer"),
      mode: "stream",
      roundSize: 4,
      roundEpochs: 1,
      publishEvery: 1,
      refRefreshRounds: 0,
      maxStaleness: 4,
      keep: 5,
      owner: "trainer-lora",
      leaseMs: 60_000,
      pollMs: 20,
      backend: "wasm",
      dpo: { per_device_train_batch_size: 2, learning_rate: 1e-2, use_peft: true, lora_r: 4 },
      releaseOwnLeases: true,
    };
    const addPairs = async (from: number, to: number) => {
      for (let i = from; i < to; i++) {
        await store.importLabeled({ prompt: `What is ${i}+1? Answer:`, chosen: ` ${i + 1}`, rejected: ` ${i + 2}` });
      }
    };
    try {
      await addPairs(0, 4);
      await runUntilPublished(options, 2);
      const checkpoints = openCheckpoints(kv, "kv");
      const v2 = (await checkpoints.get(2))!;
      assert.deepEqual(Object.keys(v2.files).sort(), ["adapter_config.json", "adapter_model.safetensors"]);
      const served = await loadModel(await checkpoints.materialize(2, join(dir, "served")), {
        trainable: false,
        mergeAdapter: true,
      });
      assert.equal(served.model.adapter, undefined, "served merged");
      const base = await loadModel(llama, { trainable: false });
      const pair = [{ promptIds: [5, 6, 7], completionIds: [8, 9] }];
      const opts = { eosId: 316, maxLength: 64 };
      const [a] = await scorePairs(served.model, pair, opts);
      const [b] = await scorePairs(base.model, pair, opts);
      assert.notEqual(a!.logp, b!.logp, "the published adapter changes the policy");
      served.model.dispose();
      base.model.dispose();

      // A trainer without the first one's state starts from the served version: base + its adapter.
      await addPairs(4, 6);
      const fresh = await runUntilPublished({ ...options, stateDir: join(dir, "other"), owner: "trainer-lora-2" }, 1);
      assert.ok(fresh.some((e) => e.type === "log" && /starting from policy v2/.test(e.message)));
      assert.deepEqual(fresh.flatMap((e) => (e.type === "publish" ? [e.version] : [])), [3]);
    } finally {
      kv.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
