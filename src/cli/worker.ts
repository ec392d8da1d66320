/**
 * `worker`: the trainer role (DESIGN.md's `train`), the GPU worker. Trains online on the pairs judged
 * in the shared KV and publishes policy versions for the servers to swap in.
 */
import { join } from "node:path";
import { z } from "zod";
import { describeBackend, initBackend } from "../model/backend.ts";
import { type LoadedModel, loadModel, saveModel } from "../model/checkpoint.ts";
import { resolveModel } from "../model/hub.ts";
import { createTrainer, loadTrainingCheckpoint, saveTrainingCheckpoint } from "../dpo/checkpoint.ts";
import { parseDpoConfig } from "../dpo/config.ts";
import { reconcile, runOnlineTrainer } from "../dpo/online.ts";
import { trainedPairsKey, trainedPairsPrefix, trainMetricsKey } from "../store/keys.ts";
import { PairStore } from "../store/pairs.ts";
import { commitWithinLimits } from "../store/_size.ts";
import { writeAtomic } from "../util/fs.ts";
import { openSharedKv } from "./_services.ts";
import { configFromFlags, dpoFlagSpec, flagUsage } from "./_dpo_flags.ts";
import { backendOption, log, numberOption, parseCommand, validate } from "./common.ts";
import { openCheckpoints } from "./serve.ts";

/** Usage text of the command. */
export const WORKER_USAGE = `Usage: deno task cli worker [options]

The trainer worker: claims labeled pairs from the shared KV, trains with DPO, publishes policy versions.
After a crash (kill -9 included) and a restart, no pair is lost or trained twice.

  --kv PATH|URL             the shared KV (default data/dpo.kv)
  --checkpoints dir:PATH|kv where versions are published (default dir:data/checkpoints)
  --model DIR|hf:...        the starting policy when none is published yet
  --ref DIR|hf:...          the starting reference (default: the starting policy)
  --state-dir DIR           the trainer's own checkpoint (optimizer state) (default data/trainer)
  --mode stream|rounds      a step per batch as pairs arrive, or rounds of --round-size pairs (default stream)
  --round-size K            pairs per round (default 64)
  --round-epochs E          passes over a round (default 1)
  --publish-every N         stream mode: publish every N steps (default 4)
  --ref-refresh-rounds N    rounds mode: copy the policy into the reference every N rounds (default 0: never)
  --max-staleness V         skip pairs sampled from a policy more than V versions old (default 4)
  --keep N                  published versions kept (default 5)
  --owner NAME              this worker's name in leases (default trainer-<hostname>)
  --lease-ms MS             lease on claimed pairs, renewed while held (default 300000)
  --poll-ms MS              wait when there are not enough pairs (default 1000)
  --backend B               compute backend (default auto)
${flagUsage()}`;

const Options = z.object({
  kv: z.string().default("data/dpo.kv"),
  checkpoints: z.string().regex(/^(dir:.+|kv)$/, "expected dir:PATH or kv").default("dir:data/checkpoints"),
  model: z.string().optional(),
  ref: z.string().optional(),
  "state-dir": z.string().default("data/trainer"),
  mode: z.enum(["stream", "rounds"]).default("stream"),
  "round-size": numberOption((n) => n.int().positive()).default(64),
  "round-epochs": numberOption((n) => n.int().positive()).default(1),
  "publish-every": numberOption((n) => n.int().positive()).default(4),
  "ref-refresh-rounds": numberOption((n) => n.int().nonnegative()).default(0),
  "max-staleness": numberOption((n) => n.int().nonnegative()).default(4),
  keep: numberOption((n) => n.int().positive()).default(5),
  owner: z.string().default(`trainer-${Deno.hostname()}`),
  "lease-ms": numberOption((n) => n.int().positive()).default(300_000),
  "poll-ms": numberOption((n) => n.int().positive()).default(1000),
  backend: backendOption,
});

const PublishedState = z.object({ version: z.number().int().positive() });

