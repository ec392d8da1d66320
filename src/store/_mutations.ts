/** The mutations of a pair's insert and transitions, in one place so indexes and counters never drift. */
import { z } from "zod";
import { StoreInputError } from "./errors.ts";
import { pairCountKey, pairExpiryKey, pairKey, pairStatusKey, pairTimeKey } from "./keys.ts";
import { type Pair, PairSchema } from "./schema.ts";
import { assertValueFits } from "./_size.ts";
import { countInsert, countTransition } from "./activity.ts";

const ONE = 1n;
const MINUS_ONE = (1n << 64n) - 1n; // KV's sum wraps around: adding 2^64-1 subtracts 1

/** Checks a pair about to be written against the schema and the value size limit; returns it. */
export function checkedPair(pair: Pair, what: string): Pair {
  const parsed = PairSchema.safeParse(pair);
  if (!parsed.success) throw new StoreInputError(`Cannot store ${what}:\n${z.prettifyError(parsed.error)}`);
  assertValueFits(pair, what);
  return pair;
}

/** Adds the writes of a new pair: the record, its status, time and expiry index entries, its counters. */
export function insertPair(op: Deno.AtomicOperation, pair: Pair): void {
  op.set(pairKey(pair.id), pair)
    .set(pairStatusKey(pair.status, pair.id), null)
    .set(pairTimeKey(pair.createdAt, pair.id), null)
    .sum(pairCountKey(pair.status), ONE);
  if (pair.status === "awaiting_judgment" && pair.expiresAt !== undefined) {
    op.set(pairExpiryKey(pair.expiresAt, pair.id), null);
  }
  countInsert(op, pair);
}

/** Adds the writes of one transition: the new record, and the index entries and counters it moves. */
export function transitionPair(op: Deno.AtomicOperation, before: Pair, after: Pair): void {
  op.set(pairKey(after.id), after);
  if (before.status !== after.status) {
    op.delete(pairStatusKey(before.status, before.id))
      .set(pairStatusKey(after.status, after.id), null)
      .sum(pairCountKey(before.status), MINUS_ONE)
      .sum(pairCountKey(after.status), ONE);
  }
  if (before.status === "awaiting_judgment" && after.status !== "awaiting_judgment" && before.expiresAt !== undefined) {
    op.delete(pairExpiryKey(before.expiresAt, before.id));
  }
  countTransition(op, before, after);
}
