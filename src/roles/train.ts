/**
 * The trainer role (the `train` role of the design): trains online on the pairs judged in the shared KV, publishes
 * policy versions for the servers to swap in, evaluates every version on held-out prompts, and reports
 * what it does as events. The `worker` command runs it in a process of its own; `start` runs it in a Web
 * Worker (workers/trainer.ts), off the server's event loop. Its options are plain data for that reason.
 */
import { join } from "node:path";
import { z } from "zod";
import { BACKENDS, describeBackend, initBackend } from "../model/kernels/backend.ts";
import { type LoadedModel, loadModel, saveModel } from "../model/io/checkpoint.ts";
import { resolveModel } from "../model/io/hub.ts";
import { createTrainer, loadTrainingCheckpoint, saveTrainingCheckpoint } from "../dpo/checkpoint.ts";
import { DpoSettingsSchema, ONLINE_DPO_DEFAULTS, parseDpoConfig } from "../dpo/config.ts";
import { answerHeldOut, type Answers, compareWithBase, type VersionEval, VersionEvalSchema } from "../dpo/evaluate.ts";
import { promptFitProblem } from "../dpo/fit.ts";
import { encodeCompletion, encodeStoredPair, runOnlineTrainer, trainingPromptText } from "../dpo/online.ts";
import type { DpoTrainer, StepMetrics } from "../dpo/trainer.ts";
import { findTask, TASK_NAMES } from "../tasks/registry.ts";
import { CheckpointsSpecSchema, openCheckpoints, openSharedKv } from "../store/open.ts";
import { PairStore } from "../store/pairs.ts";
import { MAX_PAIRS_PER_VERSION, type TrainingRecords } from "../store/training_records.ts";
import { decideGate, GATE_RESET_AFTER, GateBar, type GateDecision } from "../dpo/gate.ts";
import { PointerMovedError } from "../store/errors.ts";
import { writeAtomic } from "../util/fs.ts";

const PositiveInt = z.number().int().positive();
const Count = z.number().int().nonnegative();

const TaskName = z.string().refine((name) => findTask(name) !== undefined, {
  message: `expected a task: ${TASK_NAMES.join(", ")}`,
});
const heldOutSize = (task: string) => findTask(task)?.heldOutSize ?? 0;

/** The gate refused `resetAfter` candidates in a row: the trainer starts again from the served version. */
class GateResetError extends Error {
  override readonly name = "GateResetError";
}

/** What the trainer role runs with (plain data, so that it crosses a worker's message boundary). */
export const TrainerRoleOptionsSchema = z.object({
  /** The shared KV: a file path or an http(s) URL. */
  kv: z.string().min(1),
  /** Where versions are published: `dir:PATH` or `kv`. */
  checkpoints: CheckpointsSpecSchema,
  /** The starting policy when none is published yet, and the base that versions are evaluated against. */
  model: z.string().min(1).optional(),
  /** The starting reference; default the starting policy. */
  ref: z.string().min(1).optional(),
  /** The trainer's own checkpoint (optimizer state) lives here. */
  stateDir: z.string().min(1),
  mode: z.enum(["stream", "rounds"]),
  roundSize: PositiveInt,
  roundEpochs: PositiveInt,
  publishEvery: PositiveInt,
  refRefreshRounds: Count,
  maxStaleness: Count,
  /** Published versions kept. */
  keep: PositiveInt,
  owner: z.string().min(1),
  leaseMs: PositiveInt,
  pollMs: PositiveInt,
  backend: z.enum(BACKENDS),
  /** Thumbs up/down per KTO step, trained beside the pairs (at least 2; 0: thumbs are not trained). */
  ktoBatch: Count.refine((n) => n !== 1, "a KTO step needs at least 2 thumbs (0 turns them off)").default(8),
  /** DPO settings by TRL name, validated by `parseDpoConfig` (a resumed run's own settings underneath). */
  dpo: DpoSettingsSchema,
  /** Evaluate every published version on held-out prompts of a task; off when absent. */
  eval: z.object({ task: TaskName, prompts: PositiveInt, maxNewTokens: PositiveInt.optional() }).optional(),
  /**
   * The promotion gate (`src/dpo/gate.ts`), on `prompts` held-out prompts of the evaluation's task kept apart
   * from the evaluation's own: a trained policy is published only when not worse than the best served so far. Needs
   * `eval`; off when absent.
   */
  gate: z.object({
    prompts: PositiveInt,
    margin: z.number().min(0).max(1),
    confidence: z.number().gt(0.5).lt(1),
    /**
     * After this many candidates refused in a row, training goes back to the served version (its weights,
     * reference and optimizer state, as a restarted trainer does) and the pairs the refused candidates held
     * are trained again from it; 0: never, training goes on from the last candidate.
     */
    resetAfter: Count.default(GATE_RESET_AFTER),
  }).optional(),
}).refine((o) => !o.gate || o.eval, { message: "the gate needs an evaluation task (eval)", path: ["gate"] })
  .refine((o) => !o.eval || o.eval.prompts + (o.gate?.prompts ?? 0) <= heldOutSize(o.eval.task), {
    message: "the evaluation's and the gate's prompts must fit in the task's held-out prompts",
    path: ["eval", "prompts"],
  })
  .refine((o) => o.mode !== "rounds" || o.roundSize <= MAX_PAIRS_PER_VERSION, {
    message: `a round holds at most ${MAX_PAIRS_PER_VERSION} pairs (one version records them in one commit)`,
    path: ["roundSize"],
  });
