/** Retry helpers shared by the judges that call remote services (hf, webhook). */

/** Backoff settings; every judge that retries takes these in its options. */
export interface BackoffOptions {
  /** Retries after the first attempt. Default 3. */
  maxRetries?: number;
  /** Delay before the first retry, in milliseconds; doubles at every retry. Default 500. */
  initialBackoffMs?: number;
  /** Upper bound of one delay, in milliseconds. Default 10,000. */
  maxBackoffMs?: number;
}

/** Backoff settings with the defaults filled in. */
export type ResolvedBackoff = Required<BackoffOptions>;

/** Fills in the defaults and checks the values. */
export function resolveBackoff(options: BackoffOptions, what: string): ResolvedBackoff {
  const resolved = {
    maxRetries: options.maxRetries ?? 3,
    initialBackoffMs: options.initialBackoffMs ?? 500,
    maxBackoffMs: options.maxBackoffMs ?? 10_000,
  };
  for (const [name, value] of Object.entries(resolved)) {
    if (!Number.isFinite(value) || value < 0) {
      throw new RangeError(`Cannot create ${what} as '${name}' must be a number >= 0: current value is ${value}`);
    }
  }
  return resolved;
}

/**
 * The delay before retry number `retry` (0-based): exponential, capped, with "equal jitter" (a random
 * value in the upper half) so that many clients rejected together do not come back together. A server's
 * Retry-After, when known, is a floor.
 */
export function backoffDelay(backoff: ResolvedBackoff, retry: number, retryAfterMs = 0): number {
  const ceiling = Math.min(backoff.maxBackoffMs, backoff.initialBackoffMs * 2 ** retry);
  const jittered = ceiling / 2 + Math.random() * (ceiling / 2);
  return Math.min(backoff.maxBackoffMs, Math.max(jittered, retryAfterMs));
}

/** Whether an HTTP status is worth retrying: timeouts, rate limits and server errors, not client errors. */
export function isRetryableStatus(status: number): boolean {
  return status === 408 || status === 425 || status === 429 || status >= 500;
}

/** Parses a Retry-After header (seconds or an HTTP date) into milliseconds; 0 when absent or invalid. */
export function parseRetryAfter(value: string | null, now = Date.now()): number {
  if (value === null) return 0;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isFinite(date) ? Math.max(0, date - now) : 0;
}

/** Sleeps `ms` milliseconds; rejects with the signal's reason as soon as it is aborted. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** A signal for one attempt: aborted by the caller's signal or after `timeoutMs`; `dispose` clears the timer. */
export interface AttemptSignal {
  signal: AbortSignal;
  /** Whether the attempt's own timeout fired (as opposed to the caller aborting). */
  timedOut(): boolean;
  dispose(): void;
}

/**
 * Creates the signal of one attempt. A plain timer rather than `AbortSignal.timeout`, so that it is cleared
 * as soon as the attempt ends (no timer outlives a request; Deno's test sanitizers check).
 */
export function attemptSignal(timeoutMs: number, parent?: AbortSignal): AttemptSignal {
  const controller = new AbortController();
  let fired = false;
  const timer = setTimeout(() => {
    fired = true;
    controller.abort(new DOMException(`Timed out after ${timeoutMs} ms`, "TimeoutError"));
  }, timeoutMs);
  const onAbort = () => controller.abort(parent!.reason);
  if (parent?.aborted) controller.abort(parent.reason);
  else parent?.addEventListener("abort", onAbort, { once: true });
  return {
    signal: controller.signal,
    timedOut: () => fired,
    dispose() {
      clearTimeout(timer);
      parent?.removeEventListener("abort", onAbort);
    },
  };
}
