import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { VersionEvalSchema } from "../dpo/evaluate.ts";
import { GateDecisionSchema } from "../dpo/gate.ts";
import { checkpointUploadKey, evalKey, trainerFenceKey } from "../store/keys.ts";
import { PairStore } from "../store/pairs.ts";
import { bestEvaluated, runTrainerRole, type TrainerEvent, type TrainerRoleOptions } from "./train.ts";
import { loadModel } from "../model/io/checkpoint.ts";
import { scorePairs } from "../model/logprobs.ts";
import { openCheckpoints } from "../store/open.ts";
import { readFence, trainedPairs, TrainingRecords, unsettledVersions } from "../store/training_records.ts";

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

/** A stream-mode trainer role in `dir` that publishes every step; `overrides` set what a test is about. */
function roleOptions(dir: string, kvPath: string, overrides: Partial<TrainerRoleOptions>): TrainerRoleOptions {
  return {
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
    ...overrides,
  };
}

/** Imports pairs `What is i+1?` for i in [from, to), the right answer chosen; returns their ids. */
async function addPairs(store: PairStore, from: number, to: number): Promise<string[]> {
  const ids = [];
  for (let i = from; i < to; i++) {
    ids.push(
      (await store.importLabeled({ prompt: `What is ${i}+1? Answer:`, chosen: ` ${i + 1}`, rejected: ` ${i + 2}` }))
        .pair.id,
    );
  }
  return ids;
}