/** What the trainer role runs with. */
export type TrainerRoleOptions = z.input<typeof TrainerRoleOptionsSchema>;

const StepMetricsSchema = z.custom<StepMetrics>(
  (v) => typeof v === "object" && v !== null && typeof (v as { step?: unknown }).step === "number",
  "expected step metrics",
);

/** What the trainer reports, in order: logs, a ready event, then steps and publishes. */
export const TrainerEventSchema = z.discriminatedUnion("type", [
  z.object({ type: z.literal("log"), message: z.string() }),
  z.object({
    type: z.literal("ready"),
    policy_version: Count,
    step: Count,
    /** The base policy's held-out accuracy, when evaluation is on. */
    base_accuracy: z.number().nullable(),
  }),
  z.object({ type: z.literal("step"), metrics: StepMetricsSchema }),
  z.object({ type: z.literal("publish"), version: PositiveInt, pairs: Count, eval: VersionEvalSchema.nullable() }),
]);
/** What the trainer reports. */
export type TrainerEvent = z.infer<typeof TrainerEventSchema>;

/** Options of `runTrainerRole` besides the plain-data ones. */
export interface TrainerRoleHooks {
  /** Stops the role: the current step finishes or is abandoned; unpublished work is redone after a restart. */
  signal: AbortSignal;
  onEvent: (event: TrainerEvent) => void;
}

const PublishedState = z.object({ version: z.number().int().positive() });

/** Runs the trainer until `signal` aborts. */
export async function runTrainerRole(input: TrainerRoleOptions, hooks: TrainerRoleHooks): Promise<void> {
  const parsed = TrainerRoleOptionsSchema.safeParse(input);
  if (!parsed.success) throw new Error(`Cannot start the trainer: ${z.prettifyError(parsed.error)}`);
  const opts = parsed.data;
  const log = (message: string) => hooks.onEvent({ type: "log", message });
  if (opts.dpo.use_peft === true && opts.ref) {
    throw new Error("Cannot start the trainer: with use_peft the reference is the base with its adapter off; drop ref");
  }
  if (opts.dpo.use_peft === true && opts.mode === "rounds" && opts.refRefreshRounds > 0) {
    throw new Error(
      "Cannot start the trainer: with use_peft the reference is the frozen base; set refRefreshRounds to 0",
    );
  }
  if (opts.eval && !opts.model) {
    throw new Error(
      "Cannot evaluate policy versions: the base they are compared with is the starting model, and none was given",
    );
  }
  log(describeBackend(await initBackend(opts.backend)));
  const kv = await openSharedKv(opts.kv);
  try {
    for (;;) {
      try {
        return await train(kv, opts, hooks, log);
      } catch (err) {
        // Someone rolled back (or published) under this trainer: nothing of its was published. It starts
        // again from the version served now, as a new instance whose fence voids its leases at once.
        // The gate refused too many candidates in a row: the same, by choice.
        if (err instanceof GateResetError && hooks.signal.aborted) return;
        if (!(err instanceof PointerMovedError || err instanceof GateResetError) || hooks.signal.aborted) throw err;
        log(`${err.message}; starting again from the served version`);
      }
    }
  } finally {
    kv.close();
  }
}