/** Runs the command until SIGINT/SIGTERM. */
export async function runWorker(args: string[]): Promise<void> {
  const values = parseCommand(args, {
    help: { type: "boolean", short: "h" },
    kv: { type: "string" },
    checkpoints: { type: "string" },
    model: { type: "string" },
    ref: { type: "string" },
    "state-dir": { type: "string" },
    mode: { type: "string" },
    "round-size": { type: "string" },
    "round-epochs": { type: "string" },
    "publish-every": { type: "string" },
    "ref-refresh-rounds": { type: "string" },
    "max-staleness": { type: "string" },
    keep: { type: "string" },
    owner: { type: "string" },
    "lease-ms": { type: "string" },
    "poll-ms": { type: "string" },
    backend: { type: "string", default: "auto" },
    ...dpoFlagSpec(),
  });
  if (values.help) return void console.log(WORKER_USAGE);
  const opts = validate(Options, values);
  log(describeBackend(await initBackend(opts.backend)));
  const kv = await openSharedKv(opts.kv);
  const store = new PairStore(kv);
  const checkpoints = openCheckpoints(kv, opts.checkpoints);
  const current = await checkpoints.current();
  const stateDir = join(opts["state-dir"], "checkpoint");
  const statePath = join(opts["state-dir"], "published.json");

  // Resume the trainer's own checkpoint when it belongs to the version being served; otherwise start
  // from the served version (or --model) with a fresh optimizer.
  const saved = await Deno.readTextFile(statePath).then((t) => PublishedState.parse(JSON.parse(t)), () => null);
  let policy: LoadedModel, reference: LoadedModel;
  let resume: Awaited<ReturnType<typeof loadTrainingCheckpoint>> | undefined;
  if (current && saved?.version === current.version) {
    resume = await loadTrainingCheckpoint(stateDir);
    ({ policy, reference } = resume);
    log(`resuming the trainer at step ${resume.trainerState.step} (policy v${current.version})`);
  } else {
    const dir = current
      ? await checkpoints.materialize(current.version, join(opts["state-dir"], `start-v${current.version}`))
      : opts.model
      ? await resolveModel(opts.model)
      : undefined;
    if (!dir) throw new Error("Cannot start the trainer: no policy version is published yet and no --model was given");
    policy = await loadModel(dir);
    reference = await loadModel(opts.ref ? await resolveModel(opts.ref) : dir, { trainable: false });
    log(`starting from ${current ? `policy v${current.version}` : dir}`);
  }
  const config = parseDpoConfig({
    ...(resume?.config ?? {}),
    lr_scheduler_type: "constant",
    ...configFromFlags(values),
  }, "the training settings");
  const trainer = createTrainer(policy, reference, config, resume);
  if (current) {
    const ids: string[] = [];
    for await (const e of kv.list<string[]>({ prefix: trainedPairsPrefix(current.version) })) ids.push(...e.value);
    const fixed = await reconcile({ store, owner: opts.owner, leaseMs: opts["lease-ms"] }, current.version, ids);
    if (fixed > 0) log(`marked ${fixed} pair(s) trained into v${current.version} (the last run stopped in between)`);
  }
  const maxLength = Math.min(config.max_length ?? Infinity, policy.model.config.n_positions);
  const tok = policy.tokenizer;
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  log(`training online as ${opts.owner}: ${opts.mode}, ${config.per_device_train_batch_size} pairs a step`);
  try {
    await runOnlineTrainer({
      store,
      publisher: checkpoints,
      trainer,
      encode: (pair) => {
        const promptIds = tok.encode(pair.promptText);
        // Completions are cut to fit the context (they were generated within it, imports may not be).
        const room = Math.max(1, maxLength - Math.max(promptIds.length, 1) - 1);
        return {
          promptIds,
          chosenIds: tok.encode(pair.responses[pair.chosen!]!).slice(0, room),
          rejectedIds: tok.encode(pair.responses[pair.rejected!]!).slice(0, room),
        };
      },
      savePolicy: (dir) => saveModel({ ...policy, model: trainer.policy }, dir),
      recordTrainedPairs: async (version, ids) => {
        for (let i = 0; i * 1000 < ids.length; i++) {
          const chunk = ids.slice(i * 1000, (i + 1) * 1000);
          await commitWithinLimits(kv.atomic().set(trainedPairsKey(version, i), chunk), `v${version}'s pair ids`);
        }
      },
      owner: opts.owner,
      mode: opts.mode,
      batchPairs: config.per_device_train_batch_size * config.gradient_accumulation_steps,
      roundPairs: opts["round-size"],
      roundEpochs: opts["round-epochs"],
      publishEverySteps: opts["publish-every"],
      refRefreshRounds: opts["ref-refresh-rounds"],
      maxStaleness: opts["max-staleness"],
      leaseMs: opts["lease-ms"],
      pollMs: opts["poll-ms"],
      signal: stop.signal,
      onStep: async (m) => {
        const record = kv.atomic().set(trainMetricsKey(Date.now(), m.step), m, { expireIn: 30 * 24 * 3600_000 });
        await commitWithinLimits(record, `step ${m.step}'s metrics`);
        console.log(JSON.stringify(m));
      },
      onPublish: async (version, pairs) => {
        await saveTrainingCheckpoint(stateDir, trainer, { policy, reference });
        await writeAtomic(statePath, new TextEncoder().encode(JSON.stringify({ version }) + "\n"));
        const pruned = await checkpoints.prune(opts.keep);
        log(`published policy v${version} (${pairs} pairs)${pruned.length ? `; pruned ${pruned.join(", ")}` : ""}`);
      },
    });
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    kv.close();
  }
}
