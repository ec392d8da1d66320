/**
 * The kills of a chaos run: kill -9 of random roles at random moments, and of the worker at the moment it
 * switches the policy pointer, caught by `PointerWatch`.
 */
import {
  CHECKPOINT_UPLOAD_PREFIX,
  checkpointVersionKey,
  leaseKey,
  policyPointerKey,
  trainedPairsPrefix,
} from "../src/store/keys.ts";
import type { KillRecord } from "./_chaos.ts";
import { type Role, type RoleProcess, ROLES } from "./_chaos_roles.ts";
import { count, shuffle, sleep } from "./_chaos_util.ts";

const TRAIN_LEASE_PREFIX = leaseKey("train", "").slice(0, 2); // ["lease", "train"]

/** A policy pointer switch, as the harness saw it. */
export interface Switch {
  version: number;
  /** ms since the epoch the harness saw it. */
  atMs: number;
  /** The pointer's own `switchedAt`. */
  switchedAt: number;
  /** How the worker was caught, when it was. */
  mode: SwitchMode;
  /** The new version's `trainedPairs`, read as it was seen (before any prune). */
  trainedPairs?: number;
}

/** How a switch kill catches the worker; see `PointerWatch`. */
export type SwitchMode = "exact" | "polled";

interface Armed {
  mode: SwitchMode;
  /** When the worker incarnation started: only uploads it began count. */
  since: number;
  signal: (signal: Deno.Signal) => void;
  /** Hands over the switch (or null on timeout); false when it was already settled. */
  settle: (s: Switch | null) => boolean;
}

/**
 * Polls the policy pointer every 10 ms, recording every switch. Armed, it stops the worker with SIGSTOP
 * at the next switch. `polled` reads the pointer back to back (about 35 µs a read here) and stops the
 * worker once it changed, by when the worker may have run on for up to a millisecond. `exact` steps the
 * worker from the moment it is seen uploading a version until the switch: it runs only during one harness
 * read at a time and the pointer is read while it is stopped, so it is caught within one such slice of its
 * switching commit, nearly always before whatever it writes next. Both are best effort: a harness stalled
 * for a few ms lets the worker run on (each kill reports whether the version's record existed when the
 * worker stopped), and one that misses a short upload catches the switch as `polled`, reported so.
 */
export class PointerWatch {
  readonly #kv: Deno.Kv;
  readonly seen: Switch[] = [];
  #armed: Armed | null = null;
  #stopped = false;

  constructor(kv: Deno.Kv) {
    this.#kv = kv;
  }

  async run(): Promise<void> {
    let last = (await this.#kv.get(policyPointerKey())).versionstamp;
    // Exact mode: the arming whose worker was seen uploading (the switching commit deletes the marker).
    let steppingFor: Armed | null = null;
    while (!this.#stopped) {
      const armed = this.#armed;
      if (armed?.mode === "exact" && steppingFor !== armed && await this.#uploading(armed.since)) steppingFor = armed;
      const stepping = armed !== null && steppingFor === armed;
      // Every path below that stopped the worker resumes it, unless it hands the switch over.
      if (stepping) armed.signal("SIGSTOP");
      const entry = await this.#kv.get<{ version: number; switchedAt: number }>(policyPointerKey());
      const changed = entry.versionstamp !== last && entry.value !== null;
      if (changed) {
        if (armed && !stepping) armed.signal("SIGSTOP");
        last = entry.versionstamp;
        const s: Switch = {
          version: entry.value!.version,
          atMs: Date.now(),
          switchedAt: entry.value!.switchedAt,
          mode: stepping ? "exact" : "polled",
        };
        this.seen.push(s);
        if (armed) {
          this.#armed = null;
          if (!armed.settle(s)) armed.signal("SIGCONT");
        }
        s.trainedPairs = (await this.#kv.get<{ trainedPairs?: number }>(checkpointVersionKey(s.version))).value
          ?.trainedPairs;
      } else if (stepping) {
        armed.signal("SIGCONT");
        await this.#kv.get(policyPointerKey()); // the slice the worker runs in: one read, about 35 µs
      }
      if (!armed) await sleep(10);
    }
  }

  /** Whether the newest upload marker is one the current worker wrote. */
  async #uploading(since: number): Promise<boolean> {
    const newest = this.#kv.list<{ startedAt?: number }>({ prefix: CHECKPOINT_UPLOAD_PREFIX }, {
      reverse: true,
      limit: 1,
    });
    for await (const e of newest) return (e.value.startedAt ?? 0) >= since;
    return false;
  }