type Options = z.infer<typeof TrainerRoleOptionsSchema>;

async function train(kv: Deno.Kv, opts: Options, hooks: TrainerRoleHooks, log: (m: string) => void): Promise<void> {
  const store = new PairStore(kv);
  const records = store.records;
  const checkpoints = openCheckpoints(kv, opts.checkpoints);
  const current = await checkpoints.current();
  const stateDir = join(opts.stateDir, "checkpoint");
  const statePath = join(opts.stateDir, "published.json");

  // Resume the trainer's own checkpoint when it belongs to the version being served; otherwise start
  // from the served version (or the starting model) with a fresh optimizer.
  const saved = await Deno.readTextFile(statePath).then((t) => PublishedState.parse(JSON.parse(t)), () => null);
  let policy: LoadedModel, reference: LoadedModel | null;
  let resume: Awaited<ReturnType<typeof loadTrainingCheckpoint>> | undefined;
  const modelDir = opts.model ? await resolveModel(opts.model) : undefined;
  if (current && saved?.version === current.version) {
    resume = await loadTrainingCheckpoint(stateDir);
    ({ policy, reference } = resume);
    log(`resuming the trainer at step ${resume.trainerState.step} (policy v${current.version})`);
  } else {
    const dir = current
      ? await checkpoints.materialize(current.version, join(opts.stateDir, `start-v${current.version}`))
      : modelDir;
    if (!dir) throw new Error("Cannot start the trainer: no policy version is published yet and no --model was given");
    policy = await loadModel(dir);
    // With LoRA the reference is the policy's frozen base (a published version is an adapter on it).
    reference = opts.dpo.use_peft || policy.model.adapter
      ? null
      : await loadModel(opts.ref ? await resolveModel(opts.ref) : dir, { trainable: false });
    log(`starting from ${current ? `policy v${current.version}` : dir}`);
  }
  const config = parseDpoConfig({
    ...(resume?.config ?? {}),
    ...ONLINE_DPO_DEFAULTS,
    ...opts.dpo,
  }, "the training settings");
  const trainer = createTrainer(policy, reference, config, resume);
  const batchPairs = config.per_device_train_batch_size * config.gradient_accumulation_steps;
  if (opts.mode === "stream" && batchPairs * opts.publishEvery > MAX_PAIRS_PER_VERSION) {
    throw new Error(
      `Cannot start the trainer as a version would hold ${batchPairs * opts.publishEvery} pairs ` +
        `(batch ${batchPairs} × publishEvery ${opts.publishEvery}): at most ${MAX_PAIRS_PER_VERSION}`,
    );
  }
  let version = current?.version ?? 0;
  const counts = { leasesLost: 0, retired: 0, held: 0 };
  const status = () =>
    records.writeStatus({
      owner: opts.owner,
      step: trainer.step,
      policy_version: version,
      ref_version: trainer.refVersion,
      leases_lost: counts.leasesLost,
      retired: counts.retired,
      held_pairs: counts.held,
      updated_at: Date.now(),
    });

  // This run is an instance of its own; taking the fence voids the leases of every earlier one (a
  // trainer killed a moment ago among them) and stops any that still runs at its next publish.
  const instance = `${opts.owner}#${crypto.randomUUID().slice(0, 8)}`;
  const fence = await records.takeFence({ owner: opts.owner, instance });
  log(`took the trainer fence as ${instance} (token ${fence.token})`);
  for (const v of await records.unsettledVersions()) {
    const settled = await store.settle(v);
    log(
      `settled v${v}: marked ${settled.trained.length} pair(s) trained (a trainer stopped between publishing and marking)`,
    );
    for (const r of settled.refused) log(`pair ${r.id} is in v${v}'s record but was not marked trained: ${r.reason}`);
  }
  const abandoned = await checkpoints.abandonUploads(fence.token);
  if (abandoned.length > 0) log(`deleted the unfinished upload(s) of version(s) ${abandoned.join(", ")}`);
  const tmpDir = join(opts.stateDir, "publish-tmp");
  await Deno.remove(tmpDir, { recursive: true }).catch(() => {});
  await Deno.mkdir(tmpDir, { recursive: true });

  // Before any training: the trainer's weights are the served version's (or the starting model's).
  const gater = opts.gate && opts.eval
    ? await createGate(opts.gate, opts.eval, trainer, policy.tokenizer, current?.version ?? 0, records, log)
    : undefined;
  let decision: GateDecision | undefined;
  let refusedInARow = 0;
  const evaluator = opts.eval
    ? await createEvaluator(records, opts.eval, {
      trainer,
      policy,
      modelDir: modelDir!,
      fresh: !current && !resume,
      log,
    })
    : undefined;
  // The served version's record is missing when the last run stopped between publishing and evaluating.
  if (evaluator && (await records.evalOf(version)) === null) {
    await evaluator.evaluate(version, trainer);
  }
  await status();
  hooks.onEvent({
    type: "ready",
    policy_version: version,
    step: trainer.step,
    base_accuracy: evaluator?.baseAccuracy ?? null,
  });

  const maxLength = Math.min(config.max_length ?? Infinity, policy.model.contextLength);
  const tok = policy.tokenizer;
  log(`training online as ${instance}: ${opts.mode}, ${config.per_device_train_batch_size} pairs a step`);
  try {
    await runOnlineTrainer({
      store,
      publisher: checkpoints,
      trainer,
      encode: (pair) => encodeStoredPair(tok, pair, maxLength),
      problem: (pair) => promptFitProblem(tok, trainingPromptText(tok, pair), maxLength),
      savePolicy: (dir) => saveModel({ ...policy, model: trainer.policy }, dir),
      tmpDir,
      owner: instance,
      fence,
      startVersion: current?.version ?? null,
      holdsFence: () => records.holdsFence(fence),
      onLeaseLost: (ids) => {
        counts.leasesLost += ids.length;
        log(`lost the train lease on ${ids.length} pair(s) (a step outlasted the lease of ${opts.leaseMs} ms)`);
      },
      onRetired: (pair, to, reason) => {
        counts.retired++;
        log(`pair ${pair.id} is ${to}: ${reason}`);
      },
      kto: opts.ktoBatch === 0 ? undefined : {
        batch: opts.ktoBatch,
        encode: (completion) => encodeCompletion(tok, completion, maxLength),
        problem: (completion) => promptFitProblem(tok, completion.promptText ?? completion.prompt ?? "", maxLength),
        onStep: async (m) => {
          // Recorded beside the DPO steps under KTO's own names, so that no chart mixes the two losses.
          const named = Object.fromEntries(
            Object.entries(m).map((
              [k, v],
            ) => [
              ["step", "skipped", "skipped_steps", "ref_version", "learning_rate", "grad_norm"].includes(k)
                ? k
                : `kto/${k}`,
              v,
            ]),
          );
          await records.recordStep(Date.now(), m.step, named);
          await status();
        },
      },
      onSettled: (v, result) => {
        for (const r of result.refused) {
          log(`pair ${r.id} is in v${v}'s record but was not marked trained: ${r.reason}`);
        }
      },
      // Written at once: the feeder leaves held pairs out of its backlog, and a stale count could stall it.
      onHolding: async (pairs) => {
        counts.held = pairs;
        await status();
      },
      mode: opts.mode,
      batchPairs,
      roundPairs: opts.roundSize,
      roundEpochs: opts.roundEpochs,
      publishEverySteps: opts.publishEvery,
      refRefreshRounds: opts.refRefreshRounds,
      maxStaleness: opts.maxStaleness,
      leaseMs: opts.leaseMs,
      pollMs: opts.pollMs,
      signal: hooks.signal,
      onStep: async (m) => {
        await records.recordStep(Date.now(), m.step, m);
        await status();
        hooks.onEvent({ type: "step", metrics: m });
      },
      gate: gater && (async () => {
        decision = await gater.decide(trainer);
        const verdict =
          `candidate ${percent(decision.candidate_accuracy)} vs the best served, v${decision.served_version}, ${
            percent(decision.served_accuracy)
          } on ${decision.prompts} gate prompts (lower bound of the difference ${decision.lower_bound.toFixed(3)}, ` +
          `margin ${decision.margin})`;
        refusedInARow = decision.promoted ? 0 : refusedInARow + 1;
        if (!decision.promoted) {
          await records.recordGate(decision);
          const reset = refusedInARow === opts.gate!.resetAfter;
          log(
            `gate: not published, ${
              reset ? "going back to the served version" : "training goes on from it"
            }: ${verdict}`,
          );
          if (reset) {
            // A new instance's fence voids this one's leases: the held pairs are claimed and trained again.
            throw new GateResetError(`the gate refused ${refusedInARow} candidate(s) in a row`);
          }
        } else log(`gate: promoted: ${verdict}`);
        return decision.promoted;
      }),
      onPublish: async (published, pairs) => {
        version = published;
        if (gater && decision) {
          await records.recordGate({ ...decision, version: published });
          await gater.promoted(published);
        }
        await saveTrainingCheckpoint(stateDir, trainer, { policy, reference });
        await writeAtomic(statePath, new TextEncoder().encode(JSON.stringify({ version: published }) + "\n"));
        // The best evaluated version is kept however many newer ones follow: it is what a rollback wants.
        const pruned = await checkpoints.prune(opts.keep, { alsoKeep: await bestEvaluated(records) });
        log(`published policy v${published} (${pairs} pairs)${pruned.length ? `; pruned ${pruned.join(", ")}` : ""}`);
        const result = evaluator ? await evaluator.evaluate(published, trainer) : null;
        await status();
        hooks.onEvent({ type: "publish", version: published, pairs, eval: result });
      },
    });
  } finally {
    policy.model.dispose();
    reference?.model.dispose();
    trainer.optimizer.dispose();
  }
}

