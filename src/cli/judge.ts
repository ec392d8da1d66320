/** `judge`: the judge role, on its own process, against the shared KV. */
import { z } from "zod";
import { ENSEMBLE_RULES } from "../judge/ensemble.ts";
import { runJudgeRole } from "../roles/judge.ts";
import { PairStore } from "../store/pairs.ts";
import { openSharedKv } from "../store/open.ts";
import { DEFAULT_TASK } from "../tasks/registry.ts";
import { buildJudge, JUDGE_USAGE } from "./_services.ts";
import { log, numberOption, parseCommand, validate } from "./common.ts";

/** Usage text of the command. */
export const JUDGE_COMMAND_USAGE = `Usage: deno task cli judge [options]

Claims pairs awaiting judgment in the shared KV, asks the judge, records verdicts. Stops on Ctrl-C.

  --kv PATH|URL             the shared KV (default data/dpo.kv)
${JUDGE_USAGE}
  --owner NAME              this worker's name in leases (default judge-<pid>)
  --concurrency N           pairs judged at once (default 4)
  --lease-ms MS             claim lifetime, and the longest back-off after a failed judgment (default 60000)
  --max-attempts N          failed judgments of a pair before it ends judge_failed (default 5)
  --poll-ms MS              wait when there is nothing to judge (default 500)`;

const Options = z.object({
  kv: z.string().default("data/dpo.kv"),
  judge: z.string().default(DEFAULT_TASK),
  "hf-model": z.string().optional(),
  "hf-endpoint": z.string().optional(),
  "webhook-url": z.string().optional(),
  "feedback-url": z.string().optional(),
  owner: z.string().default(`judge-${Deno.pid}`),
  concurrency: numberOption((n) => n.int().positive()).default(4),
  "lease-ms": numberOption((n) => n.int().positive()).default(60_000),
  "max-attempts": numberOption((n) => n.int().positive()).default(5),
  "judge-token": z.string().min(1).optional(),
  "ensemble-rule": z.enum(ENSEMBLE_RULES).default("majority"),
  "poll-ms": numberOption((n) => n.int().positive()).default(500),
});

/** Runs the command. */
export async function runJudgeCommand(args: string[]): Promise<void> {
  const values = parseCommand(args, {
    help: { type: "boolean", short: "h" },
    kv: { type: "string" },
    judge: { type: "string" },
    "hf-model": { type: "string" },
    "hf-endpoint": { type: "string" },
    "webhook-url": { type: "string" },
    "feedback-url": { type: "string" },
    owner: { type: "string" },
    concurrency: { type: "string" },
    "lease-ms": { type: "string" },
    "max-attempts": { type: "string" },
    "judge-token": { type: "string" },
    "ensemble-rule": { type: "string" },
    "poll-ms": { type: "string" },
  });
  if (values.help) return void console.log(JUDGE_COMMAND_USAGE);
  const opts = validate(Options, values);
  const judge = await buildJudge(opts);
  const kv = await openSharedKv(opts.kv);
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  log(`judge ${judge.id} (${judge.kind}) on ${opts.kv} as ${opts.owner}`);
  try {
    await runJudgeRole({
      store: new PairStore(kv),
      judge,
      owner: opts.owner,
      concurrency: opts.concurrency,
      leaseMs: opts["lease-ms"],
      maxAttempts: opts["max-attempts"],
      pollMs: opts["poll-ms"],
      signal: stop.signal,
      onVerdict: (id, choice) => log(`${id}: ${choice}`),
      onError: (id, err, final) =>
        log(`${id}: judge failed${final ? " for the last time: judge_failed" : ", will retry"} (${err.message})`),
    });
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    kv.close();
  }
}
