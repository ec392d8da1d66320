/**
 * Every per-minute counter the store keeps (activity and judges, the last `ACTIVITY_RETENTION_MS`), for the
 * dashboard's time axis. The store reads at most a day of minutes at once, so this reads a day at a time.
 *
 * Reading 3 days of a busy run is some 100,000 counters (about a second here), and the dashboard asks every
 * 5 s; so the minutes that can no longer change are kept in memory, per store, and each later read asks KV
 * only for the minutes since. A minute is settled `SETTLED_MS` after it ends: a counter is committed with the
 * transition it counts, in the writer's current minute, and commits land within seconds. A counter written
 * later into an older minute (a writer whose clock is minutes behind) is missed by this server process.
 */
import {
  type Activity,
  ACTIVITY_KINDS,
  ACTIVITY_RETENTION_MS,
  JUDGE_USAGE_METRICS,
  type JudgeActivity,
  MINUTE_MS,
  minuteOf,
  type PairStore,
} from "../store/pairs.ts";

/** Counters per minute: `activity[kind][i]` and `judges[id][metric][i]` count the i-th minute. */
export interface Minutes {
  /** How many minutes every series holds. */
  length: number;
  activity: Activity["counts"];
  judges: JudgeActivity["judges"];
}

// Minutes that ended this long ago are settled (see the module comment).
const SETTLED_MS = 5 * MINUTE_MS;
// The store reads at most a day of minutes at once (`PairStore.activity`).
const DAY_MS = 24 * 60 * MINUTE_MS;
// Judges kept, as `readJudgeActivity` caps one read.
const MAX_JUDGES = 100;

/** The settled minutes read so far from each store: `minutes` counts the minutes from `from` on. */
const settled = new WeakMap<PairStore, { from: number; minutes: Minutes }>();

/** Every counter kept at `now`, from the minute `from` (`now` − the retention) to the current one. */
export async function readKeptMinutes(store: PairStore, now: number): Promise<{ from: number; minutes: Minutes }> {
  const from = minuteOf(now - ACTIVITY_RETENTION_MS);
  const last = minuteOf(now);
  const length = (last - from) / MINUTE_MS + 1;
  const minutes = emptyMinutes(length);
  let freshFrom = from;
  const cached = settled.get(store);
  const cachedEnd = cached === undefined ? -Infinity : cached.from + cached.minutes.length * MINUTE_MS;
  if (cached !== undefined && cached.from <= from && cachedEnd > from && cachedEnd <= last) {
    putMinutes(minutes, 0, sliceMinutes(cached.minutes, (from - cached.from) / MINUTE_MS, cached.minutes.length));
    freshFrom = cachedEnd;
  }
  for (let start = freshFrom; start <= last; start += DAY_MS) {
    const end = Math.min(start + DAY_MS - MINUTE_MS, last);
    const [day, judges] = await Promise.all([
      store.activity({ from: start, to: end }),
      store.judgeActivity({ from: start, to: end }),
    ]);
    const dayMinutes = { length: day.minutes.length, activity: day.counts, judges: judges.judges };
    putMinutes(minutes, (start - from) / MINUTE_MS, dayMinutes);
  }
  const settledEnd = Math.max(from, minuteOf(now - SETTLED_MS));
  settled.set(store, { from, minutes: sliceMinutes(minutes, 0, (settledEnd - from) / MINUTE_MS) });
  return { from, minutes };
}

/** The minutes `start` (included) to `end` (excluded) of `minutes`. */
export function sliceMinutes(minutes: Minutes, start: number, end: number): Minutes {
  const cut = (values: number[]) => values.slice(start, end);
  return {
    length: Math.max(0, Math.min(end, minutes.length) - start),
    activity: mapValues(minutes.activity, cut),
    judges: mapValues(minutes.judges, (series) => mapValues(series, cut)),
  };
}

function emptyMinutes(length: number): Minutes {
  return { length, activity: zeros(ACTIVITY_KINDS, length), judges: {} };
}

/** Copies `from` into `into` from the minute `offset` on (a judge new to `into` gets zeros elsewhere). */
function putMinutes(into: Minutes, offset: number, from: Minutes): void {
  for (const kind of ACTIVITY_KINDS) copyInto(into.activity[kind], from.activity[kind], offset);
  for (const [id, series] of Object.entries(from.judges)) {
    let target = into.judges[id];
    if (target === undefined) {
      if (Object.keys(into.judges).length >= MAX_JUDGES) continue;
      target = into.judges[id] = zeros(JUDGE_USAGE_METRICS, into.length);
    }
    for (const metric of JUDGE_USAGE_METRICS) copyInto(target[metric], series[metric], offset);
  }
}

function copyInto(into: number[], values: readonly number[], offset: number): void {
  values.forEach((v, i) => {
    if (offset + i < into.length) into[offset + i] = v;
  });
}

function zeros<K extends string>(keys: readonly K[], length: number): Record<K, number[]> {
  return Object.fromEntries(keys.map((k) => [k, new Array<number>(length).fill(0)])) as Record<K, number[]>;
}

/** `record` with `f` applied to each value. */
export function mapValues<K extends string, V, W>(record: Record<K, V>, f: (value: V) => W): Record<K, W> {
  return Object.fromEntries(Object.entries(record).map(([k, v]) => [k, f(v as V)])) as Record<K, W>;
}
