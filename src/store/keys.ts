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
 * | `["lease", role, id]` | `Lease` | by `claim`/`renew`, with `expireIn`; deleted by the transition it leads to |
 * | `["idem", key]` | pair id | with the pair, `expireIn` 24 h |
 * | `["completion", id]` | `Completion` | by `recordCompletion` (with `expireIn`) and its feedback (without) |
 * | `["completion_by_feedback", at, id]` | `null` | with the feedback |
 * | `["feedback_count", "desirable" \| "undesirable"]` | `Deno.KvU64` | with the feedback |
 *
 * Pair ids sort by creation time, so an index whose key ends in the id lists oldest first forward and
 * newest first in reverse.
 */
import type { LeaseRole, PairStatus } from "./schema.ts";

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

/** The lease of one role on one pair. */
export function leaseKey(role: LeaseRole, id: string): Deno.KvKey {
  return ["lease", role, id];
}

/** The record of a request's idempotency key, naming the pair it created. */
export function idempotencyKey(key: string): Deno.KvKey {
  return ["idem", key];
}

/** A completion kept for KTO feedback. */
export function completionKey(id: string): Deno.KvKey {
  return ["completion", id];
}

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

/** The record id at the end of an index key (every index above ends in one). */
export function idOfIndexKey(key: Deno.KvKey): string {
  const id = key[key.length - 1];
  if (typeof id !== "string") throw new TypeError(`Cannot read an index key as its last part must be an id: ${key}`);
  return id;
}
