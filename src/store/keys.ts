/**
 * Every Deno KV key of the system, built here and nowhere else, so the whole layout reads on one page:
 *
 * | key | value | written |
 * |---|---|---|
 * | `["pair", id]` | `Pair` | in every commit that creates or changes the pair |
 * | `["pair_by_status", status, id]` | `null` | moved in the same commit as the status |
 * | `["pair_by_time", createdAt, id]` | `null` | with the pair, never moved |
 * | `["pair_by_expiry", expiresAt, id]` | `null` | while a pair with `expiresAt` awaits judgment |
 * | `["pair_count", status]` | `Deno.KvU64` | `sum` in the same commit as every transition |
 * | `["activity", minute, kind]` | `Deno.KvU64` | `sum` in the same commit as the insert or transition it counts; pruned after 3 days |
 * | `["judge_usage", judge, metric]` | `Deno.KvU64` | `sum` in the commit of each automated verdict or failed judgment (`judge_usage.ts`) |
 * | `["judge_activity", minute, judge, metric]` | `Deno.KvU64` | with `judge_usage`, per minute; pruned with the activity counters |
 * | `["rate", window, key digest]` | `Deno.KvU64` | tokens handed out, set by a checked commit per block an instance takes (`rate_limits.ts`); pruned by the periodic sweep |
 * | `["lease", role, id]` | `Lease` | by `claim`/`renew`, with `expireIn`; deleted by the transition it leads to |
 * | `["idem", key]` | pair id | with the pair, `expireIn` 24 h |
 * | `["webhook_seen", webhookId]` | `null` | by the first signed verdict with that `webhook-id`, `expireIn` 10 min |
 * | `["completion", id]` | `Completion` | by `recordCompletion` (with `expireIn`) and its feedback (without) |
 * | `["completion_by_feedback", at, id]` | `null` | with the feedback |
 * | `["completion_trainable", id]` | `null` | with a completion's thumbs; deleted when it is trained (or retired) |
 * | `["completion_by_conversation", digest, id]` | `null` | with the completion, same `expireIn` (answers to one conversation) |
 * | `["feedback_count", "desirable" \| "undesirable"]` | `Deno.KvU64` | with the feedback |
 * | `["trained_pairs", version, chunk]` | pair ids | in the commit that publishes `version` (the pointer switch) |
 * | `["unsettled", version]` | `null` | with that commit; deleted once every pair it lists is marked trained |
 * | `["trainer_fence"]` | `Fence` | by each trainer as it starts (the token only rises); checked by every publish |
 * | `["gate", at, step]` | gate decision | by the trainer for every candidate it evaluates (`src/dpo/gate.ts`) |
 * | `["gate_count", "promoted" \| "refused"]` | `Deno.KvU64` | `sum` with each decision |
 * | `["train_metrics", at, step]` | step metrics | by the trainer after every step |
 * | `["trainer_status"]` | `{ owner, step, policy_version, ref_version, updated_at }` | by the trainer after each step and publish |
 * | `["eval", version]` | `VersionEval` | by the trainer after publishing `version` (held-out accuracy, win rate) |
 * | `["policy", "current"]` | `PolicyPointer` | by the commit that ends a publish, and by `rollback` |
 * | `["policy", "last_version"]` | number | by the commit that allocates a version number (never lowered) |
 * | `["ckpt_version", version]` | `PublishedVersion` | with the pointer switch that publishes it; deleted by `prune` |
 * | `["ckpt_upload", version]` | `{ startedAt, storage }` | with the version number; deleted with the publish or cleanup |
 * | `["ckpt_blob", version, file, chunk]` | `Uint8Array` (≤ 60,000 bytes) | before the version's record (KV store only) |
 *
 * Pair ids sort by creation time, so an index whose key ends in the id lists oldest first forward and
 * newest first in reverse.
 */
import type { ActivityKind, LeaseRole, PairStatus } from "./schema.ts";

/** The pair record. */
export function pairKey(id: string): Deno.KvKey {
  return ["pair", id];
}

/** All pair records, oldest first. */
export const PAIR_PREFIX: Deno.KvKey = ["pair"];

/** The status index entry of a pair. */
export function pairStatusKey(status: PairStatus, id: string): Deno.KvKey {
  return ["pair_by_status", status, id];
}

/** All status index entries, by status then oldest first. */
export const PAIR_STATUS_INDEX_PREFIX: Deno.KvKey = ["pair_by_status"];

