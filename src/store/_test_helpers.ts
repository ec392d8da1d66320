/** Test helpers of the store: a fake clock, pair inputs and a full scan that checks every index. */
import assert from "node:assert/strict";
import { type Pair, PAIR_STATUSES, type PairStatus, PairStore } from "./pairs.ts";
import type { CreatePairInput } from "./inputs.ts";
import { PAIR_EXPIRY_PREFIX, PAIR_PREFIX, PAIR_STATUS_INDEX_PREFIX, PAIR_TIME_PREFIX, pairKey } from "./keys.ts";
import { addTrainedPairs } from "./training_records.ts";

/** A clock the test moves by hand. */
export class FakeClock {
  /** The current time (ms). */
  t: number;
  /** Starts at `t` (default 2025-01-01T00:00:00Z). */
  constructor(t = Date.UTC(2025, 0, 1)) {
    this.t = t;
  }
  /** The store's `now` option. */
  now = (): number => this.t;
  /** Moves the clock forward. */
  advance(ms: number): void {
    this.t += ms;
  }
}

/** A store on a fresh in-memory KV with a fake clock; close `kv` (or declare it with `using`). */
export async function memoryStore(): Promise<{ kv: Deno.Kv; store: PairStore; clock: FakeClock }> {
  const kv = await Deno.openKv(":memory:");
  const clock = new FakeClock();
  return { kv, store: new PairStore(kv, { now: clock.now }), clock };
}

/** A valid `create` input with three responses, changed by `overrides`. */
export function sampledInput(overrides: Partial<CreatePairInput> = {}): CreatePairInput {
  return {
    prompt: "What is 2+2?",
    promptText: "user: What is 2+2?\nassistant:",
    responses: [" 4", " 5", " four"],
    policyVersion: 3,
    ...overrides,
  };
}

/** Records that `version` holds `ids`, as the commit that publishes a version does. */
export async function recordVersion(kv: Deno.Kv, version: number, ids: readonly string[]): Promise<void> {
  const op = kv.atomic();
  addTrainedPairs(op, version, ids);
  assert.ok((await op.commit()).ok);
}

/** A promise-based barrier: `wait()` resolves once `n` callers are waiting. */
export function barrier(n: number): { wait: () => Promise<void> } {
  let arrived = 0;
  const { promise, resolve } = Promise.withResolvers<void>();
  return {
    wait() {
      if (++arrived === n) resolve();
      return promise;
    },
  };
}

/**
 * Reads every pair and every index entry and checks they agree: each pair has exactly one status
 * index entry (its status), one time index entry, and an expiry entry exactly while it awaits judgment
 * with an `expiresAt`. Returns the number of pairs per status from that full scan.
 */
export async function scanAndCheckIndexes(kv: Deno.Kv): Promise<Record<PairStatus, number>> {
  const counts = Object.fromEntries(PAIR_STATUSES.map((s) => [s, 0])) as Record<PairStatus, number>;
  const pairs = new Map<string, { status: PairStatus; createdAt: number; expiresAt?: number }>();
  for await (
    const e of kv.list<{ id: string; status: PairStatus; createdAt: number; expiresAt?: number }>({
      prefix: PAIR_PREFIX,
    })
  ) {
    pairs.set(e.value.id, e.value);
    counts[e.value.status]++;
  }
  const byStatus = new Map<string, string>();
  for await (const e of kv.list({ prefix: PAIR_STATUS_INDEX_PREFIX })) {
    const [, status, id] = e.key as [string, PairStatus, string];
    assert.ok(!byStatus.has(id), `pair ${id} has two status index entries`);
    byStatus.set(id, status);
    assert.equal(pairs.get(id)?.status, status, `status index entry of ${id} says ${status}`);
  }
  assert.equal(byStatus.size, pairs.size, "every pair has a status index entry");
  let timeEntries = 0;
  for await (const e of kv.list({ prefix: PAIR_TIME_PREFIX })) {
    const [, createdAt, id] = e.key as [string, number, string];
    assert.equal(pairs.get(id)?.createdAt, createdAt);
    timeEntries++;
  }
  assert.equal(timeEntries, pairs.size, "every pair has one time index entry");
  const expiring = [...pairs.values()].filter((p) => p.status === "awaiting_judgment" && p.expiresAt !== undefined);
  let expiryEntries = 0;
  for await (const e of kv.list({ prefix: PAIR_EXPIRY_PREFIX })) {
    const [, expiresAt, id] = e.key as [string, number, string];
    const pair = pairs.get(id);
    assert.equal(pair?.status, "awaiting_judgment", `expiry index entry of ${id} outlived its wait`);
    assert.equal(pair?.expiresAt, expiresAt);
    expiryEntries++;
  }
  assert.equal(expiryEntries, expiring.length);
  return counts;
}

/** Every key in the KV, for "nothing was written" checks. */
export async function allKeys(kv: Deno.Kv): Promise<Deno.KvKey[]> {
  const keys: Deno.KvKey[] = [];
  for await (const e of kv.list({ prefix: [] })) keys.push(e.key);
  return keys;
}

/** A small seeded PRNG (mulberry32), so a property test replays exactly. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * A pair awaiting judgment as stores before equal candidates were refused could hold one: candidates
 * [0, 1] name two equal texts. Written by hand past `create`, which now refuses it.
 */
export async function legacyEqualCandidates(kv: Deno.Kv, store: PairStore, responses: string[]): Promise<Pair> {
  const { pair } = await store.create(
    sampledInput({ responses: [...responses, "a different text"], candidates: [0, responses.length] }),
  );
  const legacy: Pair = { ...pair, responses, candidates: [0, 1] };
  await kv.set(pairKey(pair.id), legacy);
  return legacy;
}
