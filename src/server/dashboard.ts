/**
 * The data behind `GET /v1/dashboard`: one JSON document with everything the dashboard page plots, read
 * from KV in bounded work (a capped reverse range of training steps, the last evaluations, the per-minute
 * counters of the time window (at most the 3 days the store keeps), the latest pairs through the time index;
 * never a scan of all pairs). The time window follows the run unless `minutes` asks for the last N minutes;
 * its counters are summed into at most 180 equal buckets (see `_timeline.ts`).
 *
 * Shape of the document (times in ms since the epoch):
 *
 * ```ts
 * {
 *   now: number;
 *   policy: {
 *     serving: number;              // the version this server instance serves
 *     current: number | null;       // the version the KV pointer names (every server converges to it)
 *     switched_at: number | null;   // when the pointer last moved
 *     reference: number | null;     // the trainer's reference version (its count of reference refreshes)
 *   };
 *   trainer: { owner, step, policy_version, ref_version, leases_lost, retired, updated_at } | null;
 *   pairs: Record<PairStatus, number>;  // every status in PAIR_STATUSES (src/store/schema.ts)
 *   metrics: {
 *     names: string[];              // metrics present, TRL names ("loss", "rewards/accuracies", ...)
 *     step: number[];               // one entry per point: the last step of the point's bucket
 *     at: number[];                 // when that step was recorded
 *     series: Record<string, (number | null)[]>;  // per name, the bucket means (null: no finite value)
 *     steps_read: number;           // training steps averaged into the points (at most `limit`)
 *     truncated: boolean;           // older steps since `since` were left out by `limit`
 *   };
 *   evals: { version, prompts, accuracy, base_accuracy, win_rate_vs_base, at, seconds }[];  // oldest first
 *   window: {                       // the time axis of `activity` and `judges`
 *     from: number; to: number;     // the start of the first bucket, the end of the last (the current minute is in it)
 *     bucket_minutes: number;       // minutes per bucket: 1, 2, 5, 10, 15, 30, 60, ... (at most 180 buckets)
 *     minutes: number | null;       // the minutes asked for; null: the whole run
 *     first_activity: number | null;  // whole run: the earliest minute with a counter (null: none kept)
 *     retention_ms: number;         // how long the per-minute counters are kept (the run is cut to that)
 *   };
 *   activity: {                     // counts per bucket, oldest first, the current one last
 *     at: number[];                 // start of each bucket
 *     created, imported, labeled, tie, expired, trained, stale, rejected, judge_failed, identical, agreed, disagreed: number[];
 *   };
 *   judges: {                       // the automated judges (see src/store/judge_usage.ts)
 *     totals: Record<judge, { calls, failures, latency_ms, requests, prompt_tokens, completion_tokens, votes, votes_agreed }>;
 *     at: number[];                 // the same buckets as `activity`
 *     series: Record<judge, Record<metric, number[]>>;  // per judge, the same counters summed per bucket
 *   };
 *   gate: {                         // the promotion gate (src/dpo/gate.ts)
 *     promoted: number; refused: number;  // decisions ever, by outcome
 *     decisions: GateDecision[];    // the last 200, oldest first
 *   };
 *   latest: {                       // newest first; texts cut to 280 characters
 *     id, status, created_at, updated_at, policy_version, prompt, a, b,
 *     chosen: "a" | "b" | null,
 *     verdict: { choice, judge: { kind, id }, annotator, reason, latency_ms, agreed, at } | null,
 *     trained_into: number | null,
 *   }[];
 * }
 * ```
 */
import { z } from "zod";
import { VersionEvalSchema } from "../dpo/evaluate.ts";
import { GateDecisionSchema } from "../dpo/gate.ts";
import { ACTIVITY_KINDS, type Pair, type PairStore } from "../store/pairs.ts";
import type { TrainingRecords } from "../store/training_records.ts";
import { MAX_WINDOW_MINUTES, readTimeline } from "./_timeline.ts";

/** The query of `GET /v1/dashboard`. */
export const DashboardQuerySchema = z.object({
  /** Training steps recorded at or after this time (ms); default all that `limit` allows. */
  since: z.coerce.number().int().nonnegative().default(0),
  /** Most training steps read, newest first. */
  limit: z.coerce.number().int().min(1).max(20_000).default(5000),
  /** Most points per metric series (steps are averaged in equal buckets to fit). */
  points: z.coerce.number().int().min(2).max(2000).default(300),
  /** Minutes on the time axis, the current one included; absent: the whole run (as far as counters are kept). */
  minutes: z.coerce.number().int().min(1).max(MAX_WINDOW_MINUTES).optional(),
  /** Latest pairs listed. */
  pairs: z.coerce.number().int().min(0).max(100).default(20),
});
/** The query of `GET /v1/dashboard`. */
export type DashboardQuery = z.infer<typeof DashboardQuerySchema>;

/** Metrics the dashboard keeps, in display order (TRL's names). */
export const DASHBOARD_METRICS = [
  "loss",
  "rewards/accuracies",
  "rewards/margins",
  "objective/kl",
  "grad_norm",
  "learning_rate",
  "rewards/chosen",
  "rewards/rejected",
  "logps/chosen",
  "logps/rejected",
  "objective/entropy",
  // KTO steps on thumbs up/down (the online worker records them beside the DPO steps).
  "kto/loss",
  "kto/kl",
  // Not charted: its rises mark reference refreshes on the step charts.
  "ref_version",
] as const;

