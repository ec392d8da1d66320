/**
 * The learning target, measured on a fresh `start`: does the served model reach 95% held-out accuracy within
 * 1,000 trained pairs, and does no served version fall more than 2 points below the best served before it?
 *
 * Runs `deno run -A main.ts start` with its default settings in a new temporary directory (a fresh KV file,
 * checkpoints and keys; `--port 0` so that it takes a free port, no config file, the DPO_* environment
 * variables cleared), and polls its KV every --poll-ms: the versions published (with the promotion gate a
 * version is published only when promoted, so every one is served as soon as the servers swap it in), each
 * version's held-out accuracy (the evaluation the trainer stores with it) and the pairs each version trained
 * on (the ids recorded in the commit that published it), and the gate's refusals. It stops `start` (SIGTERM,
 * as Ctrl-C does) once the trained pairs pass --pairs or --max-minutes have passed, printing a progress line
 * every --progress-s seconds (trained pairs, rate, ETA, the served version and its accuracy), then a summary:
 *
 *   - the first served version with at least --target held-out accuracy, at how many trained pairs and
 *     seconds (target: within 1,000 trained pairs);
 *   - the largest drop of a served version below the best served before it (target: at most --max-drop);
 *   - every served version: trained pairs, held-out accuracy, drop below the best before it.
 *
 *   deno task bench:target [--pairs 1000] [--max-minutes 30] [--target 0.95] [--max-drop 0.02]
 *     [--no-openblas] [--start-args='--promotion always'] [--json FILE] [--keep] [--poll-ms 2000] [--progress-s 10]
 *     [--stall-minutes 5]
 *
 * --no-openblas runs `start` without FFI (`--deny-ffi`), so the wasm backend's matmul stays in WebAssembly
 * instead of OpenBLAS, as on a machine without the library. --start-args adds flags to `start` (to measure
 * another setting against the defaults; the summary then says the settings were not the defaults; write it
 * with `=`, as flags are its value). --json
 * writes the summary and every served version as JSON. --keep leaves the temporary directory (KV, logs) in
 * place and prints where; otherwise it is deleted. A run in which nothing happens (no pair trained, no version
 * served, no gate decision) for --stall-minutes stops as stalled, with the pair counts by status. Exit code 0 when both targets are met, 1 when one is not,
 * 2 on a usage error or when `start` fails.
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { scriptArgs } from "./_args.ts";
import { largestDrop } from "./_learning_stats.ts";
import { openSharedKv } from "../src/store/open.ts";
import { PairStore } from "../src/store/pairs.ts";
import { trainedPairs } from "../src/store/training_records.ts";
import { type VersionEval, VersionEvalSchema } from "../src/dpo/evaluate.ts";
import { writeAtomic } from "../src/util/fs.ts";

const { values } = scriptArgs(import.meta.url, {
  pairs: { type: "string", default: "1000" },
  "max-minutes": { type: "string", default: "30" },
  target: { type: "string", default: "0.95" },
  "max-drop": { type: "string", default: "0.02" },
  "no-openblas": { type: "boolean", default: false },
  "start-args": { type: "string", default: "" },
  json: { type: "string" },
  keep: { type: "boolean", default: false },
  "poll-ms": { type: "string", default: "2000" },
  "progress-s": { type: "string", default: "10" },
  "stall-minutes": { type: "string", default: "5" },
});

function fail(message: string): never {
  console.error(`error: Cannot measure the learning target: ${message}`);
  Deno.exit(2);
}

const positive = (name: string, text: string | undefined): number => {
  const v = Number(text);
  if (!(Number.isFinite(v) && v > 0)) fail(`--${name} must be a positive number: current value is '${text}'`);
  return v;
};
const PAIRS = positive("pairs", values.pairs);
const MAX_MINUTES = positive("max-minutes", values["max-minutes"]);
const TARGET = positive("target", values.target);
const MAX_DROP = Number(values["max-drop"]);
const POLL_MS = positive("poll-ms", values["poll-ms"]);
const PROGRESS_S = positive("progress-s", values["progress-s"]);
const STALL_MINUTES = positive("stall-minutes", values["stall-minutes"]);
if (TARGET > 1) fail(`--target is a share of the held-out prompts, at most 1: current value is ${TARGET}`);
if (!(MAX_DROP >= 0 && MAX_DROP <= 1)) fail(`--max-drop must be in [0, 1]: current value is '${values["max-drop"]}'`);
const START_ARGS = values["start-args"]!.split(/\s+/).filter(Boolean);

const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** One served version: when, after how many trained pairs, how accurate. */
export interface ServedVersion {
  version: number;
  /** Pairs trained up to and including this version. */
  trained_pairs: number;
  accuracy: number;
  /** Seconds after `start` was launched that its evaluation was stored. */
  seconds: number;
  /** Points (a fraction) below the best version served before it; 0 when none was better. */
  drop: number;
}

/** What a run measured. */
export interface TargetSummary {
  base_accuracy: number | null;
  trained_pairs: number;
  seconds: number;
  versions: number;
  gate_refusals: number;
  first_at_target: { version: number; trained_pairs: number; seconds: number; accuracy: number } | null;
  largest_drop: number;
  largest_drop_at: number | null;
  target_met: boolean;
  drop_met: boolean;
}

