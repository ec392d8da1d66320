/**
 * The chaos harness: the three roles (`serve`, `judge`, `worker`) as processes on one KV file under steady
 * load, kill -9 of a random role at random moments and of the trainer at the exact moment it switches the
 * policy pointer, then an audit of the KV file: every accepted pair exists, none is trained into two
 * versions, none is left stuck. `tests/chaos_test.ts` runs it short, `scripts/chaos.ts` long.
 *
 * Production lease timings throughout (no `--lease-ms`): a dead role's leases outlive its restart by
 * minutes, so a restart has to recover without waiting for them.
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { trainerStatusKey } from "../src/store/keys.ts";
import { audit, drain } from "./_chaos_audit.ts";
import { PointerWatch, runKills, type SwitchMode } from "./_chaos_kills.ts";
import { Load } from "./_chaos_load.ts";
import { type Role, RoleProcess, ROLES } from "./_chaos_roles.ts";
import { mulberry32 } from "./_chaos_util.ts";

// What the runner and the test need besides `runChaos` and its types.
export { formatReport } from "./_chaos_audit.ts";
export { type Role, ROLES, type SwitchMode };

const MODEL = fileURLToPath(new URL("fixtures/gpt2_tiny", import.meta.url));
/** Pairs a training step takes: small, and a version published after every step, so switches come often. */
const WORKER_BATCH = 2;

/** Options of `runChaos`. */
export interface ChaosOptions {
  /** Where the worker publishes versions and the server loads them from. */
  checkpoints: "dir:ckpts" | "kv";
  /** How long the load runs, ms; every kill falls inside it. Default 45,000. */
  loadMs?: number;
  /** Kills in all, random ones and ones at the switch. Default 12. */
  kills?: number;
  /** Of `kills`, the worker kills at its publish switch. Default a third of `kills`, rounded up. */
  switchKills?: number;
  /** Pairs offered per second: a quarter sampled through `/v1/pairs`, the rest imported. Default 7. */
  pairsPerSecond?: number;
  /** Longest wait after the load for no pair to be in flight, ms. Default 75,000 (the judge's lease is 60 s). */
  drainMs?: number;
  /** How long no pair may be labeled or awaiting judgment for the drain to end, ms. Default 3,000. */
  quietMs?: number;
  /** Seed of the kill schedule and the load. Default random (the report has it). */
  seed?: number;
  /** Keep the run's directory (KV file, checkpoints) instead of deleting it. Default false. */
  keepDir?: boolean;
  /** Progress lines: phases and kills as they happen. Default none. */
  log?: (line: string) => void;
  /** Ends the run early; the processes are killed and the directory removed all the same. */
  signal?: AbortSignal;
}

/** One kill -9. */
export interface KillRecord {
  role: Role;
  kind: "random" | "switch";
  /** ms since the load started. */
  atMs: number;
  /** Switch kills: the version the pointer had just switched to. */
  version?: number;
  /** Switch kills: how the worker was caught. */
  mode?: SwitchMode;
  /** Switch kills: whether the version's `trained_pairs` record existed when the worker was stopped. */
  recordAtSwitch?: boolean;
  /** Switch kills: ms from the pointer's `switchedAt` to the SIGSTOP. */
  stopLatencyMs?: number;
}