// Evaluations listed: one per published version, the newest ones.
const MAX_EVALS = 200;
const TEXT_CHARS = 280;

const StepRecord = z.object({ step: z.number().int().nonnegative() }).catchall(z.unknown());

/** What the document is read from. */
export interface DashboardSource {
  store: PairStore;
  /** The version this server instance serves (null: none, a feedback-only instance). */
  servingVersion: number | null;
  now: number;
}

/** Reads the dashboard document; see the module comment for its shape. */
export async function readDashboard(source: DashboardSource, query: DashboardQuery) {
  const { store, now } = source;
  const records = store.records;
  const [pointer, status, counts, metrics, evals, timeline, latest, judgeTotals, gate] = await Promise
    .all([
      records.pointer(),
      // A status this version cannot read (another trainer version) is shown as none rather than failing the page.
      records.status().catch(() => null),
      store.counts(),
      readMetrics(records, query),
      readEvals(records),
      readTimeline(store, now, query.minutes),
      query.pairs === 0 ? Promise.resolve({ pairs: [] }) : store.list({ limit: query.pairs }),
      store.judgeUsage(),
      readGate(records),
    ]);
  const trainer = status;
  return {
    now,
    policy: {
      serving: source.servingVersion,
      current: pointer?.version ?? null,
      switched_at: pointer?.switchedAt ?? null,
      reference: trainer?.ref_version ?? null,
    },
    trainer,
    pairs: counts,
    metrics,
    evals,
    window: timeline.window,
    activity: {
      at: timeline.at,
      ...Object.fromEntries(ACTIVITY_KINDS.map((k) => [k, timeline.activity[k]])),
    },
    judges: { totals: judgeTotals, at: timeline.at, series: timeline.judges },
    gate,
    latest: latest.pairs.map(pairSummary),
  };
}

/** The newest `limit` steps since `query.since`, averaged into at most `query.points` points per series. */
async function readMetrics(source: TrainingRecords, query: DashboardQuery) {
  const { steps, truncated } = await source.steps({ since: query.since, limit: query.limit });
  const records: z.infer<typeof StepRecord>[] = [];
  const at: number[] = [];
  for (const entry of steps) {
    const parsed = StepRecord.safeParse(entry.value);
    if (!parsed.success) continue; // not a step record: not plotted
    records.push(parsed.data);
    at.push(entry.at);
  }
  const names = DASHBOARD_METRICS.filter((name) => records.some((r) => typeof r[name] === "number"));
  const size = Math.max(1, Math.ceil(records.length / query.points));
  const out = {
    names: names as string[],
    step: [] as number[],
    at: [] as number[],
    series: Object.fromEntries(names.map((n) => [n, [] as (number | null)[]])),
    steps_read: records.length,
    truncated,
  };
  for (let start = 0; start < records.length; start += size) {
    const bucket = records.slice(start, start + size);
    out.step.push(bucket[bucket.length - 1]!.step);
    out.at.push(at[Math.min(start + size, records.length) - 1]!);
    for (const name of names) {
      const values = bucket.map((r) => r[name]).filter((v): v is number => typeof v === "number" && isFinite(v));
      out.series[name]!.push(values.length === 0 ? null : values.reduce((a, v) => a + v, 0) / values.length);
    }
  }
  return out;
}

async function readEvals(source: TrainingRecords) {
  const evals = [];
  for (const value of await source.evals(MAX_EVALS)) {
    const parsed = VersionEvalSchema.safeParse(value);
    if (parsed.success) evals.push(parsed.data);
  }
  return evals;
}

/** The last gate decisions (oldest first) and the counts of each outcome. */
async function readGate(source: TrainingRecords) {
  const { decisions, promoted, refused } = await source.gates(MAX_EVALS);
  return {
    promoted,
    refused,
    decisions: decisions.flatMap((d) => {
      const parsed = GateDecisionSchema.safeParse(d);
      return parsed.success ? [parsed.data] : [];
    }),
  };
}

function pairSummary(pair: Pair) {
  const [a, b] = pair.candidates;
  const v = pair.verdict;
  const prompt = pair.prompt ?? pair.messages!.map((m) => `${m.role}: ${m.content}`).join("\n");
  return {
    id: pair.id,
    status: pair.status,
    created_at: pair.createdAt,
    updated_at: pair.updatedAt,
    policy_version: pair.policyVersion,
    prompt: clip(prompt),
    a: clip(pair.responses[a]!),
    b: clip(pair.responses[b]!),
    chosen: pair.chosen === undefined ? null : pair.chosen === a ? "a" : "b",
    verdict: v === undefined ? null : {
      choice: v.choice,
      judge: v.judge,
      annotator: v.annotator ?? null,
      reason: v.reason === undefined ? null : clip(v.reason),
      latency_ms: v.latencyMs ?? null,
      agreed: v.agreed ?? null,
      at: v.at,
    },
    trained_into: pair.trainedInto ?? null,
  };
}

function clip(text: string): string {
  return text.length <= TEXT_CHARS ? text : `${text.slice(0, TEXT_CHARS - 1)}…`;
}