/** The evaluated version with the best held-out accuracy (the newest among equals), as a list; [] when none. */
export async function bestEvaluated(records: TrainingRecords): Promise<number[]> {
  let best: VersionEval | undefined;
  for (const value of await records.evals(1000)) {
    const parsed = VersionEvalSchema.safeParse(value);
    if (parsed.success && parsed.data.version > 0 && (best === undefined || parsed.data.accuracy >= best.accuracy)) {
      best = parsed.data;
    }
  }
  return best === undefined ? [] : [best.version];
}

/** The promotion gate of the trainer role: the best served version's answers, kept, against each candidate's. */
interface Gate {
  /** Answers the gate prompts with the trainer's policy and decides (see `src/dpo/gate.ts`). */
  decide(trainer: DpoTrainer): Promise<GateDecision>;
  /** The candidate last decided on was published as `version`: it is the bar (kept) when the most accurate so far. */
  promoted(version: number): Promise<void>;
}

/** The gate's bar as kept in KV: which prompts it was answered on, so that a changed gate starts a new one. */
const StoredGateBarSchema = z.object({
  version: Count,
  prompts: z.string(),
  scores: z.array(z.number()),
});

async function createGate(
  spec: NonNullable<Options["gate"]>,
  evalSpec: NonNullable<Options["eval"]>,
  trainer: DpoTrainer,
  tokenizer: LoadedModel["tokenizer"],
  servedVersion: number,
  records: TrainingRecords,
  log: (m: string) => void,
): Promise<Gate> {
  // The evaluation's prompts come first in the held-out split; the gate's follow them, never the same ones.
  const task = findTask(evalSpec.task)!;
  const prompts = task.heldOut(evalSpec.prompts + spec.prompts).slice(evalSpec.prompts);
  const maxNewTokens = evalSpec.maxNewTokens ?? task.answerTokens;
  const answer = async () =>
    (await answerHeldOut(trainer.policy, tokenizer, prompts, task.score, { maxNewTokens })).scores;
  // A restarted trainer (or one going back to the served version after refusals) keeps the bar it had: the
  // best served version, which the one served now may be up to the margin below. Not across a rollback below it.
  const which = `${evalSpec.task} held-out ${evalSpec.prompts}-${
    evalSpec.prompts + spec.prompts
  }, ${maxNewTokens} tokens`;
  const kept = StoredGateBarSchema.safeParse(await records.gateBar());
  const keep = kept.success && kept.data.prompts === which && kept.data.version <= servedVersion &&
    kept.data.scores.length === prompts.length;
  const bar = keep ? new GateBar(kept.data.version, kept.data.scores) : new GateBar(servedVersion, await answer());
  const save = () => records.saveGateBar({ version: bar.version, prompts: which, scores: [...bar.scores] });
  if (!keep) await save();
  let last = bar.scores;
  log(
    `gate: ${prompts.length} prompts of its own; the bar is v${bar.version} at ${percent(mean(bar.scores))}` +
      (keep ? " (kept from before)" : " (the served version)"),
  );
  return {
    async decide(t) {
      last = await answer();
      return {
        at: Date.now(),
        step: t.step,
        served_version: bar.version,
        prompts: prompts.length,
        margin: spec.margin,
        confidence: spec.confidence,
        ...decideGate(last, bar.scores, spec),
      };
    },
    async promoted(version) {
      bar.promoted(version, last);
      if (bar.version === version) await save();
    },
  };
}