/** What a run found. The first five rows are the ones that must be 0. */
export interface ChaosReport {
  checkpoints: ChaosOptions["checkpoints"];
  seed: number;
  /** The run's directory, when kept. */
  dir?: string;
  /** Accepted ids without a pair record. */
  lost: number;
  /**
   * Pairs trained into two versions: `trainedTwiceDetail` counts the three ways this shows (a pair may show
   * more than one).
   */
  trainedTwice: number;
  trainedTwiceDetail: {
    /** Ids in two versions' `trained_pairs` records. */
    inTwoRecords: number;
    /** Pairs trained into a version whose record does not list them. */
    notListed: number;
    /**
     * Pairs the worker held when it was stopped at the switch to a version that has no record, and that
     * were later trained into another version: in two versions' weights, though listed once. Inferred
     * from the train leases the stopped worker had taken since it started.
     */
    retrainedAfterUnrecordedSwitch: number;
  };
  /** Pairs left labeled or awaiting judgment, or listed in a version's record but not trained. */
  stuck: number;
  /** `stuck` by kind (a pair may be of two kinds). */
  stuckDetail: { labeled: number; awaitingJudgment: number; listedNotTrained: number };
  /** Published versions holding pairs (by their record's `trainedPairs`) with no `trained_pairs` record. */
  unrecordedVersions: number;
  /** Roles that exited without being killed. */
  crashes: { role: Role; atMs: number; code: number; signal: string | null }[];
  accepted: number;
  acceptedSampled: number;
  acceptedImported: number;
  /** Ids returned for two different idempotency keys (should never happen). */
  duplicateAcceptances: number;
  /** Pair records in the KV file, accepted or not (a dropped request may have created one). */
  pairRecords: number;
  /** Pair records by status, all pairs. */
  statuses: Record<string, number>;
  requests: { sent: number; retries: number; dropped: number; refused: number; refusals: string[] };
  kills: KillRecord[];
  /** Switch kills planned that saw no publish in time. */
  missedSwitchKills: number;
  /** Versions the pointer switched to during the run. */
  versionsPublished: number;
  /** Of those, switched to after the first switch kill. */
  versionsAfterSwitchKill: number;
  drained: boolean;
  /** Whether the run was cut short (Ctrl-C, SIGTERM or `signal`): the figures cover what ran. */
  interrupted: boolean;
  loadSeconds: number;
  drainSeconds: number;
  totalSeconds: number;
  /** A few ids of each violation, for a look at their records. */
  examples: { lost: string[]; trainedTwice: string[]; stuck: string[] };
  /** The last lines of each role's output (all incarnations). */
  logTails: Record<Role, string>;
}

