/**
 * Request tokens per API key and time window, in KV, so that any number of server instances enforce one
 * limit: `["rate", window, key digest]` counts the tokens of that window handed out so far, and an instance
 * takes a block of them with a versionstamp-checked commit, so that the count never passes the limit (the
 * instance spends its block locally: `server/_allowance.ts`). The keys are digests, never the API keys
 * themselves. Windows past are deleted by the periodic sweep (`pruneRateWindows`).
 */
import { counterValue } from "./_codec.ts";
import { commitWithinLimits } from "./_size.ts";
import { RATE_PREFIX, rateKey, rateWindowKey } from "./keys.ts";
import { deleteRange } from "./activity.ts";

// Rounds of read and checked commit before a take gives up: each lost round is another instance's take.
const TAKE_ATTEMPTS = 100;

/**
 * Takes up to `want` of the `limit` tokens of `key`'s window starting at `window` (ms), in one commit
 * checked on the counter; returns how many it got: fewer than `want` once the window's tokens run out,
 * 0 when none are left. The tokens handed out in a window never add up to more than `limit`.
 */
export async function takeRateTokens(
  kv: Deno.Kv,
  key: string,
  window: number,
  want: number,
  limit: number,
): Promise<number> {
  const counter = rateKey(window, await digest(key));
  for (let attempt = 0; attempt < TAKE_ATTEMPTS; attempt++) {
    const entry = await kv.get(counter);
    const taken = counterValue(entry.value, "a rate-limit counter");
    const got = Math.min(want, limit - taken);
    if (got <= 0) return 0;
    const op = kv.atomic().check(entry).set(counter, new Deno.KvU64(BigInt(taken + got)));
    if (await commitWithinLimits(op, "a rate-limit counter")) return got;
  }
  throw new Error(
    `Cannot take rate-limit tokens for window ${window}: lost the race to other instances ${TAKE_ATTEMPTS} times`,
  );
}

/** Deletes the counters of windows that started before `before` (ms); returns how many it deleted. */
export function pruneRateWindows(kv: Deno.Kv, before: number): Promise<number> {
  return deleteRange(kv, RATE_PREFIX, rateWindowKey(before), "old rate-limit counters");
}

const digests = new Map<string, string>();

async function digest(key: string): Promise<string> {
  let d = digests.get(key);
  if (d === undefined) {
    const hash = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(key));
    d = Array.from(new Uint8Array(hash).slice(0, 12), (b) => b.toString(16).padStart(2, "0")).join("");
    if (digests.size > 10_000) digests.clear();
    digests.set(key, d);
  }
  return d;
}
