/**
 * `worker`: the trainer role (the `train` role of the design), the GPU worker, in a process of its own. Trains online
 * on the pairs judged in the shared KV and publishes policy versions for the servers to swap in.
 */
import { z } from "zod";
import { GATE_RESET_AFTER } from "../dpo/gate.ts";
import { runTrainerRole } from "../roles/train.ts";
import { TASK_NAMES } from "../tasks/registry.ts";
import { configFromFlags, dpoOptions, offlineOnlyFlagsGiven } from "./_dpo_flags.ts";
import { log, UsageError } from "./common.ts";
import { number, optionsUsage, parseOptions, SHARED, text, withEnv } from "./_options.ts";

const positive = (n: z.ZodNumber) => n.int().positive();
const count = (n: z.ZodNumber) => n.int().nonnegative();

const OWN_OPTIONS = {
  kv: SHARED.kv,
  checkpoints: SHARED.checkpoints,
  model: {
    ...SHARED.model,
    help: "the starting policy when none is published yet (and the base --eval compares with)",
  },
  ref: text("DIR|hf:...", "the starting reference", z.string().min(1).optional(), {
    defaultText: "the starting policy",
  }),
  "state-dir": text("DIR", "the trainer's own checkpoint (optimizer state)", z.string().min(1).default("data/trainer")),
  mode: text(
    "stream|rounds",
    "a step per batch as pairs arrive, or rounds of --round-size pairs",
    z.enum(["stream", "rounds"]).default("stream"),
  ),
  "round-size": number("K", "pairs per round", positive, 64),
  "round-epochs": number("E", "passes over a round", positive, 1),
  "publish-every": number("N", "stream mode: publish every N steps", positive, 4),
  "ref-refresh-rounds": number(
    "N",
    "rounds mode: copy the policy into the reference every N rounds (0: never)",
    count,
    0,
  ),
  "max-staleness": number("V", "pairs sampled from a policy more than V versions old end stale, untrained", count, 4),
  "kto-batch": number(
    "N",
    "thumbs up/down on served answers per KTO step, trained between the DPO steps (0: thumbs are not trained; " +
      "--desirable-weight, --undesirable-weight)",
    (n) => n.int().nonnegative().refine((k) => k !== 1, "at least 2, or 0 for off"),
    8,
  ),
  keep: number("N", "published versions kept", positive, 5),
  owner: text(
    "NAME",
    "this worker's name; each run adds an instance id",
    z.string().min(1).default(`trainer-${Deno.hostname()}`),
    { defaultText: "trainer-<hostname>" },
  ),
  "lease-ms": number("MS", "lease on claimed pairs, renewed while held", positive, 300_000),
  "poll-ms": number("MS", "wait when there are not enough pairs", positive, 1000),
  eval: text(
    "TASK",
    `evaluate every published version on the task's held-out prompts against --model (accuracy, win rate), stored ` +
      `in KV with the version (tasks: ${TASK_NAMES.join(", ")})`,
    z.enum(TASK_NAMES as [string, ...string[]]).optional(),
    { defaultText: "off" },
  ),
  "eval-prompts": number("N", "held-out prompts evaluated", positive, 800),
  promotion: text(
    "gate|always",
    "gate: publish a trained policy only when it is not worse than the best served so far on held-out prompts of its own; " +
      "always: publish every one",
    z.enum(["gate", "always"]).optional(),
    { defaultText: "gate with --eval" },
  ),
  "gate-prompts": number("N", "the gate's prompts, apart from the evaluation's", positive, 1000),
  "gate-margin": number(
    "M",
    "how far below the best served version's accuracy a candidate may be and pass",
    (n) => n.min(0).max(1),
    0.02,
  ),
  "gate-confidence": number("C", "one-sided confidence of the gate's bound", (n) => n.gt(0.5).lt(1), 0.95),
  "gate-reset-after": number(
    "N",
    "after N candidates refused in a row, train again from the served version, the refused ones' pairs included (0: never)",
    count,
    GATE_RESET_AFTER,
  ),
  backend: SHARED.backend,
  ...dpoOptions("online"),
};

export const OPTIONS = withEnv(OWN_OPTIONS);

/** Usage text of the command. */
export const WORKER_USAGE = `Usage: deno task cli worker [options]

The trainer worker: claims labeled pairs from the shared KV, trains with DPO, publishes policy versions.
After a crash (kill -9 included) and a restart, no pair is lost or trained twice.

${optionsUsage(OPTIONS)}`;

/** Runs the command until SIGINT/SIGTERM. */
export async function runWorker(args: string[]): Promise<void> {
  const parsed = parseOptions(args, OPTIONS);
  if (parsed.help) return void console.log(WORKER_USAGE);
  const opts = parsed.values;
  const offline = offlineOnlyFlagsGiven(opts);
  if (offline.length > 0) {
    throw new UsageError(
      `Cannot use ${offline.join(", ")} with worker: ${offline.length > 1 ? "they are settings" : "it is a setting"} ` +
        "of offline training (the train command); the worker trains online, without a planned end or a data order",
    );
  }
  if (opts.promotion === "gate" && !opts.eval) {
    throw new UsageError("--promotion: gate needs --eval (the task whose held-out prompts it compares on)");
  }
  if (opts.eval && !opts.model) throw new UsageError("--eval: needs --model (the base versions are compared with)");
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
      dpo: configFromFlags(opts, parsed.origin),
      eval: opts.eval ? { task: opts.eval, prompts: opts["eval-prompts"] } : undefined,
      // The gate needs an evaluator: on by default where there is one.
      gate: opts.eval && (opts.promotion ?? "gate") === "gate"
        ? {
          prompts: opts["gate-prompts"],
          margin: opts["gate-margin"],
          confidence: opts["gate-confidence"],
          resetAfter: opts["gate-reset-after"],
        }
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
