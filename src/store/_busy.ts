/**
 * Riding out SQLite's "database is locked" on a KV file shared by several processes. Deno KV's local
 * backend can fail a write (or, rarely, a read) with that error when another process holds the file's write
 * lock for longer than SQLite waits — seen when a restarted trainer writes while a server and a judge commit
 * under load. Nothing was written when it happens, so the operation is simply tried again after a short,
 * growing pause. Only this error is retried; every other error passes through at once.
 */

/** How long a locked database is waited for, in all, before the error is let through. */
const MAX_WAIT_MS = 30_000;

/** Whether `err` is SQLite's busy error as Deno KV reports it. */
export function isDatabaseLocked(err: unknown): boolean {
  return /database is locked|database is busy|SQLITE_BUSY/i.test((err as Error)?.message ?? "");
}

/** Runs `fn`, again after a pause while it fails with a locked database (up to 30 s in all). */
export async function retryWhileLocked<T>(fn: () => Promise<T>, sleep = pauseMs): Promise<T> {
  let waited = 0;
  for (let attempt = 0;; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (!isDatabaseLocked(err) || waited >= MAX_WAIT_MS) throw err;
      const ms = Math.min(500, 5 * 2 ** attempt) * (0.5 + Math.random() / 2);
      await sleep(ms);
      waited += ms;
    }
  }
}

function pauseMs(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Methods of Deno.Kv that are one round trip and safe to repeat when they failed with a locked database.
const ONE_SHOT = new Set(["get", "getMany", "set", "delete"]);

/**
 * `kv` with every one-shot call (get, getMany, set, delete, and the commit of an atomic operation) retried
 * while the database is locked. Listing is left as it is: an iterator cannot be restarted transparently.
 */
export function retryingKv(kv: Deno.Kv): Deno.Kv {
  return new Proxy(kv, {
    get(target, prop) {
      const value = Reflect.get(target, prop, target);
      if (typeof value !== "function") return value;
      if (prop === "atomic") {
        return () => retryingAtomic(target.atomic());
      }
      const bound = value.bind(target);
      return ONE_SHOT.has(prop as string) ? (...args: unknown[]) => retryWhileLocked(() => bound(...args)) : bound;
    },
  });
}

function retryingAtomic(op: Deno.AtomicOperation): Deno.AtomicOperation {
  const proxy: Deno.AtomicOperation = new Proxy(op, {
    get(target, prop) {
      const value = Reflect.get(target, prop, target);
      if (typeof value !== "function") return value;
      const bound = value.bind(target);
      // The builder methods return the operation itself: hand back the proxy so that commit stays retried.
      if (prop === "commit") return () => retryWhileLocked(() => bound());
      return (...args: unknown[]) => {
        const result = bound(...args);
        return result === target ? proxy : result;
      };
    },
  });
  return proxy;
}
