/**
 * Request counts per API key and time window, in KV, so that any number of server instances enforce one
 * limit: `sum` on `["rate", window, key]`, the total read back; the keys are digests, never
 * the API keys themselves. KV's `sum` drops `expireIn`, so windows past are deleted by the periodic sweep
 * (`pruneRateWindows`).
 */
import { counterValue } from "./_codec.ts";
import { commitWithinLimits } from "./_size.ts";
import { RATE_PREFIX, rateKey, rateWindowKey } from "./keys.ts";
import { deleteRange } from "./activity.ts";

/** Counts one request of `key` in the window starting at `window` (ms); returns the window's count so far. */
export async function countRequest(kv: Deno.Kv, key: string, window: number): Promise<number> {
  const counter = rateKey(window, await digest(key));
  await commitWithinLimits(kv.atomic().sum(counter, 1n), "a rate-limit counter");
  return counterValue((await kv.get(counter)).value, "a rate-limit counter");
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
