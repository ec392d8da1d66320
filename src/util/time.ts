/** Waiting that a shutdown can cut short, and giving the event loop a turn. */

/** Resolves after `ms`, or at once when `signal` aborts (a poll loop then sees the abort and ends). */
export function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

const NOTHING = new Uint8Array(0);

/**
 * Gives Deno's event loop one turn, sockets included (bytes written to a streamed response leave, new
 * connections are accepted), for about 15 µs. A microtask (`await Promise.resolve()`, or a tensor's `data()`
 * on wasm) never reaches the loop; `setImmediate` and a `MessageChannel` message run before it polls the
 * network; `setTimeout(0)` does reach it but costs a millisecond or more (timers have a 1 ms resolution). An
 * async op that completes at once, here the digest of nothing, resolves in the loop's poll phase, which
 * moves the sockets too.
 */
export async function yieldToEventLoop(): Promise<void> {
  await crypto.subtle.digest("SHA-1", NOTHING);
}
