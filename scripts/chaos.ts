/**
 * The long chaos run: serve, judge and worker as processes on one KV file under load, kill -9 of random
 * roles at random moments and of the worker at its publish switch, then the audit of the KV file, for each
 * checkpoint store. Prints the figures; exits 1 when anything was lost, trained twice or left stuck.
 *
 *   deno task chaos [--duration-s 150] [--kills 20] [--store both] ...
 */
import { parseArgs } from "node:util";
import { type ChaosOptions, type ChaosReport, formatReport, runChaos } from "../tests/_chaos.ts";

const USAGE = `Usage: deno task chaos [options]

Runs the three roles as processes on one KV file under load, kills them with -9 (random roles at random
moments, and the worker at the exact moment it switches the policy pointer), drains, and audits the KV
file: pairs accepted, lost, trained twice, stuck, and their final statuses. Production lease timings.

  --store dir|kv|both      checkpoint store(s) to run with, one run each (default both)
  --duration-s S           seconds of load; every kill falls inside them (default 150)
  --kills N                kills per run (default 20)
  --switch-kills N         of those, worker kills at the publish switch (default a third, rounded up)
  --rate R                 pairs offered per second, a quarter of them sampled, the rest imported (default 9)
  --drain-s S              longest wait for the pipeline to go quiet after the load (default 90)
  --seed N                 seed of the kill schedule and the load (default random; printed)
  --keep-dir               keep each run's directory (KV file, checkpoints) for a look
  --quiet                  print only the figures, not the kills as they happen
  -h, --help               this text`;

function usageError(message: string): never {
  console.error(`error: ${message}\n\n${USAGE}`);
  Deno.exit(2);
}

function parseFlags() {
  try {
    return parseArgs({
      args: Deno.args,
      strict: true,
      options: {
        store: { type: "string", default: "both" },
        "duration-s": { type: "string", default: "150" },
        kills: { type: "string", default: "20" },
        "switch-kills": { type: "string" },
        rate: { type: "string", default: "9" },
        "drain-s": { type: "string", default: "90" },
        seed: { type: "string" },
        "keep-dir": { type: "boolean", default: false },
        quiet: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    }).values;
  } catch (err) {
    usageError((err as Error).message);
  }
}

const values = parseFlags();
if (values.help) {
  console.log(USAGE);
  Deno.exit(0);
}

function number(flag: string, text: string | undefined, o: { min: number; integer?: boolean }): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isFinite(n) || n < o.min || (o.integer && !Number.isInteger(n))) {
    usageError(
      `--${flag} must be ${o.integer ? "an integer" : "a number"} of at least ${o.min}: current value is '${text}'`,
    );
  }
  return n;
}

const stores: Record<string, ChaosOptions["checkpoints"][]> = {
  dir: ["dir:ckpts"],
  kv: ["kv"],
  both: ["dir:ckpts", "kv"],
};
const chosen = stores[values.store];
if (!chosen) usageError(`--store must be dir, kv or both: current value is '${values.store}'`);
const options = {
  loadMs: number("duration-s", values["duration-s"], { min: 10 })! * 1000,
  kills: number("kills", values.kills, { min: 0, integer: true })!,
  switchKills: number("switch-kills", values["switch-kills"], { min: 0, integer: true }),
  pairsPerSecond: number("rate", values.rate, { min: 0.1 })!,
  drainMs: number("drain-s", values["drain-s"], { min: 1 })! * 1000,
  seed: number("seed", values.seed, { min: 0, integer: true }),
  keepDir: values["keep-dir"],
};

// Ctrl-C ends the run; the harness still kills every process it started.
const stop = new AbortController();
Deno.addSignalListener("SIGINT", () => stop.abort());

const reports: ChaosReport[] = [];
for (const checkpoints of chosen) {
  const started = Date.now();
  const report = await runChaos({
    ...options,
    checkpoints,
    signal: stop.signal,
    log: values.quiet
      ? undefined
      : (line) => console.error(`[${checkpoints} +${((Date.now() - started) / 1000).toFixed(0)} s] ${line}`),
  });
  reports.push(report);
  console.log(formatReport(report) + "\n");
  if (stop.signal.aborted) break;
}
const bad = reports.filter((r) =>
  r.lost + r.trainedTwice + r.stuck + r.unrecordedVersions + r.crashes.length > 0 || r.versionsAfterSwitchKill === 0
);
console.log(
  bad.length === 0
    ? `all ${reports.length} run(s) sound: nothing lost, trained twice or stuck`
    : `${bad.length} of ${reports.length} run(s) found pairs lost, trained twice or stuck (see above)`,
);
Deno.exit(bad.length === 0 ? 0 : 1);