/** A temp dir holding a KV file and its pair store, for one test; closed and removed after it, whatever happens. */
async function withStore(
  prefix: string,
  fn: (t: { dir: string; kvPath: string; kv: Deno.Kv; store: PairStore }) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix });
  const kvPath = join(dir, "dpo.kv");
  const kv = await Deno.openKv(kvPath);
  try {
    await fn({ dir, kvPath, kv, store: new PairStore(kv) });
  } finally {
    kv.close();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test({
  name: "trainer role: publishes versions, evaluates each against the base, records its status, resumes",
  // The role opens its own KV connection and TF.js backend, as it does in a worker.
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await withStore("trainer_role_", async ({ dir, kvPath, kv, store }) => {
      const options = roleOptions(dir, kvPath, { eval: { task: "arithmetic", prompts: 4, maxNewTokens: 3 } });
      const runUntil = (versions: number) => runUntilPublished(options, versions);
      await addPairs(store, 0, 4);
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
      const status = await new TrainingRecords(kv).status();
      assert.equal(status?.owner, "trainer-test");
      assert.equal(status?.step, 2);
      assert.equal(status?.policy_version, 2);

      // Two more pairs, leased for 300 s to a trainer instance that then died; a restart voids the
      // leases (the fence) instead of waiting them out, resumes its own checkpoint, and the versions go on.
      await addPairs(store, 4, 6);
      const dead = await readFence(kv);
      const held = await store.claim({
        status: "labeled",
        role: "train",
        owner: "trainer-test#dead",
        leaseMs: 300_000,
        limit: 10,
        fence: dead!.token,
      });
      assert.equal(held.length, 2);
      const again = await runUntil(1);
      assert.ok(
        again.some((e) => e.type === "log" && /took the trainer fence as trainer-test#\w+ \(token 2\)/.test(e.message)),
      );
      assert.ok(again.some((e) => e.type === "log" && /resuming the trainer at step 2 \(policy v2\)/.test(e.message)));
      assert.deepEqual(again.flatMap((e) => (e.type === "publish" ? [e.version] : [])), [3]);
      assert.equal((await new TrainingRecords(kv).status())?.step, 3);
      assert.equal((await store.counts()).trained, 6);
      assert.deepEqual((await trainedPairs(kv, 3)).toSorted(), held.map((p) => p.id).toSorted());

      // Killed right after the commit that published v4 and before marking its pairs (they are still
      // labeled and leased for 300 s): the restart settles them into v4 and never trains them again.
      const killed = await readFence(kv);
      await addPairs(store, 6, 8);
      const inV4 = await store.claim({
        status: "labeled",
        role: "train",
        owner: "trainer-test#killed",
        leaseMs: 300_000,
        limit: 10,
        fence: killed!.token,
      });
      const checkpoints = openCheckpoints(kv, options.checkpoints);
      const v4 = await checkpoints.publish(MODEL, { parentVersion: 3 }, {
        pairIds: inV4.map((p) => p.id),
        fence: { ...killed!, versionstamp: (await kv.get(trainerFenceKey())).versionstamp! },
      });
      assert.equal(v4.version, 4);
      assert.equal((await store.counts()).labeled, 2);
      // It was also killed mid-upload once before: a staging directory and an unfinished upload remain.
      const junk = join(dir, "trainer", "publish-tmp", "publish-killed");
      await Deno.mkdir(junk, { recursive: true });
      await kv.set(checkpointUploadKey(90), { startedAt: Date.now(), storage: "dir", fence: killed!.token });
      const upload = join(dir, "checkpoints", ".tmp-v000090-killed");
      await Deno.mkdir(upload);
      await addPairs(store, 8, 10);
      const after = await runUntil(1);
      for (const path of [junk, upload]) await assert.rejects(Deno.stat(path), Deno.errors.NotFound);
      assert.equal((await kv.get(checkpointUploadKey(90))).value, null);
      assert.ok(after.some((e) => e.type === "log" && /settled v4: marked 2 pair\(s\) trained/.test(e.message)));
      assert.deepEqual(after.flatMap((e) => (e.type === "publish" ? [e.version] : [])), [5]);
      const [v4Ids, v5Ids] = [await trainedPairs(kv, 4), await trainedPairs(kv, 5)];
      assert.equal(v5Ids.length, 2);
      assert.ok(v5Ids.every((id) => !v4Ids.includes(id)), "nothing trained twice");
      for (const id of v4Ids) assert.equal((await store.get(id))?.trainedInto, 4);
      assert.deepEqual(await unsettledVersions(kv), []);
      assert.equal((await store.counts()).trained, 10);
    });
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
    await withStore("trainer_lora_", async ({ dir, kvPath, kv, store }) => {
      const llama = fileURLToPath(new URL("../../tests/fixtures/llama_tiny", import.meta.url));
      const options = roleOptions(dir, kvPath, {
        checkpoints: "kv",
        model: llama,
        owner: "trainer-lora",
        dpo: { per_device_train_batch_size: 2, learning_rate: 1e-2, use_peft: true, lora_r: 4 },
      });
      await addPairs(store, 0, 4);
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
      await addPairs(store, 4, 6);
      const fresh = await runUntilPublished({ ...options, stateDir: join(dir, "other"), owner: "trainer-lora-2" }, 1);
      assert.ok(fresh.some((e) => e.type === "log" && /starting from policy v2/.test(e.message)));
      assert.deepEqual(fresh.flatMap((e) => (e.type === "publish" ? [e.version] : [])), [3]);
    });
  },
});

Deno.test({
  name:
    "trainer role: a rollback under a running trainer is respected: nothing published on top, it starts again from the served version",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await withStore("trainer_rollback_", async ({ dir, kvPath, kv, store }) => {
      const options = roleOptions(dir, kvPath, { owner: "trainer-rollback", leaseMs: 300_000 });
      const checkpoints = openCheckpoints(kv, options.checkpoints);
      await addPairs(store, 0, 4);
      await runUntilPublished(options, 2); // v1, v2; the trainer's own state belongs to v2
      const events: TrainerEvent[] = [];
      const stop = new AbortController();
      let late: Promise<string[]> | undefined;
      await runTrainerRole(options, {
        signal: stop.signal,
        onEvent: (e) => {
          events.push(e);
          // Once it has resumed at v2, the operator rolls back to v1; then new pairs arrive.
          if (e.type === "ready" && late === undefined) {
            late = checkpoints.rollback(1).then(() => addPairs(store, 4, 6));
          }
          if (e.type === "publish") stop.abort();
        },
      });
      const logs = events.flatMap((e) => (e.type === "log" ? [e.message] : []));
      assert.ok(logs.some((l) => /resuming the trainer at step 2 \(policy v2\)/.test(l)), logs.join("\n"));
      assert.ok(
        logs.some((l) => /current version is 1.*starting again from the served version/.test(l)),
        logs.join("\n"),
      );
      assert.ok(logs.some((l) => /starting from policy v1/.test(l)), logs.join("\n"));
      const published = events.flatMap((e) => (e.type === "publish" ? [e.version] : []));
      assert.deepEqual(published, [3], "no version was published on top of v2");
      assert.equal((await checkpoints.get(3))!.parentVersion, 1);
      assert.equal((await checkpoints.current())!.version, 3);
      const late4 = await late!;
      assert.deepEqual((await trainedPairs(kv, 3)).sort(), late4.sort(), "the new pairs, exactly once");
      for (const id of late4) assert.equal((await store.get(id))!.trainedInto, 3);
    });
  },
});

