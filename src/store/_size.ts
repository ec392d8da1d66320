/** Size checks against Deno KV's limits, made before a commit so that a too-big value writes nothing. */
import { serialize } from "node:v8";
import { StoreLimitError } from "./errors.ts";

/** Largest serialized value Deno KV accepts, local and hosted alike. */
export const MAX_VALUE_BYTES = 65_536;
/** Largest total size of one atomic commit. */
export const MAX_COMMIT_BYTES = 800 * 1024;
/** Most checks in one atomic commit on a self-hosted KV server (local SQLite allows 100). */
export const MAX_CHECKS = 10;
/** Most mutations in one atomic commit. */
export const MAX_MUTATIONS = 1000;

// Room for the serializer header and for any difference between node:v8's and Deno KV's framing.
const SLACK_BYTES = 256;

/**
 * Upper estimate of a value's size as Deno KV stores it. It serializes with V8's own ValueSerializer
 * (what KV uses), because a string's size depends on its in-memory representation, which only V8
 * knows: an ASCII string sliced out of a string with an emoji is stored at two bytes a character.
 */
export function estimateValueBytes(value: unknown): number {
  return serialize(value).byteLength + SLACK_BYTES;
}

/** Throws `StoreLimitError` naming the largest fields when `value` would not fit in one KV value. */
export function assertValueFits(value: object, what: string): void {
  const size = estimateValueBytes(value);
  if (size <= MAX_VALUE_BYTES) return;
  const largest = Object.entries(value)
    .map(([name, field]) => ({ name, bytes: estimateValueBytes(field) }))
    .sort((a, b) => b.bytes - a.bytes)
    .slice(0, 2)
    .map((f) => `'${f.name}' ≈ ${f.bytes} bytes`)
    .join(", ");
  throw new StoreLimitError(
    `Cannot store ${what} as a Deno KV value must stay under ${MAX_VALUE_BYTES} bytes serialized: ` +
      `this one is about ${size} bytes (largest fields: ${largest})`,
  );
}

// SQLite's answer when another process (another handle on the same file) holds the write lock.
const LOCKED = /database is locked|SQLITE_BUSY/i;
const LOCKED_RETRIES = 60; // about 10 s of jittered backoff in all: a busy machine can hold the lock that long

/**
 * Commits, retrying while another handle on the same KV file holds SQLite's write lock (the commit did
 * not run, so running it again is safe), and turning KV's own size refusals (the backstop behind
 * `assertValueFits`) into `StoreLimitError`. Returns whether the checks held.
 */
export async function commitWithinLimits(op: Deno.AtomicOperation, what: string): Promise<boolean> {
  for (let attempt = 0;; attempt++) {
    try {
      return (await op.commit()).ok;
    } catch (err) {
      if (err instanceof TypeError && /too large/i.test(err.message)) {
        throw new StoreLimitError(`Cannot store ${what}: ${err.message}`);
      }
      if (!(err instanceof Error && LOCKED.test(err.message)) || attempt >= LOCKED_RETRIES) throw err;
      await new Promise((resolve) => setTimeout(resolve, Math.min(2 ** attempt, 200) * (0.5 + Math.random())));
    }
  }
}