  /**
   * Stops the worker (`signal("SIGSTOP")`) at the next pointer switch and resolves with the switch, the
   * worker left stopped; null after `timeoutMs`, the worker running.
   */
  next(o: Omit<Armed, "settle">, timeoutMs: number): Promise<Switch | null> {
    return new Promise((resolve) => {
      let settled = false;
      const settle = (s: Switch | null) => {
        if (settled) return false;
        settled = true;
        clearTimeout(timer);
        resolve(s);
        return true;
      };
      const timer = setTimeout(() => {
        if (this.#armed?.settle !== settle) return;
        this.#armed = null;
        settle(null);
        o.signal("SIGCONT");
      }, timeoutMs);
      this.#armed = { ...o, settle };
    });
  }

  stop(): void {
    this.#stopped = true;
  }
}

/** Pairs held under this incarnation's train leases at a switch whose version had no record. */
export type HeldAtSwitch = { version: number; ids: string[] }[];

/** Kills roles on a seeded schedule within the load; switch kills wait for the worker's next publish. */
export async function runKills(c: {
  roles: Record<Role, RoleProcess>;
  watch: PointerWatch;
  kv: Deno.Kv;
  rand: () => number;
  kills: number;
  switchKills: number;
  loadStart: number;
  loadEnd: number;
  log: (line: string) => void;
  signal?: AbortSignal;
}): Promise<{ kills: KillRecord[]; missed: number; held: HeldAtSwitch }> {
  const { roles, rand } = c;
  // Random kills go round the roles in shuffled rounds, so that each role dies; switch kills fall among them.
  const randomRoles: Role[] = [];
  while (randomRoles.length < c.kills - c.switchKills) randomRoles.push(...shuffle([...ROLES], rand));
  const kinds = shuffle([
    ...Array<"switch">(c.switchKills).fill("switch"),
    ...Array<"random">(c.kills - c.switchKills).fill("random"),
  ], rand);
  const switchModes = Array.from({ length: c.switchKills }, (_, i): SwitchMode => i % 2 ? "polled" : "exact");
  const span = c.loadEnd - c.loadStart - 6_000;
  const times = kinds.map(() => c.loadStart + 3_000 + rand() * span).sort((a, b) => a - b);
  const kills: KillRecord[] = [];
  const held: HeldAtSwitch = [];
  let missed = 0;
  const at = () => Date.now() - c.loadStart;
  for (const [i, kind] of kinds.entries()) {
    await sleep(times[i]! - Date.now(), c.signal);
    if (c.signal?.aborted) break;
    if (kind === "random") {
      const role = randomRoles.pop()!;
      const atMs = at();
      await roles[role].kill();
      roles[role].start();
      kills.push({ role, kind, atMs });
      c.log(`[${(atMs / 1000).toFixed(1)} s] kill -9 ${role}`);
      continue;
    }
    // Armed until the next publish, however long the worker takes to (re)start, within the load.
    const s = await c.watch.next({
      mode: switchModes.pop()!,
      since: roles.worker.startedAt,
      signal: (signal) => roles.worker.signal(signal),
    }, Math.max(c.loadEnd - Date.now(), 10_000));
    if (s === null) {
      missed++;
      c.log(`[${(at() / 1000).toFixed(1)} s] no publish to kill the worker at`);
      continue;
    }
    const atMs = at();
    const recordAtSwitch = await count(c.kv, trainedPairsPrefix(s.version), 1) > 0;
    if (!recordAtSwitch) held.push({ version: s.version, ids: await leasedSince(c.kv, roles.worker.startedAt) });
    await roles.worker.kill();
    roles.worker.start();
    const stopLatencyMs = s.atMs - s.switchedAt;
    kills.push({ role: "worker", kind, atMs, version: s.version, mode: s.mode, recordAtSwitch, stopLatencyMs });
    c.log(
      `[${(atMs / 1000).toFixed(1)} s] kill -9 worker at the switch to v${s.version} ` +
        `(${s.mode}, record ${recordAtSwitch ? "written" : "missing"})`,
    );
  }
  return { kills, missed, held };
}

async function leasedSince(kv: Deno.Kv, since: number): Promise<string[]> {
  const ids: string[] = [];
  for await (const e of kv.list<{ claimedAt?: number }>({ prefix: TRAIN_LEASE_PREFIX })) {
    if ((e.value.claimedAt ?? 0) >= since) ids.push(String(e.key[2]));
  }
  return ids;
}