/** The summary of served versions (in publishing order). */
export function summarizeServed(
  served: ServedVersion[],
  opts: { target: number; pairs: number; maxDrop: number },
): Pick<TargetSummary, "first_at_target" | "largest_drop" | "largest_drop_at" | "target_met" | "drop_met"> {
  const first = served.find((v) => v.accuracy >= opts.target - 1e-12);
  const drop = largestDrop(served.map((v) => v.accuracy));
  const at = served.find((v) => v.drop >= drop - 1e-12 && drop > 0);
  return {
    first_at_target: first
      ? { version: first.version, trained_pairs: first.trained_pairs, seconds: first.seconds, accuracy: first.accuracy }
      : null,
    largest_drop: drop,
    largest_drop_at: at?.version ?? null,
    target_met: first !== undefined && first.trained_pairs <= opts.pairs,
    drop_met: drop <= opts.maxDrop + 1e-12,
  };
}

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
const mins = (s: number) => (s < 90 ? `${s.toFixed(0)} s` : `${(s / 60).toFixed(1)} min`);

async function main(): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "learning-target-" });
  const dataDir = join(dir, "data");
  const kvPath = join(dataDir, "dpo.kv");
  const logPath = join(dir, "start.log");
  const env = Object.fromEntries(Object.entries(Deno.env.toObject()).filter(([k]) => !k.startsWith("DPO_")));
  const permissions = values["no-openblas"] ? ["-A", "--deny-ffi"] : ["-A"];
  const args = [
    "run",
    ...permissions,
    "--config",
    join(ROOT, "deno.json"),
    join(ROOT, "main.ts"),
    "start",
    "--data-dir",
    dataDir,
    "--port",
    "0",
    ...START_ARGS,
  ];
  console.error(`running: deno ${args.join(" ")}\n  in ${dir} (log: ${logPath})`);
  const log = await Deno.open(logPath, { write: true, create: true, truncate: true });
  const began = performance.now();
  const launchedAt = Date.now();
  const child = new Deno.Command(Deno.execPath(), {
    args,
    cwd: dir, // no dpo.config.json here: the defaults
    env,
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // Both streams into the one log as they come (readable while start runs), line order kept within each.
  const copy = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) {
      for (let done = 0; done < chunk.length;) done += await log.write(chunk.subarray(done));
    }
  };
  const pump = Promise.all([copy(child.stdout), copy(child.stderr)]);
  let exited: Deno.CommandStatus | null = null;
  const status = child.status.then((s) => (exited = s));
  const elapsed = () => (performance.now() - began) / 1000;

  // The KV appears once start has opened it.
  while (!exited && !(await Deno.stat(kvPath).then(() => true, () => false))) await sleep(250);
  const kv = exited ? null : await openSharedKv(kvPath);
  const store = kv ? new PairStore(kv) : null;
  const served: ServedVersion[] = [];
  const pairsOf = new Map<number, number>();
  let base: number | null = null, trained = 0, refusals = 0, lastProgress = 0, stopReason = "";
  let counts: Record<string, number> = {};
  let lastChange = 0, lastSeen = "";
  try {
    while (kv && store && !exited) {
      const evals = (await store.records.evals(10_000))
        .map((e) => VersionEvalSchema.safeParse(e))
        .filter((p) => p.success)
        .map((p) => p.data as VersionEval)
        .sort((a, b) => a.version - b.version);
      for (const e of evals) {
        if (e.version === 0) base = e.accuracy;
        if (e.version === 0 || served.some((v) => v.version === e.version)) continue;
        let cumulative = 0;
        for (let v = 1; v <= e.version; v++) {
          if (!pairsOf.has(v)) pairsOf.set(v, (await trainedPairs(kv, v)).length);
          cumulative += pairsOf.get(v)!;
        }
        const best = Math.max(-Infinity, ...served.map((v) => v.accuracy));
        served.push({
          version: e.version,
          trained_pairs: cumulative,
          accuracy: e.accuracy,
          seconds: Math.max(0, (e.at - launchedAt) / 1000),
          drop: Math.max(0, best - e.accuracy),
        });
        base ??= e.base_accuracy;
      }
      counts = await store.counts();
      trained = counts.trained ?? 0;
      refusals = (await store.records.gates(0)).refused;
      const t = elapsed();
      const seen = `${trained}/${served.length}/${refusals}`;
      if (seen !== lastSeen) [lastSeen, lastChange] = [seen, t];
      if (t - lastProgress >= PROGRESS_S) {
        lastProgress = t;
        const last = served.at(-1);
        const rate = trained / Math.max(1, t);
        const eta = rate > 0 ? (PAIRS - trained) / rate : Infinity;
        console.error(
          `${mins(t)}: ${trained}/${PAIRS} pairs trained (${(60 * rate).toFixed(0)}/min, ETA ${
            Number.isFinite(eta) ? mins(Math.max(0, eta)) : "?"
          }); serving ${last ? `v${last.version} at ${pct(last.accuracy)}` : "the base"}` +
            `${base === null ? "" : ` (base ${pct(base)})`}, best ${
              served.length ? pct(Math.max(...served.map((v) => v.accuracy))) : "-"
            }, ${refusals} gate refusal(s)`,
        );
      }
      const lastServed = served.at(-1);
      if (lastServed && lastServed.trained_pairs > PAIRS) {
        stopReason = `a served version holds more than ${PAIRS} trained pairs`;
        break;
      }
      if (served.length > 0 && t - lastChange > STALL_MINUTES * 60) {
        stopReason = `stalled: no pair trained, version served or gate decision for ${STALL_MINUTES} min ` +
          `(pairs: ${Object.entries(counts).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`).join(", ")})`;
        break;
      }
      if (t > MAX_MINUTES * 60) {
        stopReason = `--max-minutes ${MAX_MINUTES} passed`;
        break;
      }
      await sleep(POLL_MS);
    }
  } finally {
    kv?.close();
    if (!exited) {
      child.kill("SIGTERM");
      const killer = setTimeout(() => child.kill("SIGKILL"), 30_000);
      await status;
      clearTimeout(killer);
    }
    await pump.catch(() => {});
    log.close();
  }
  const wall = elapsed();
  if (!stopReason) {
    const tail = (await Deno.readTextFile(logPath)).split("\n").slice(-30).join("\n");
    console.error(`start exited on its own (${JSON.stringify(exited)}); the end of its log:\n${tail}`);
    if (!values.keep) await Deno.remove(dir, { recursive: true }).catch(() => {});
    Deno.exit(2);
  }
  const summary: TargetSummary = {
    base_accuracy: base,
    trained_pairs: trained,
    seconds: Math.round(wall),
    versions: served.length,
    gate_refusals: refusals,
    ...summarizeServed(served, { target: TARGET, pairs: PAIRS, maxDrop: MAX_DROP }),
  };
  const backend = (await Deno.readTextFile(logPath)).match(/backend: [^\n]*/)?.[0]?.split("; passed over")[0] ??
    "backend: unknown";
  const lines = [
    "",
    `stopped: ${stopReason}; ${mins(wall)}, ${trained} pairs trained, ${served.length} versions served, ` +
    `${refusals} candidate(s) refused by the gate`,
    `${backend}${values["no-openblas"] ? " (run with --deny-ffi: no OpenBLAS)" : ""}`,
    `settings: ${START_ARGS.length ? `the defaults and ${START_ARGS.join(" ")}` : "the defaults"}; ` +
    `${navigator.hardwareConcurrency} CPUs, load average ${Deno.loadavg().map((x) => x.toFixed(1)).join(" ")}`,
    "",
    "| version | trained pairs | seconds | held-out accuracy | below the best before |",
    "|---:|---:|---:|---:|---:|",
    ...served.map((v) =>
      `| v${v.version} | ${v.trained_pairs} | ${v.seconds.toFixed(0)} | ${pct(v.accuracy)} | ${
        v.drop > 0 ? `${(100 * v.drop).toFixed(1)}` : "–"
      } |`
    ),
    "",
    summary.first_at_target
      ? `first served version at ≥ ${pct(TARGET)}: v${summary.first_at_target.version} ` +
        `(${pct(summary.first_at_target.accuracy)}) after ${summary.first_at_target.trained_pairs} trained pairs, ` +
        `${summary.first_at_target.seconds.toFixed(0)} s — target ${PAIRS} pairs: ${
          summary.target_met ? "met" : "NOT met"
        }`
      : `no served version reached ${pct(TARGET)} — target: NOT met`,
    `largest drop of a served version below the best served before it: ${(100 * summary.largest_drop).toFixed(1)} ` +
    `points${summary.largest_drop_at === null ? "" : ` (v${summary.largest_drop_at})`} — target ≤ ${
      (100 * MAX_DROP).toFixed(1)
    }: ${summary.drop_met ? "met" : "NOT met"}`,
  ];
  console.log(lines.join("\n"));
  if (values.json) {
    await Deno.mkdir(dirname(values.json), { recursive: true });
    const json = {
      script: "learning_target",
      date: new Date().toISOString(),
      command: ["deno task bench:target", ...Deno.args].join(" "),
      machine: {
        cpus: navigator.hardwareConcurrency,
        loadavg: Deno.loadavg(),
        deno: Deno.version.deno,
        os: Deno.build.os,
        arch: Deno.build.arch,
      },
      backend: backend.replace(/^backend: /, ""),
      no_openblas: values["no-openblas"],
      start_args: START_ARGS,
      targets: { pairs: PAIRS, accuracy: TARGET, max_drop: MAX_DROP },
      stopped: stopReason,
      pair_counts: counts,
      summary,
      served,
    };
    await writeAtomic(values.json, new TextEncoder().encode(JSON.stringify(json, null, 2) + "\n"));
    console.log(`results: ${values.json}`);
  }
  if (values.keep) console.log(`kept: ${dir}`);
  else await Deno.remove(dir, { recursive: true }).catch(() => {});
  Deno.exit(summary.target_met && summary.drop_met ? 0 : 1);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

if (import.meta.main) await main();