/** All status index entries of one status, oldest first. */
export function pairStatusPrefix(status: PairStatus): Deno.KvKey {
  return ["pair_by_status", status];
}

/** The time index entry of a pair. */
export function pairTimeKey(createdAt: number, id: string): Deno.KvKey {
  return ["pair_by_time", createdAt, id];
}

/** All time index entries, oldest first. */
export const PAIR_TIME_PREFIX: Deno.KvKey = ["pair_by_time"];

/** The expiry index entry of a pair awaiting judgment that has an `expiresAt`. */
export function pairExpiryKey(expiresAt: number, id: string): Deno.KvKey {
  return ["pair_by_expiry", expiresAt, id];
}

/** All expiry index entries, earliest expiry first. */
export const PAIR_EXPIRY_PREFIX: Deno.KvKey = ["pair_by_expiry"];

/** Exclusive end of the expiry index entries with `expiresAt <= nowMs` (integer ms). */
export function pairExpiryEnd(nowMs: number): Deno.KvKey {
  return ["pair_by_expiry", nowMs + 1];
}

/** The counter of pairs in one status. */
export function pairCountKey(status: PairStatus): Deno.KvKey {
  return ["pair_count", status];
}

/** The counter of one kind of event in one minute (`minute`: ms since the epoch, a multiple of 60,000). */
export function activityKey(minute: number, kind: ActivityKind): Deno.KvKey {
  return ["activity", minute, kind];
}

/** Where the activity counters of `minute` start (an inclusive start or exclusive end of a range). */
export function activityMinuteKey(minute: number): Deno.KvKey {
  return ["activity", minute];
}

/** All activity counters, oldest minute first. */
export const ACTIVITY_PREFIX: Deno.KvKey = ["activity"];

/** A judge's running total of one metric (see `JUDGE_USAGE_METRICS`). */
export function judgeUsageKey(judgeId: string, metric: string): Deno.KvKey {
  return ["judge_usage", judgeId, metric];
}

/** Every judge's running totals. */
export const JUDGE_USAGE_PREFIX: Deno.KvKey = ["judge_usage"];

/** A judge's count of one metric in one minute. */
export function judgeActivityKey(minute: number, judgeId: string, metric: string): Deno.KvKey {
  return ["judge_activity", minute, judgeId, metric];
}

/** Where the judges' counters of `minute` start (an inclusive start or exclusive end of a range). */
export function judgeActivityMinuteKey(minute: number): Deno.KvKey {
  return ["judge_activity", minute];
}

/** All per-minute judge counters, oldest minute first. */
export const JUDGE_ACTIVITY_PREFIX: Deno.KvKey = ["judge_activity"];

/** Requests of one API key (its digest) in the window starting at `window` (ms). */
export function rateKey(window: number, keyDigest: string): Deno.KvKey {
  return ["rate", window, keyDigest];
}

/** Where the rate counters of `window` start (an inclusive start or exclusive end of a range). */
export function rateWindowKey(window: number): Deno.KvKey {
  return ["rate", window];
}

/** Every rate counter, oldest window first. */
export const RATE_PREFIX: Deno.KvKey = ["rate"];

/** The lease of one role on one pair. */
export function leaseKey(role: LeaseRole, id: string): Deno.KvKey {
  return ["lease", role, id];
}

/** The record of a request's idempotency key, naming the pair it created. */
export function idempotencyKey(key: string): Deno.KvKey {
  return ["idem", key];
}

/** The record that a signed request with this `webhook-id` was accepted (so a second one is refused). */
export function webhookSeenKey(webhookId: string): Deno.KvKey {
  return ["webhook_seen", webhookId];
}

/** A completion kept for KTO feedback. */
export function completionKey(id: string): Deno.KvKey {
  return ["completion", id];
}

/** The conversation index entry of a completion (`digest`: of its prompt text). */
export function completionConversationKey(digest: string, id: string): Deno.KvKey {
  return ["completion_by_conversation", digest, id];
}

/** Every answer kept for one conversation. */
export function completionConversationPrefix(digest: string): Deno.KvKey {
  return ["completion_by_conversation", digest];
}

/** A completion whose thumbs awaits training (KTO). */
export function completionTrainableKey(id: string): Deno.KvKey {
  return ["completion_trainable", id];
}

/** Every completion whose thumbs awaits training, in id order. */
export const COMPLETION_TRAINABLE_PREFIX: Deno.KvKey = ["completion_trainable"];

/** The feedback index entry of a completion, by feedback time. */
export function completionFeedbackKey(at: number, id: string): Deno.KvKey {
  return ["completion_by_feedback", at, id];
}

