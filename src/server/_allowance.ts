/**
 * A leased allowance: how one instance spends its share of a rate limit counted across instances. Rather
 * than a KV read and commit per request, the instance takes a block of a key's tokens for the current
 * window (`take`: in KV, atomically, never past the limit) and admits requests from it locally until it
 * is spent, then takes another. Requests that arrive while a take is on its way wait for it, and only one
 * take per key is on its way at a time, so concurrent requests never take more than they spend.
 *
 * Exact in the safe direction: the tokens every instance takes add up to at most the limit, and each
 * admits at most what it took, so a window never admits more than the limit, whatever the number of
 * instances. What an instance took and has not spent when the window ends is lost to that window: at most
 * `floor(limit / 64) - 1` tokens per instance (a block is at most 1/64 of the limit, and at least one of it
 * is spent at once). A limit under 128 is taken one token at a time, so it is counted exactly. A block is
 * sized to the key's recent rate on this instance (about 100 ms of its requests), or to the requests
 * waiting, whichever is more: a slow client spends blocks of one, exactly as a per-request count would.
 */

/** Takes up to `want` tokens of `key`'s window starting at `window` (ms); resolves to how many it got. */
export type TakeTokens = (key: string, window: number, want: number) => Promise<number>;

/** Options of `LeasedAllowance`. */
export interface AllowanceOptions {
  /** Tokens per window per key, over every instance. */
  limit: number;
  /** Where tokens are taken from: KV for a limit across instances. */
  take: TakeTokens;
  /** A block is at most `limit / blockDivisor` tokens (at least 1); default 64. */
  blockDivisor?: number;
  /** A block lasts about this long at the key's recent rate, ms; default 100. */
  leaseMs?: number;
  /** The clock the rate is measured on (ms); default `performance.now`. */
  clock?: () => number;
}

interface Waiter {
  resolve: (admitted: boolean) => void;
  reject: (err: unknown) => void;
}

/** One key's allowance in one window. */
interface KeyState {
  window: number;
  /** Taken and not yet spent. */
  tokens: number;
  /** The window's tokens are all taken (by any instance): refuse without asking again. */
  exhausted: boolean;
  taking: boolean;
  waiting: Waiter[];
  /** When the last take was made (clock ms), and how many tokens were spent since: the key's rate. */
  takenAt: number | undefined;
  spentSince: number;
}

// The most keys remembered before the states of windows past are dropped.
const MAX_KEYS = 10_000;

/** See the module comment. */
export class LeasedAllowance {
  readonly #limit: number;
  readonly #take: TakeTokens;
  readonly #maxBlock: number;
  readonly #leaseMs: number;
  readonly #clock: () => number;
  readonly #states = new Map<string, KeyState>();

  constructor(options: AllowanceOptions) {
    this.#limit = options.limit;
    this.#take = options.take;
    this.#maxBlock = Math.max(1, Math.floor(options.limit / (options.blockDivisor ?? 64)));
    this.#leaseMs = options.leaseMs ?? 100;
    this.#clock = options.clock ?? (() => performance.now());
  }

  /**
   * Spends one of `key`'s tokens of the window starting at `window` (ms): `true` when the request is
   * admitted, `false` when the window's limit is used up. Synchronous while the block lasts.
   */
  admit(key: string, window: number): boolean | Promise<boolean> {
    const state = this.#state(key, window);
    if (state.tokens > 0 && state.waiting.length === 0) {
      state.tokens--;
      state.spentSince++;
      return true;
    }
    if (state.exhausted && state.tokens === 0) return false;
    const admitted = new Promise<boolean>((resolve, reject) => state.waiting.push({ resolve, reject }));
    if (!state.taking) this.#refill(key, state);
    return admitted;
  }

  #state(key: string, window: number): KeyState {
    const known = this.#states.get(key);
    if (known?.window === window) return known;
    if (known === undefined && this.#states.size >= MAX_KEYS) {
      for (const [k, s] of this.#states) if (s.window < window && !s.taking) this.#states.delete(k);
    }
    // A new window starts with nothing taken; the key's rate carries over. A take still on its way for
    // the old window serves the requests that wait for it there.
    const state: KeyState = {
      window,
      tokens: 0,
      exhausted: false,
      taking: false,
      waiting: [],
      takenAt: known?.takenAt,
      spentSince: known?.spentSince ?? 0,
    };
    this.#states.set(key, state);
    return state;
  }

  /** Takes blocks until every waiting request is admitted or the window's tokens run out. */
  async #refill(key: string, state: KeyState): Promise<void> {
    state.taking = true;
    try {
      while (state.waiting.length > 0 && !state.exhausted) {
        const want = this.#blockSize(state);
        const got = await this.#take(key, state.window, want);
        state.takenAt = this.#clock();
        state.spentSince = 0;
        // Fewer than asked for: the window's last tokens, taken by this instance or another.
        if (got < want) state.exhausted = true;
        state.tokens += got;
        while (state.tokens > 0 && state.waiting.length > 0) {
          state.tokens--;
          state.spentSince++;
          state.waiting.shift()!.resolve(true);
        }
      }
      for (const waiter of state.waiting.splice(0)) waiter.resolve(false);
    } catch (err) {
      for (const waiter of state.waiting.splice(0)) waiter.reject(err);
    } finally {
      state.taking = false;
    }
  }

  /** The waiting requests, or about `leaseMs` of the key's recent rate, whichever is more, within the cap. */
  #blockSize(state: KeyState): number {
    const elapsed = state.takenAt === undefined ? 0 : this.#clock() - state.takenAt;
    const byRate = elapsed > 0 ? Math.ceil((state.spentSince * this.#leaseMs) / elapsed) : 1;
    return Math.min(this.#maxBlock, this.#limit, Math.max(state.waiting.length, byRate, 1));
  }
}
