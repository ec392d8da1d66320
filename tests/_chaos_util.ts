/** Small helpers of the chaos harness: a cancellable sleep, a seeded generator, a shuffle and a KV count. */

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (ms <= 0 || signal?.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** A small seeded generator (mulberry32), so that a schedule can be replayed from its seed. */
export { mulberry32 } from "../src/tasks/arithmetic.ts";

/** Shuffles `items` in place with `rand` (Fisher–Yates) and returns them. */
export function shuffle<T>(items: T[], rand: () => number): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [items[i], items[j]] = [items[j]!, items[i]!];
  }
  return items;
}

/** How many entries a prefix has, counting up to `limit`. */
export async function count(kv: Deno.Kv, prefix: Deno.KvKey, limit: number): Promise<number> {
  let n = 0;
  for await (const _ of kv.list({ prefix }, { limit })) n++;
  return n;
}