/** All feedback index entries, oldest feedback first. */
export const COMPLETION_FEEDBACK_PREFIX: Deno.KvKey = ["completion_by_feedback"];

/** The counter of feedback with one label. */
export function feedbackCountKey(label: boolean): Deno.KvKey {
  return ["feedback_count", label ? "desirable" : "undesirable"];
}

/** The pointer naming the policy version servers load. */
export function policyPointerKey(): Deno.KvKey {
  return ["policy", "current"];
}

/** The last policy version number handed out; numbers are never reused, even after a failed publish. */
export function policyVersionSeqKey(): Deno.KvKey {
  return ["policy", "last_version"];
}

/** The metadata record of one published policy version. */
export function checkpointVersionKey(version: number): Deno.KvKey {
  return ["ckpt_version", version];
}

/** All published version records, oldest version first. */
export const CHECKPOINT_VERSION_PREFIX: Deno.KvKey = ["ckpt_version"];

/** The marker of a version being uploaded, so that `prune` can tell an upload in progress from debris. */
export function checkpointUploadKey(version: number): Deno.KvKey {
  return ["ckpt_upload", version];
}

/** All upload markers, oldest version first. */
export const CHECKPOINT_UPLOAD_PREFIX: Deno.KvKey = ["ckpt_upload"];

/** One chunk of one file of a version held in KV. */
export function checkpointBlobKey(version: number, file: string, chunk: number): Deno.KvKey {
  return ["ckpt_blob", version, file, chunk];
}

/** All chunks of one file of a version, in order. */
export function checkpointFilePrefix(version: number, file: string): Deno.KvKey {
  return ["ckpt_blob", version, file];
}

/** All chunks of one version, file by file. */
export function checkpointBlobPrefix(version: number): Deno.KvKey {
  return ["ckpt_blob", version];
}

/** All chunks of every version held in KV. */
export const CHECKPOINT_BLOB_PREFIX: Deno.KvKey = ["ckpt_blob"];

/** The record id at the end of an index key (every index above ends in one). */
export function idOfIndexKey(key: Deno.KvKey): string {
  const id = key[key.length - 1];
  if (typeof id !== "string") throw new TypeError(`Cannot read an index key as its last part must be an id: ${key}`);
  return id;
}

/** The ids of the pairs a published policy version was trained on, `TRAINED_IDS_PER_CHUNK` to a chunk. */
export function trainedPairsKey(version: number, chunk: number): Deno.KvKey {
  return ["trained_pairs", version, chunk];
}

/** All chunks of a version's trained-pair ids. */
export function trainedPairsPrefix(version: number): Deno.KvKey {
  return ["trained_pairs", version];
}

/** The marker of a published version whose pairs are not all marked trained yet. */
export function unsettledKey(version: number): Deno.KvKey {
  return ["unsettled", version];
}

/** All unsettled markers, oldest version first. */
export const UNSETTLED_PREFIX: Deno.KvKey = ["unsettled"];

/** The trainer fence: the token of the one trainer allowed to publish. */
export function trainerFenceKey(): Deno.KvKey {
  return ["trainer_fence"];
}

/** One optimizer step's metrics, by time then step, for the dashboard. */
export function trainMetricsKey(at: number, step: number): Deno.KvKey {
  return ["train_metrics", at, step];
}

/** All recorded training metrics, oldest first. */
export const TRAIN_METRICS_PREFIX: Deno.KvKey = ["train_metrics"];

/** The held-out evaluation of one published policy version. */
export function evalKey(version: number): Deno.KvKey {
  return ["eval", version];
}

/** All evaluations, oldest version first. */
export const EVAL_PREFIX: Deno.KvKey = ["eval"];

/** A gate decision. */
export function gateKey(at: number, step: number): Deno.KvKey {
  return ["gate", at, step];
}

/** Every gate decision, oldest first. */
export const GATE_PREFIX: Deno.KvKey = ["gate"];

/** The count of gate decisions with one outcome. */
export function gateCountKey(outcome: "promoted" | "refused"): Deno.KvKey {
  return ["gate_count", outcome];
}

/** The promotion gate's bar: the best served version's answers on the gate's prompts (`src/dpo/gate.ts`). */
export function gateBarKey(): Deno.KvKey {
  return ["gate_bar"];
}

/** What the trainer is doing now: its step, the policy version it trains from and its reference version. */
export function trainerStatusKey(): Deno.KvKey {
  return ["trainer_status"];
}
