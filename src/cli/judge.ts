/** `judge`: the judge role, on its own process, against the shared KV. */
import { z } from "zod";
import { runJudgeRole } from "../roles/judge.ts";
import { PairStore } from "../store/pairs.ts";
import { openSharedKv } from "../store/open.ts";
import { buildJudge, JUDGE_OPTIONS, judgeChoice } from "./_services.ts";
import { log } from "./common.ts";
import { number, optionsUsage, parseOptions, SHARED, text, withEnv } from "./_options.ts";

const OWN_OPTIONS = {
  kv: SHARED.kv,
  ...JUDGE_OPTIONS,
  owner: text("NAME", "this judge's name in leases", z.string().min(1).default(`judge-${Deno.pid}`), {
    defaultText: "judge-<pid>",
  }),
  concurrency: number("N", "pairs judged at once", (n) => n.int().positive(), 4),
  "lease-ms": number(
    "MS",
    "claim lifetime, and the longest back-off after a failed judgment",
    (n) => n.int().positive(),
    60_000,
  ),
  "max-attempts": number("N", "failed judgments of a pair before it ends judge_failed", (n) => n.int().positive(), 5),
  "poll-ms": number("MS", "wait when there is nothing to judge", (n) => n.int().positive(), 500),
};

export const OPTIONS = withEnv(OWN_OPTIONS);

/** Usage text of the command. */
export const JUDGE_COMMAND_USAGE = `Usage: deno task cli judge [options]

Claims pairs awaiting judgment in the shared KV, asks the judge, records verdicts. Stops on Ctrl-C.

${optionsUsage(OPTIONS)}`;

/** Runs the command. */
export async function runJudgeCommand(args: string[]): Promise<void> {
  const parsed = parseOptions(args, OPTIONS);
  if (parsed.help) return void console.log(JUDGE_COMMAND_USAGE);
  const opts = parsed.values;
  const judge = await buildJudge(judgeChoice(opts, parsed.origin));
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