Deno.test("trainer role: retention spares the best evaluated version, the newest among equals", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const records = new TrainingRecords(kv);
    assert.deepEqual(await bestEvaluated(records), []);
    const at = Date.UTC(2026, 0, 1);
    for (const [version, accuracy] of [[0, 0.99], [1, 0.5], [2, 0.9], [3, 0.7], [4, 0.9], [5, 0.2]]) {
      await records.recordEval(version!, {
        version,
        prompts: 10,
        accuracy,
        base_accuracy: 0.99,
        win_rate_vs_base: 0.5,
        at,
        seconds: 1,
      });
    }
    assert.deepEqual(await bestEvaluated(records), [4], "v0 is the base, not a version to keep");
  } finally {
    kv.close();
  }
});

function gateOptions(dir: string, kvPath: string): TrainerRoleOptions {
  return roleOptions(dir, kvPath, {
    model: fileURLToPath(new URL("../../models/arith-tiny", import.meta.url)),
    owner: "trainer-gate",
    dpo: {
      per_device_train_batch_size: 4,
      learning_rate: 3e-3,
      loss_type: ["sigmoid"],
      lr_scheduler_type: "constant",
      warmup_steps: 0,
    },
    eval: { task: "arithmetic", prompts: 20, maxNewTokens: 6 },
    gate: { prompts: 100, margin: 0.02, confidence: 0.95 },
  });
}

/** Preferences that teach wrong sums: a policy trained on them answers worse, and the gate refuses it. */
async function importWrongSums(store: PairStore): Promise<void> {
  for (let i = 0; i < 12; i++) {
    const [x, y] = [10 + i, 20 + 2 * i];
    await store.importLabeled({ prompt: `${x}+${y}=`, chosen: `${x + y + 11}`, rejected: `${x + y}` });
  }
}

Deno.test({
  name: "trainer role: the promotion gate keeps a worse policy from being served, records why, and trains on",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await withStore("trainer_gate_", async ({ dir, kvPath, kv, store }) => {
      const options = gateOptions(dir, kvPath);
      await importWrongSums(store);
      const events: TrainerEvent[] = [];
      const stop = new AbortController();
      let steps = 0;
      await runTrainerRole(options, {
        signal: stop.signal,
        onEvent: (e) => {
          events.push(e);
          if (e.type === "step" && ++steps === 3) setTimeout(() => stop.abort(), 0);
        },
      });
      const logs = events.flatMap((e) => (e.type === "log" ? [e.message] : []));
      const refusals = logs.filter((l) => l.startsWith("gate: not published"));
      assert.ok(refusals.length >= 1, logs.join("\n"));
      assert.deepEqual(events.filter((e) => e.type === "publish"), [], "nothing worse was served");
      assert.equal(await openCheckpoints(kv, options.checkpoints).current(), null);
      const gates = await store.records.gates(10);
      assert.equal(gates.refused, refusals.length);
      const last = GateDecisionSchema.parse(gates.decisions.at(-1));
      assert.equal(last.promoted, false);
      assert.equal(last.served_version, 0);
      assert.ok(last.candidate_accuracy < last.served_accuracy, JSON.stringify(last));
      assert.ok(last.lower_bound < -0.02);
      // The pairs stay with the trainer (held, not trained into any version) until a candidate passes, and
      // its status says so: trained work the feeder must not count as backlog.
      assert.equal((await store.counts()).trained, 0);
      const status = await store.records.status();
      assert.equal(status?.held_pairs, 4 * steps, JSON.stringify(status));
    });
  },
});

