/**
 * What the automated judges (verifiers, LLM judges, ensembles and their members) cost and how they vote,
 * counted per judge in KV so that every server instance reports what every judge process did. Each count is
 * a `sum` in the same commit as the verdict or failed judgment it counts (a judgment is counted once, however
 * often its commit is retried), twice: a running total (`["judge_usage", judge, metric]`, for `/metrics` and
 * `/v1/stats`) and per minute (`["judge_activity", minute, judge, metric]`, for the dashboard; pruned with
 * the activity counters). Verdicts of people (`human`, `webhook`) and imports are not judge calls: not counted.
 *
 * An ensemble is counted as a judge of its own (its calls, failures, latency, and its members' usage summed)
 * and each member as one too; a member's `votes` and `votes_agreed` say how often it voted a, b or tie and
 * how often that vote was the ensemble's verdict.
 */
import { counterValue } from "./_codec.ts";
import {
  JUDGE_ACTIVITY_PREFIX,
  JUDGE_USAGE_PREFIX,
  judgeActivityKey,
  judgeActivityMinuteKey,
  judgeUsageKey,
} from "./keys.ts";
import type { StoredVerdict, VerdictJudge } from "./schema.ts";
import { deleteRange, MINUTE_MS, minuteOf } from "./activity.ts";

/** The counters kept per judge. */
export const JUDGE_USAGE_METRICS = [
  /** Judgments asked of the judge (verdicts and failures). */
  "calls",
  /** Of those, judgments that failed (the judge worker retries the pair later, or gives it up). */
  "failures",
  /** The summed latency of the verdicts, in milliseconds (mean = latency_ms / (calls − failures)). */
  "latency_ms",
  /** HTTP requests made, retries included (LLM judges). */
  "requests",
  /** Tokens as the endpoint reported them (LLM judges). */
  "prompt_tokens",
  "completion_tokens",
  /** Ensemble members: votes a, b or tie cast (failures excluded). */
  "votes",
  /** Ensemble members: of those, votes equal to the ensemble's verdict. */
  "votes_agreed",
] as const;
/** One of `JUDGE_USAGE_METRICS`. */
export type JudgeUsageMetric = (typeof JUDGE_USAGE_METRICS)[number];
/** Every counter of one judge. */
export type JudgeUsage = Record<JudgeUsageMetric, number>;

// The judges of one deployment are a handful; this bounds a read whatever the KV holds.
const MAX_JUDGES = 100;

/** Whether verdicts of this kind of judge are judge calls (see the module comment). */
export function isAutomatedJudge(judge: VerdictJudge): boolean {
  return judge.kind === "verifier" || judge.kind === "hf" || judge.kind === "ensemble";
}

/** Adds the counters of one verdict to `op` (nothing for a person's verdict or an import). */
export function countVerdictUsage(op: Deno.AtomicOperation, verdict: StoredVerdict): void {
  if (!isAutomatedJudge(verdict.judge)) return;
  const at = verdict.at;
  count(op, at, verdict.judge.id, {
    calls: 1,
    latency_ms: Math.round(verdict.latencyMs ?? 0),
    ...usageCounts(verdict.usage),
  });
  for (const vote of verdict.votes ?? []) {
    const voted = vote.choice !== "failed";
    count(op, at, vote.judgeId, {
      calls: 1,
      failures: voted ? 0 : 1,
      latency_ms: voted ? Math.round(vote.latencyMs) : 0,
      votes: voted ? 1 : 0,
      votes_agreed: vote.choice === verdict.choice ? 1 : 0,
      ...usageCounts(vote.usage),
    });
  }
}

/** Adds one failed judgment by `judgeId` at `at` to `op`. */
export function countJudgeFailure(op: Deno.AtomicOperation, at: number, judgeId: string): void {
  count(op, at, judgeId, { calls: 1, failures: 1 });
}

function usageCounts(usage: StoredVerdict["usage"]): Partial<JudgeUsage> {
  if (!usage) return {};
  return {
    requests: usage.requests,
    prompt_tokens: usage.promptTokens,
    completion_tokens: usage.completionTokens,
  };
}

function count(op: Deno.AtomicOperation, at: number, judgeId: string, counts: Partial<JudgeUsage>): void {
  const minute = minuteOf(at);
  for (const [metric, n] of Object.entries(counts) as [JudgeUsageMetric, number][]) {
    if (n <= 0) continue;
    const amount = BigInt(n);
    op.sum(judgeUsageKey(judgeId, metric), amount);
    op.sum(judgeActivityKey(minute, judgeId, metric), amount);
  }
}

function zeros(): JudgeUsage {
  return Object.fromEntries(JUDGE_USAGE_METRICS.map((m) => [m, 0])) as JudgeUsage;
}

/** Every judge's running totals, by judge id (at most 100 judges). */
export async function readJudgeUsage(kv: Deno.Kv): Promise<Record<string, JudgeUsage>> {
  const usage: Record<string, JudgeUsage> = {};
  const entries = kv.list({ prefix: JUDGE_USAGE_PREFIX }, { limit: MAX_JUDGES * JUDGE_USAGE_METRICS.length });
  for await (const entry of entries) {
    const [, judgeId, metric] = entry.key;
    if (typeof judgeId !== "string" || !JUDGE_USAGE_METRICS.includes(metric as JudgeUsageMetric)) continue;
    (usage[judgeId] ??= zeros())[metric as JudgeUsageMetric] = counterValue(entry.value, `judge usage ${judgeId}`);
  }
  return usage;
}

/** Per-minute counters, oldest first: `judges[id][metric][i]` counts the minute starting at `minutes[i]`. */
export interface JudgeActivity {
  minutes: number[];
  judges: Record<string, Record<JudgeUsageMetric, number[]>>;
}

/** The per-minute counters of every judge from the minute holding `from` to the one holding `to`. */
export async function readJudgeActivity(kv: Deno.Kv, from: number, to: number): Promise<JudgeActivity> {
  const first = minuteOf(from);
  const last = minuteOf(to);
  const minutes: number[] = [];
  for (let m = first; m <= last; m += MINUTE_MS) minutes.push(m);
  const judges: JudgeActivity["judges"] = {};
  const entries = kv.list({
    start: judgeActivityMinuteKey(first),
    end: judgeActivityMinuteKey(last + MINUTE_MS),
  }, { batchSize: 500 });
  for await (const entry of entries) {
    const [, minute, judgeId, metric] = entry.key;
    if (typeof minute !== "number" || typeof judgeId !== "string") continue;
    if (!JUDGE_USAGE_METRICS.includes(metric as JudgeUsageMetric)) continue; // a metric this version does not know
    const i = (minute - first) / MINUTE_MS;
    if (!Number.isInteger(i) || i < 0 || i >= minutes.length) continue;
    let series = judges[judgeId];
    if (series === undefined) {
      if (Object.keys(judges).length >= MAX_JUDGES) continue;
      series = judges[judgeId] = Object.fromEntries(
        JUDGE_USAGE_METRICS.map((m) => [m, minutes.map(() => 0)]),
      ) as Record<JudgeUsageMetric, number[]>;
    }
    series[metric as JudgeUsageMetric][i] = counterValue(entry.value, `judge activity ${judgeId}`);
  }
  return { minutes, judges };
}

/** Deletes the per-minute judge counters of minutes before `before` (ms); returns how many it deleted. */
export function pruneJudgeActivity(kv: Deno.Kv, before: number): Promise<number> {
  return deleteRange(kv, JUDGE_ACTIVITY_PREFIX, judgeActivityMinuteKey(before), "old judge counters");
}