function mean(xs: readonly number[]): number {
  return xs.reduce((a, x) => a + x, 0) / xs.length;
}

interface Evaluator {
  baseAccuracy: number;
  /** Evaluates the trainer's policy as `version`, stores the result under `evalKey(version)` and logs it. */
  evaluate(version: number, trainer: DpoTrainer): Promise<VersionEval>;
}

/** Answers the held-out prompts with the base policy once; every version is then compared with those answers. */
async function createEvaluator(
  records: TrainingRecords,
  spec: NonNullable<Options["eval"]>,
  from: { trainer: DpoTrainer; policy: LoadedModel; modelDir: string; fresh: boolean; log: (m: string) => void },
): Promise<Evaluator> {
  const task = findTask(spec.task)!;
  const prompts = task.heldOut(spec.prompts);
  const maxNewTokens = spec.maxNewTokens ?? task.answerTokens;
  const answer = (model: LoadedModel["model"]) =>
    answerHeldOut(model, from.policy.tokenizer, prompts, task.score, { maxNewTokens });
  const started = performance.now();
  let base: Answers;
  if (from.fresh) base = await answer(from.trainer.policy); // nothing trained yet: the policy is the base
  else {
    const loaded = await loadModel(from.modelDir, { trainable: false });
    try {
      base = await answer(loaded.model);
    } finally {
      loaded.model.dispose();
    }
  }
  const baseSeconds = (performance.now() - started) / 1000;
  const baseEval = compareWithBase(0, base, base, baseSeconds);
  from.log(
    `base policy: held-out accuracy ${percent(baseEval.accuracy)} on ${prompts.length} ${spec.task} prompts ` +
      `(${baseSeconds.toFixed(1)} s)`,
  );
  return {
    baseAccuracy: baseEval.accuracy,
    async evaluate(version, trainer) {
      const t = performance.now();
      const result = version === 0
        ? baseEval
        : compareWithBase(version, await answer(trainer.policy), base, (performance.now() - t) / 1000);
      await records.recordEval(version, result);
      if (version > 0) {
        from.log(
          `policy v${version}: held-out accuracy ${percent(result.accuracy)} (base ${
            percent(result.base_accuracy)
          }), ` +
            `win rate vs base ${result.win_rate_vs_base.toFixed(3)} (${result.seconds.toFixed(1)} s)`,
        );
      }
      return result;
    },
  };
}

function percent(x: number): string {
  return `${(100 * x).toFixed(1)}%`;
}
