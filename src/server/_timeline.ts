/**
 * The time axis of the dashboard's activity and judge charts. By default it follows the run: from the
 * earliest minute that still holds a counter (the store keeps per-minute counters for
 * `ACTIVITY_RETENTION_MS`, so a longer run shows its last part) to the current minute; `minutes` asks for
 * the last N minutes instead. The per-minute counters are summed into equal buckets, the smallest size in
 * `BUCKET_MINUTES` that keeps the axis within `MAX_BUCKETS` points, each bucket starting on a multiple of its
 * size (so a bucket keeps its bounds from one refresh to the next; the last bucket is the one still filling).
 * Counts are summed, never averaged, so that the page's ratios (agreement, failure rate, mean latency) are
 * ratios of sums over each bucket. The counters are read by `_counter_minutes.ts`.
 */
import {
  type Activity,
  ACTIVITY_RETENTION_MS,
  type JudgeActivity,
  MINUTE_MS,
  minuteOf,
  type PairStore,
} from "../store/pairs.ts";
import { mapValues, type Minutes, readKeptMinutes, sliceMinutes } from "./_counter_minutes.ts";

/** Bucket sizes the axis may use, in minutes; each divides a day, so buckets never straddle a UTC midnight. */
export const BUCKET_MINUTES = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440] as const;
/** Most buckets (points) on the time axis. */
export const MAX_BUCKETS = 180;
/** The longest window `minutes` may ask for: what the store keeps. */
export const MAX_WINDOW_MINUTES = ACTIVITY_RETENTION_MS / MINUTE_MS;

const DAY_MINUTES = 24 * 60;

/** Where the axis starts and ends and how it is bucketed (times in ms since the epoch). */
export interface TimeWindow {
  /** The start of the first bucket. */
  from: number;
  /** The end of the last bucket (exclusive); the current minute is in the last bucket. */
  to: number;
  /** Minutes per bucket, one of `BUCKET_MINUTES`. */
  bucket_minutes: number;
  /** The minutes asked for; null: the whole run. */
  minutes: number | null;
  /** The earliest minute holding a counter, when the window is the whole run (null: none is kept). */
  first_activity: number | null;
  /** How long the store keeps the per-minute counters (ms). */
  retention_ms: number;
}

/** The dashboard's time series: activity and judge counters summed per bucket, on one axis. */
export interface Timeline {
  window: TimeWindow;
  /** The start of each bucket, oldest first. */
  at: number[];
  activity: Activity["counts"];
  judges: JudgeActivity["judges"];
}

/** Equal buckets on the time axis. */
export interface Buckets {
  /** The start of each bucket (ms), oldest first. */
  starts: number[];
  /** Minutes per bucket, one of `BUCKET_MINUTES`. */
  minutes: number;
}

/** The smallest buckets that hold the minutes from `first` to `last` (ms) in at most `MAX_BUCKETS`. */
export function chooseBuckets(first: number, last: number): Buckets {
  // A day always fits: windows are at most the 3 days the counters are kept.
  const minutes = BUCKET_MINUTES.find((m) => bucketStarts(first, last, m).length <= MAX_BUCKETS) ?? DAY_MINUTES;
  return { starts: bucketStarts(first, last, minutes), minutes };
}

function bucketStarts(first: number, last: number, minutes: number): number[] {
  const size = minutes * MINUTE_MS;
  const starts: number[] = [];
  for (let t = Math.floor(first / size) * size; t <= last; t += size) starts.push(t);
  return starts;
}

/** Sums per-minute `values` (the first one counting the minute that starts at `first`, ms) into `buckets`. */
export function sumIntoBuckets(values: readonly number[], first: number, buckets: Buckets): number[] {
  const { starts, minutes } = buckets;
  const sums = starts.map(() => 0);
  values.forEach((v, i) => {
    const b = Math.floor((first + i * MINUTE_MS - starts[0]!) / (minutes * MINUTE_MS));
    if (v !== 0 && b >= 0 && b < sums.length) sums[b]! += v;
  });
  return sums;
}

/**
 * Reads the counters on the dashboard's time axis at `now`: the last `minutes` minutes, or (undefined) the
 * whole run as far as the counters are kept; see the module comment.
 */
export async function readTimeline(store: PairStore, now: number, minutes?: number): Promise<Timeline> {
  const last = minuteOf(now);
  const kept = await readKeptMinutes(store, now);
  let first: number;
  let firstActivity: number | null = null;
  if (minutes === undefined) {
    const i = firstCounted(kept.minutes);
    firstActivity = i === null ? null : kept.from + i * MINUTE_MS;
    // Nothing counted yet: the axis is the current minute alone.
    first = firstActivity ?? last;
  } else {
    first = Math.max(kept.from, last - (minutes - 1) * MINUTE_MS);
  }
  const shown = sliceMinutes(kept.minutes, (first - kept.from) / MINUTE_MS, kept.minutes.length);
  const buckets = chooseBuckets(first, last);
  const sum = (values: number[]) => sumIntoBuckets(values, first, buckets);
  return {
    window: {
      from: buckets.starts[0]!,
      to: buckets.starts[buckets.starts.length - 1]! + buckets.minutes * MINUTE_MS,
      bucket_minutes: buckets.minutes,
      minutes: minutes ?? null,
      first_activity: firstActivity,
      retention_ms: ACTIVITY_RETENTION_MS,
    },
    at: buckets.starts,
    activity: mapValues(shown.activity, sum),
    judges: mapValues(shown.judges, (series) => mapValues(series, sum)),
  };
}

/** The index of the first minute where any counter is above zero (null: none is). */
function firstCounted(minutes: Minutes): number | null {
  let first: number | null = null;
  const all = [...Object.values(minutes.activity), ...Object.values(minutes.judges).flatMap((s) => Object.values(s))];
  for (const values of all) {
    const i = values.findIndex((v) => v > 0);
    if (i >= 0 && (first === null || i < first)) first = i;
  }
  return first;
}
