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
 * Upper estimate of a value's size as Deno KV stores it. A string's stored size depends on its in-memory
 * representation, which only V8 knows (an ASCII string sliced out of a string with an emoji is stored at
 * two bytes a character), so plain data is first bounded assuming two bytes a character everywhere
 * (`serializedBound`: no serialization, cheap enough for every write); only a value whose bound does not
 * fit is serialized with V8's own ValueSerializer (what KV uses) for its exact size.
 */
export function estimateValueBytes(value: unknown): number {
  const bound = serializedBound(value);
  if (bound !== undefined && bound + SLACK_BYTES <= MAX_VALUE_BYTES) return bound + SLACK_BYTES;
  return serialize(value).byteLength + SLACK_BYTES;
}

// How deep `serializedBound` follows plain data before it leaves the value to the serializer (a cycle).
const MAX_BOUND_DEPTH = 64;

/**
 * An upper bound of the bytes V8's ValueSerializer writes for `value` (without its 2-byte header), when it
 * is plain data: strings, numbers, booleans, null, undefined, arrays and plain objects of them; otherwise
 * `undefined`. Per V8's format: a string is a tag, a possible padding byte, a length varint (≤ 5 bytes) and
 * at most 2 bytes a character; a number at most a tag and 8 bytes; an array a tag, its length, its elements
 * (each with its index, should it be stored sparse) and a closing tag with two varints; an object a tag,
 * its keys and values and a closing tag with a varint. A repeated object is stored as a shorter reference.
 */
export function serializedBound(value: unknown, depth = 0): number | undefined {
  switch (typeof value) {
    case "string":
      return 7 + 2 * value.length;
    case "number":
      return 9;
    case "boolean":
    case "undefined":
      return 1;
    case "object": {
      if (value === null) return 1;
      if (depth >= MAX_BOUND_DEPTH) return undefined;
      const proto = Object.getPrototypeOf(value);
      if (Array.isArray(value) && proto === Array.prototype) {
        let n = 16;
        for (const item of value) {
          const b = serializedBound(item, depth + 1);
          if (b === undefined) return undefined;
          n += 9 + b;
        }
        return Object.keys(value).length === value.length ? n : undefined;
      }
      if (proto !== Object.prototype && proto !== null) return undefined;
      let n = 7;
      for (const key in value) {
        if (!Object.hasOwn(value, key)) continue;
        const b = serializedBound((value as Record<string, unknown>)[key], depth + 1);
        if (b === undefined) return undefined;
        n += 7 + 2 * key.length + b;
      }
      return n;
    }
    default:
      return undefined; // bigint, symbol, function: left to the serializer
  }
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
