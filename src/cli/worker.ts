/**
 * `worker`: the trainer role (the `train` role of the design), the GPU worker, in a process of its own. Trains online
 * on the pairs judged in the shared KV and publishes policy versions for the servers to swap in.
 */
import { z } from "zod";
import { runTrainerRole } from "../roles/train.ts";
import { CheckpointsSpecSchema } from "../store/open.ts";
import { TASK_NAMES } from "../tasks/registry.ts";
import { configFromFlags, dpoFlagSpec, flagUsage, offlineOnlyFlagsGiven } from "./_dpo_flags.ts";
import { backendOption, log, numberOption, parseCommand, UsageError, validate } from "./common.ts";

/** Usage text of the command. */
export const WORKER_USAGE = `Usage: deno task cli worker [options]

The trainer worker: claims labeled pairs from the shared KV, trains with DPO, publishes policy versions.
After a crash (kill -9 included) and a restart, no pair is lost or trained twice.

  --kv PATH|URL             the shared KV (default data/dpo.kv)
  --checkpoints dir:PATH|kv where versions are published (default dir:data/checkpoints)
  --model DIR|hf:...        the starting policy when none is published yet (and the base --eval compares with)
  --ref DIR|hf:...          the starting reference (default: the starting policy)
  --state-dir DIR           the trainer's own checkpoint (optimizer state) (default data/trainer)
  --mode stream|rounds      a step per batch as pairs arrive, or rounds of --round-size pairs (default stream)
  --round-size K            pairs per round (default 64)
  --round-epochs E          passes over a round (default 1)
  --publish-every N         stream mode: publish every N steps (default 4)
  --ref-refresh-rounds N    rounds mode: copy the policy into the reference every N rounds (default 0: never)
  --max-staleness V         pairs sampled from a policy more than V versions old end stale, untrained (default 4)
  --kto-batch N             thumbs up/down on served answers per KTO step, trained between the DPO steps
                            (default 8; 0: thumbs are not trained; --desirable-weight, --undesirable-weight)
  --keep N                  published versions kept (default 5)
  --owner NAME              this worker's name (default trainer-<hostname>); each run adds an instance id
  --lease-ms MS             lease on claimed pairs, renewed while held (default 300000)
  --poll-ms MS              wait when there are not enough pairs (default 1000)
  --eval TASK               evaluate every published version on the task's held-out prompts against --model
                            (tasks: ${TASK_NAMES.join(", ")})
                            (accuracy, win rate); stored in KV with the version (default off)
  --eval-prompts N          held-out prompts evaluated (default 200)
  --promotion gate|always   gate (the default with --eval): publish a trained policy only when it is not worse
                            than the served one on held-out prompts of its own; always: publish every one
  --gate-prompts N          the gate's prompts, apart from the evaluation's (default 300)
  --gate-margin M           how far below the served accuracy a candidate may be and pass (default 0.02)
  --gate-confidence C       one-sided confidence of the gate's bound (default 0.95)
  --backend B               compute backend (default auto)
${flagUsage("online")}`;

const Options = z.object({
  kv: z.string().default("data/dpo.kv"),
  checkpoints: CheckpointsSpecSchema.default("dir:data/checkpoints"),
  model: z.string().optional(),
  ref: z.string().optional(),
  "state-dir": z.string().default("data/trainer"),
  mode: z.enum(["stream", "rounds"]).default("stream"),
  "round-size": numberOption((n) => n.int().positive()).default(64),
  "round-epochs": numberOption((n) => n.int().positive()).default(1),
  "publish-every": numberOption((n) => n.int().positive()).default(4),
  "ref-refresh-rounds": numberOption((n) => n.int().nonnegative()).default(0),
  "max-staleness": numberOption((n) => n.int().nonnegative()).default(4),
  "kto-batch": numberOption((n) => n.int().nonnegative().refine((k) => k !== 1, "at least 2, or 0 for off"))
    .default(8),
  keep: numberOption((n) => n.int().positive()).default(5),
  owner: z.string().default(`trainer-${Deno.hostname()}`),
  "lease-ms": numberOption((n) => n.int().positive()).default(300_000),
  "poll-ms": numberOption((n) => n.int().positive()).default(1000),
  eval: z.enum(TASK_NAMES as [string, ...string[]]).optional(),
  "eval-prompts": numberOption((n) => n.int().positive()).default(200),
  promotion: z.enum(["gate", "always"]).optional(),
  "gate-prompts": numberOption((n) => n.int().positive()).default(300),
  "gate-margin": numberOption((n) => n.min(0).max(1)).default(0.02),
  "gate-confidence": numberOption((n) => n.gt(0.5).lt(1)).default(0.95),
  backend: backendOption,
}).refine((o) => o.promotion !== "gate" || o.eval, {
  path: ["promotion"],
  message: "gate needs --eval (the task whose held-out prompts it compares on)",
}).refine((o) => !o.eval || o.model, {
  path: ["eval"],
  message: "needs --model (the base versions are compared with)",
});

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
    "kto-batch": { type: "string" },
    keep: { type: "string" },
    owner: { type: "string" },
    "lease-ms": { type: "string" },
    "poll-ms": { type: "string" },
    eval: { type: "string" },
    "eval-prompts": { type: "string" },
    promotion: { type: "string" },
    "gate-prompts": { type: "string" },
    "gate-margin": { type: "string" },
    "gate-confidence": { type: "string" },
    backend: { type: "string", default: "auto" },
    ...dpoFlagSpec(),
  });
  if (values.help) return void console.log(WORKER_USAGE);
  const offline = offlineOnlyFlagsGiven(values);
  if (offline.length > 0) {
    throw new UsageError(
      `Cannot use ${offline.join(", ")} with worker: ${offline.length > 1 ? "they are settings" : "it is a setting"} ` +
        "of offline training (the train command); the worker trains online, without a planned end or a data order",
    );
  }
  const opts = validate(Options, values);
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  try {
    await runTrainerRole({
      kv: opts.kv,
      checkpoints: opts.checkpoints,
      model: opts.model,
      ref: opts.ref,
      stateDir: opts["state-dir"],
      mode: opts.mode,
      roundSize: opts["round-size"],
      roundEpochs: opts["round-epochs"],
      publishEvery: opts["publish-every"],
      refRefreshRounds: opts["ref-refresh-rounds"],
      maxStaleness: opts["max-staleness"],
      ktoBatch: opts["kto-batch"],
      keep: opts.keep,
      owner: opts.owner,
      leaseMs: opts["lease-ms"],
      pollMs: opts["poll-ms"],
      backend: opts.backend,
      dpo: configFromFlags(values),
      eval: opts.eval ? { task: opts.eval, prompts: opts["eval-prompts"] } : undefined,
      // The gate needs an evaluator: on by default where there is one.
      gate: opts.eval && (opts.promotion ?? "gate") === "gate"
        ? { prompts: opts["gate-prompts"], margin: opts["gate-margin"], confidence: opts["gate-confidence"] }
        : undefined,
    }, {
      signal: stop.signal,
      onEvent: (e) => {
        if (e.type === "log") log(e.message);
        else if (e.type === "step") console.log(JSON.stringify(e.metrics));
      },
    });
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }
}
