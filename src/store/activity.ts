/**
 * Per-minute activity counters for the dashboard: pairs created, judged (labeled or tie), expired and
 * trained, and whether the judges agreed with themselves. Each is a `sum` on `["activity", minute, kind]`
 * in the same atomic commit as the insert or transition it counts, so it costs no check and no read, and
 * reading an hour is at most 60 × 8 small entries. KV's `sum` drops a key's `expireIn` (it rewrites the
 * value without one), so old minutes are deleted by `pruneActivity` instead.
 */
import { counterValue } from "./_codec.ts";
import { commitWithinLimits } from "./_size.ts";
import { ACTIVITY_PREFIX, activityKey, activityMinuteKey } from "./keys.ts";
import { ACTIVITY_KINDS, type ActivityKind, type Pair } from "./schema.ts";

/** How long activity counters are kept. */
export const ACTIVITY_RETENTION_MS = 3 * 24 * 3600_000;
/** One minute, the counters' resolution. */
export const MINUTE_MS = 60_000;

// Deletes per prune commit (KV allows 1,000 mutations; the keys are tiny).
const PRUNE_BATCH = 500;
const ONE = 1n;

/** The start of the minute holding `ms`. */
export function minuteOf(ms: number): number {
  return Math.floor(ms / MINUTE_MS) * MINUTE_MS;
}

/** Adds the counters of a new pair to `op`. */
export function countInsert(op: Deno.AtomicOperation, pair: Pair): void {
  op.sum(activityKey(minuteOf(pair.createdAt), pair.source === "imported" ? "imported" : "created"), ONE);
}

/** Adds the counters of one transition to `op`: the status it enters, and the judge's agreement. */
export function countTransition(op: Deno.AtomicOperation, before: Pair, after: Pair): void {
  const minute = minuteOf(after.updatedAt);
  if (before.status !== after.status && after.status !== "awaiting_judgment") {
    op.sum(activityKey(minute, after.status), ONE);
  }
  const agreed = after.verdict?.agreed;
  if (before.verdict === undefined && agreed !== undefined) {
    op.sum(activityKey(minute, agreed ? "agreed" : "disagreed"), ONE);
  }
}

/** Counts per minute, oldest first: `minutes[i]` is the start of the minute that `counts[kind][i]` counts. */
export interface Activity {
  minutes: number[];
  counts: Record<ActivityKind, number[]>;
}

/** The counters of every minute from the one holding `from` to the one holding `to`, zeros included. */
export async function readActivity(kv: Deno.Kv, from: number, to: number): Promise<Activity> {
  const first = minuteOf(from);
  const last = minuteOf(to);
  const minutes: number[] = [];
  for (let m = first; m <= last; m += MINUTE_MS) minutes.push(m);
  const counts = Object.fromEntries(ACTIVITY_KINDS.map((k) => [k, minutes.map(() => 0)])) as Activity["counts"];
  const entries = kv.list({ start: activityMinuteKey(first), end: activityMinuteKey(last + MINUTE_MS) }, {
    batchSize: 500,
  });
  for await (const entry of entries) {
    const [, minute, kind] = entry.key;
    const series = counts[kind as ActivityKind];
    if (typeof minute !== "number" || series === undefined) continue; // a kind this version does not know
    const i = (minute - first) / MINUTE_MS;
    if (Number.isInteger(i) && i >= 0 && i < minutes.length) {
      series[i] = counterValue(entry.value, `activity counter ${JSON.stringify(entry.key)}`);
    }
  }
  return { minutes, counts };
}

/** Deletes the counters of minutes before `before` (ms); returns how many it deleted. */
export function pruneActivity(kv: Deno.Kv, before: number): Promise<number> {
  return deleteRange(kv, ACTIVITY_PREFIX, activityMinuteKey(before), "old activity counters");
}

/**
 * Deletes every key from `start` up to (not including) `end`, in commits of 500 deletes (KV allows 1,000
 * mutations; the keys are tiny); returns how many it deleted. Deletes only: nothing to check, a repeat is
 * harmless. Counters kept with `sum` (which drops `expireIn`) are pruned with it.
 */
export async function deleteRange(kv: Deno.Kv, start: Deno.KvKey, end: Deno.KvKey, what: string): Promise<number> {
  let deleted = 0;
  for (;;) {
    const op = kv.atomic();
    let n = 0;
    for await (const entry of kv.list({ start, end }, { limit: PRUNE_BATCH })) {
      op.delete(entry.key);
      n++;
    }
    if (n === 0) return deleted;
    await commitWithinLimits(op, what);
    deleted += n;
    if (n < PRUNE_BATCH) return deleted;
  }
}