Deno.test({
  name:
    "trainer role: after gate.resetAfter refusals in a row it goes back to the served version and trains the pairs again",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await withStore("trainer_gate_reset_", async ({ dir, kvPath, store }) => {
      const options = gateOptions(dir, kvPath);
      options.gate = { ...options.gate!, resetAfter: 2 };
      await importWrongSums(store);
      const events: TrainerEvent[] = [];
      const stop = new AbortController();
      const giveUp = setTimeout(() => stop.abort(), 60_000); // without restarts it would wait for pairs forever
      const restarts = () =>
        events.flatMap((e) => (e.type === "log" && e.message.endsWith("from the served version") ? [e.message] : []));
      await runTrainerRole(options, {
        signal: stop.signal,
        onEvent: (e) => {
          events.push(e);
          if (restarts().length === 2) stop.abort();
        },
      });
      clearTimeout(giveUp);
      const logs = events.flatMap((e) => (e.type === "log" ? [e.message] : []));
      const gateLogs = logs.filter((l) => l.startsWith("gate: not published"));
      assert.deepEqual(gateLogs.map((l) => l.includes("going back to the served version")), [false, true, false, true]);
      const steps = events.flatMap((e) => (e.type === "step" ? [e.metrics.step] : []));
      // Two refusals, back to the base (step 0, a fresh optimizer), two more: 8 of the 12 pairs trained twice,
      // which the second instance could only claim because the first one's fence was voided.
      assert.deepEqual(steps, [1, 2, 1, 2], logs.join("\n"));
      assert.equal(restarts().length, 2);
      assert.match(restarts()[0]!, /the gate refused 2 candidate\(s\) in a row; starting again/);
      assert.ok(logs.filter((l) => l.startsWith("took the trainer fence")).length >= 2);
      // The gate's bar is kept in KV: the instances after the first hold candidates to it without answering again.
      const bars = logs.filter((l) => l.startsWith("gate: 100 prompts of its own"));
      assert.ok(bars.length >= 2 && bars[0]!.endsWith("(the served version)"), bars.join("\n"));
      assert.ok(bars.slice(1).every((l) => l.endsWith("(kept from before)")), bars.join("\n"));
      assert.deepEqual(events.filter((e) => e.type === "publish"), []);
      assert.equal((await store.counts()).trained, 0);
      assert.equal((await store.records.gates(10)).refused, 4);
    });
  },
});

Deno.test({
  name: "trainer role: the gate's bar is kept in KV for the next trainer, and dropped after a rollback below it",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await withStore("trainer_gate_bar_", async ({ dir, kvPath, store }) => {
      const options = gateOptions(dir, kvPath);
      // Runs a trainer until its gate has a bar; returns what it said of it.
      const barLog = async () => {
        const stop = new AbortController();
        let said = "";
        await runTrainerRole(options, {
          signal: stop.signal,
          onEvent: (e) => {
            if (e.type !== "log" || !e.message.startsWith("gate: ")) return;
            said = e.message;
            stop.abort();
          },
        });
        return said;
      };
      assert.match(await barLog(), /the bar is v0 at \d+\.\d% \(the served version\)$/);
      const stored = (await store.records.gateBar()) as { version: number; scores: number[] };
      assert.equal(stored.version, 0);
      // A bar better than the served version (as after a promotion within the margin below the best) is kept.
      await store.records.saveGateBar({ ...stored, scores: stored.scores.map(() => 1) });
      assert.match(await barLog(), /the bar is v0 at 100\.0% \(kept from before\)$/);
      // A bar from a version newer than the one served (rolled back below it) is not.
      await store.records.saveGateBar({ ...stored, version: 3, scores: stored.scores.map(() => 1) });
      assert.match(await barLog(), /the bar is v0 at \d+\.\d% \(the served version\)$/);
    });
  },
});