/** Runs the roles under load and kills, drains, stops them and audits the KV file. */
export async function runChaos(options: ChaosOptions): Promise<ChaosReport> {
  const o = {
    checkpoints: options.checkpoints,
    loadMs: options.loadMs ?? 45_000,
    kills: options.kills ?? 12,
    pairsPerSecond: options.pairsPerSecond ?? 7,
    drainMs: options.drainMs ?? 75_000,
    quietMs: options.quietMs ?? 3_000,
    seed: options.seed ?? Math.floor(Math.random() * 2 ** 31),
    keepDir: options.keepDir ?? false,
    log: options.log ?? (() => {}),
    signal: options.signal,
  };
  const switchKills = Math.min(o.kills, options.switchKills ?? Math.ceil(o.kills / 3));
  const rand = mulberry32(o.seed);
  const started = Date.now();
  const runId = `${o.seed.toString(36)}${started.toString(36)}`;
  const apiKeys = Array.from({ length: 4 }, (_, i) => `chaos-client-${i}-${runId}`);
  const crashes: ChaosReport["crashes"] = [];
  let loadStart = started;
  // Nothing below throws before the `try` whose `finally` removes the directory and the listeners.
  const dir = await Deno.makeTempDir({ prefix: "chaos_" });
  // Ctrl-C (or SIGTERM) ends the run the way `signal` does: the roles are killed, not orphaned.
  const abort = new AbortController();
  const onInterrupt = () => abort.abort();
  o.signal?.addEventListener("abort", onInterrupt, { once: true });
  const interrupts: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  for (const sig of interrupts) Deno.addSignalListener(sig, onInterrupt);
  const signal = abort.signal;
  const spawn = (role: Role, args: string[]) =>
    new RoleProcess(role, { dir, args, env: { DPO_API_KEYS: apiKeys.join(",") } }, (code, signal, output) => {
      crashes.push({ role, atMs: Date.now() - loadStart, code, signal });
      o.log(`${role} exited by itself (code ${code}, signal ${signal}); restarting it. Its last output:\n${output}`);
    });
  const model = ["--kv", "dpo.kv", "--checkpoints", o.checkpoints, "--model", MODEL, "--backend", "wasm"];
  const roles: Record<Role, RoleProcess> = {
    serve: spawn("serve", ["serve", ...model, "--port", "0"]),
    judge: spawn("judge", ["judge", "--kv", "dpo.kv", "--judge", "arithmetic"]),
    worker: spawn("worker", ["worker", ...model, "--batch-size", String(WORKER_BATCH), "--publish-every", "1"]),
  };
  let kv: Deno.Kv | undefined;
  let watch: PointerWatch | undefined;
  try {
    for (const r of ROLES) roles[r].start();
    kv = await Deno.openKv(join(dir, "dpo.kv"));
    const workerStatusSince = async (t: number) => {
      const v = (await kv!.get<{ updated_at?: number }>(trainerStatusKey())).value;
      return (v?.updated_at ?? 0) >= t;
    };
    roles.worker.ready = (p) => /training online/.test(p.head) || workerStatusSince(p.startedAt);
    await Promise.all(ROLES.map((r) => roles[r].waitReady(180_000, signal)));
    o.log(`roles up in ${((Date.now() - started) / 1000).toFixed(1)} s (${o.checkpoints}, seed ${o.seed}, ${dir})`);

    watch = new PointerWatch(kv);
    const watching = watch.run();
    loadStart = Date.now();
    const loadEnd = loadStart + o.loadMs;
    const load = new Load({ rand, apiKeys, runId, loadEnd, rate: o.pairsPerSecond, url: () => roles.serve.url });
    const loading = load.run(signal);
    const { kills, missed, held } = await runKills({
      roles,
      watch,
      kv,
      rand,
      kills: o.kills,
      switchKills,
      loadStart,
      loadEnd,
      log: o.log,
      signal,
    });
    await loading;
    const loadSeconds = (Date.now() - loadStart) / 1000;
    o.log(`load over: ${load.accepted.size} pairs accepted; draining`);

    const drainStart = Date.now();
    const drained = await drain(kv, {
      timeoutMs: o.drainMs,
      quietMs: o.quietMs,
      batchSize: WORKER_BATCH,
      topUp: (n, seq) => {
        o.log(`topping the trainer's last batch up with ${n} pair(s)`);
        return load.topUp(n, seq, signal);
      },
      signal,
    });
    const drainSeconds = (Date.now() - drainStart) / 1000;
    o.log(drained ? `drained in ${drainSeconds.toFixed(1)} s` : `not drained after ${drainSeconds.toFixed(1)} s`);
    await Promise.all(ROLES.map((r) => roles[r].shutdown(10_000)));
    watch.stop();
    await watching;

    const found = await audit(kv, load, watch.seen, held);
    const firstSwitch = kills.find((k) => k.kind === "switch");
    return {
      checkpoints: o.checkpoints,
      seed: o.seed,
      ...(o.keepDir ? { dir } : {}),
      ...found,
      crashes,
      kills,
      missedSwitchKills: missed,
      versionsPublished: watch.seen.length,
      versionsAfterSwitchKill: firstSwitch ? watch.seen.filter((s) => s.atMs - loadStart > firstSwitch.atMs).length : 0,
      requests: { ...load.requests, refusals: load.refusals.slice(0, 5) },
      drained,
      interrupted: signal.aborted,
      loadSeconds,
      drainSeconds,
      totalSeconds: (Date.now() - started) / 1000,
      logTails: { serve: roles.serve.tail, judge: roles.judge.tail, worker: roles.worker.tail },
    };
  } finally {
    watch?.stop();
    // Whatever happened, no process outlives the run (kill -9 reaches a stopped process too).
    await Promise.all(ROLES.map((r) => roles[r].shutdown(0)));
    kv?.close();
    for (const sig of interrupts) Deno.removeSignalListener(sig, onInterrupt);
    o.signal?.removeEventListener("abort", onInterrupt);
    if (!o.keepDir) await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
