/**
 * Continuous batching: every generation request submitted to one scheduler runs in one decoding loop.
 * At each step boundary waiting requests are prefilled and their rows join the running batch (cache
 * merged, left-padded); then one forward step feeds every row its last token; finished rows leave.
 * Results equal `generate` on each request alone: padding keys are masked and positions count real
 * tokens only, and each request samples with its own options and seeded generators.
 */
import { yieldToEventLoop } from "../../util/time.ts";
import * as tf from "../tf.ts";
import { padBatch, type TokenBatch } from "../batch.ts";
import type { CausalLM, KVCache } from "../arch/causal_lm.ts";
import type { GenerateOptions, Generation, TextCodec } from "./types.ts";
import { sampleToken } from "./sampling.ts";
import { advance, appendStep, type DecodePlan, generations, lastLogits, planDecode } from "./_decode.ts";
import { cachedBatch, type CachedRows, disposeRows, keepRows, mergeRows } from "./_cached_rows.ts";

/** What `submit` takes: `generate`'s options except the per-step logits hook (the cache is always used). */
export type ScheduledOptions = Omit<GenerateOptions, "onLogits" | "useCache">;

/** Options of `DecodeScheduler`. */
export interface SchedulerOptions {
  /** Most rows decoding at once; a request with more rows than this still runs, alone. Default 32. */
  maxBatchRows?: number;
}

/** Counters since the scheduler was made, for tests and metrics. */
export interface SchedulerStats {
  /** Forward calls that prefill newly admitted prompts. */
  prefills: number;
  /** Forward calls that decode one token for every running row. */
  steps: number;
  /** Rows summed over decoding steps: `rowSteps / steps` is the mean batch. */
  rowSteps: number;
  /** Tokens sampled (prefill and decoding), eos included. */
  tokens: number;
  /** Requests resolved or rejected. */
  finished: number;
  /** Rows running now. */
  running: number;
  /** Requests waiting for room. */
  waiting: number;
}

interface Request extends DecodePlan {
  options: ScheduledOptions;
  /** Sampling rounds taken so far: every live row of a request takes each round. */
  step: number;
  settled: boolean;
  resolve: (value: Generation[]) => void;
  reject: (reason: Error) => void;
}

/** One batch row: a request's `index`-th prompt and the token it feeds next. */
interface Slot {
  request: Request;
  index: number;
  next: number;
}

/** Tensors of one forward call: the extended cache, the argmax of every row, the logits of sampled rows. */
type StepTensors = { cache: KVCache; argmax?: tf.Tensor1D; sampled?: tf.Tensor2D };

/**
 * Serves `generate` requests for one model through one decoding loop. The loop runs while there is
 * work and stops when there is none (no timer). `close` refuses new requests and lets submitted ones
 * finish; the model stays the caller's to dispose, after `close` resolves.
 */
export class DecodeScheduler {
  readonly #model: CausalLM;
  readonly #codec: TextCodec;
  readonly #maxRows: number;
  #waiting: Request[] = [];
  #slots: Slot[] = [];
  #state?: CachedRows;
  #loop?: Promise<void>;
  #closed = false;
  #stats = { prefills: 0, steps: 0, rowSteps: 0, tokens: 0, finished: 0 };

  constructor(model: CausalLM, codec: TextCodec, options: SchedulerOptions = {}) {
    const maxRows = options.maxBatchRows ?? 32;
    if (!Number.isInteger(maxRows) || maxRows < 1) {
      throw new Error(
        `Cannot make a scheduler as 'maxBatchRows' must be a positive integer: current value is ${maxRows}`,
      );
    }
    this.#model = model;
    this.#codec = codec;
    this.#maxRows = maxRows;
  }

  /** Counters so far and the current load. */
  get stats(): SchedulerStats {
    return { ...this.#stats, running: this.#slots.length, waiting: this.#waiting.length };
  }

  /** Generates a continuation for every prompt, as `generate` does, sharing forward steps with other requests. */
  submit(prompts: number[][], options: ScheduledOptions = {}): Promise<Generation[]> {
    if (this.#closed) return Promise.reject(new Error("Cannot generate: the scheduler is closed"));
    if ((options as GenerateOptions).onLogits) {
      return Promise.reject(new Error("Cannot schedule generation with 'onLogits': call generate() for it"));
    }
    let plan: DecodePlan;
    try {
      plan = planDecode(this.#model.contextLength, this.#codec, prompts, options);
    } catch (err) {
      return Promise.reject(err);
    }
    const { promise, resolve, reject } = Promise.withResolvers<Generation[]>();
    const request: Request = { ...plan, options, step: 0, settled: false, resolve, reject };
    if (plan.budget <= 0 || options.signal?.aborted) {
      resolve(generations(plan.rows));
      return promise;
    }
    this.#waiting.push(request);
    this.#loop ??= this.#run();
    return promise;
  }

  /** Refuses new requests; resolves once every submitted request has finished. */
  close(): Promise<void> {
    this.#closed = true;
    return this.#loop ?? Promise.resolve();
  }

  async #run(): Promise<void> {
    // Requests submitted in the same tick start together.
    await Promise.resolve();
    try {
      while (this.#waiting.length > 0 || this.#slots.length > 0) {
        this.#dropAborted();
        const admitted = this.#admit();
        if (admitted.length > 0) await this.#prefill(admitted);
        this.#dropAborted();
        if (this.#slots.length > 0) await this.#decode();
        // A turn of the event loop after every step: streamed tokens leave, new requests come in. Awaiting a
        // tensor's data on wasm resolves as a microtask and never gives the loop one.
        await yieldToEventLoop();
      }
    } catch (err) {
      // Steps fail only their own requests; anything else fails every request rather than leave one hanging.
      if (this.#state) disposeRows(this.#state);
      this.#state = undefined;
      for (const r of [...this.#slots.map((s) => s.request), ...this.#waiting]) this.#fail(r, err);
      this.#slots = [];
      this.#waiting = [];
    } finally {
      this.#loop = undefined;
    }
  }

  /** Takes waiting requests in order while their rows fit; one too big for any batch runs alone. */
  #admit(): Request[] {
    const admitted: Request[] = [];
    let rows = this.#slots.length;
    while (this.#waiting.length > 0) {
      const size = this.#waiting[0]!.rows.length;
      if (rows > 0 && rows + size > this.#maxRows) break;
      admitted.push(this.#waiting.shift()!);
      rows += size;
    }
    return admitted;
  }

  /** Runs the prompts of `requests` in one forward call, samples their first tokens, and adds their rows. */
  async #prefill(requests: Request[]): Promise<void> {
    const batch = padBatch(requests.flatMap((r) => r.inputs), this.#codec.eosTokenId, "left");
    const slots = requests.flatMap((request) => request.rows.map((_, index) => ({ request, index, next: 0 })));
    let fresh: CachedRows | undefined;
    try {
      const out = tf.tidy(() => this.#forward(batch, undefined, slots));
      fresh = { cache: out.cache, mask: batch.mask, rows: batch.batch, width: batch.length };
      const tokens = await this.#pick(out, slots);
      this.#stats.prefills++;
      const keep = this.#advance(slots, tokens);
      fresh = keepRows(fresh, keep);
      if (fresh) this.#state = mergeRows(this.#state, fresh);
      fresh = undefined;
      this.#slots.push(...keep.map((i) => slots[i]!));
    } catch (err) {
      if (fresh) disposeRows(fresh);
      for (const r of requests) this.#fail(r, err);
    }
  }

  /** One token for every running row, then the finished rows leave. */
  async #decode(): Promise<void> {
    const slots = this.#slots;
    const state = this.#state!;
    try {
      const batch = appendStep(cachedBatch(state), slots.map((s) => s.next));
      const out = tf.tidy(() => this.#forward(batch, state.cache, slots));
      disposeRows(state);
      this.#state = { cache: out.cache, mask: batch.mask, rows: batch.batch, width: batch.past + 1 };
      const tokens = await this.#pick(out, slots);
      this.#stats.steps++;
      this.#stats.rowSteps += slots.length;
      this.#remove(this.#advance(slots, tokens));
    } catch (err) {
      // The batch's cache is lost with the step: every running request fails, waiting ones still run.
      if (this.#state) disposeRows(this.#state);
      this.#state = undefined;
      this.#slots = [];
      for (const s of slots) this.#fail(s.request, err);
    }
  }

  /** The forward call and what picking needs from it: argmax on the device for greedy rows, logits of the rest. */
  #forward(batch: TokenBatch, cache: KVCache | undefined, slots: Slot[]): StepTensors {
    const { logits, cache: next } = lastLogits(this.#model, batch, cache, true);
    const sampled = slots.flatMap((s, b) => s.request.greedy ? [] : [b]);
    return {
      cache: next!,
      argmax: sampled.length < slots.length ? tf.argMax(logits, -1) as tf.Tensor1D : undefined, // [B]
      sampled: sampled.length === 0 ? undefined : sampled.length === slots.length ? logits : tf.gather(logits, sampled), // [B', V]
    };
  }

  /** Reads the step's picks and samples the non-greedy rows, each with its request's options and generator. */
  async #pick(out: StepTensors, slots: Slot[]): Promise<number[]> {
    try {
      const argmax = out.argmax ? await out.argmax.data() : undefined;
      const logits = out.sampled ? (await out.sampled.data()) as Float32Array : undefined;
      const V = out.sampled?.shape[1] ?? 0;
      let j = 0;
      return slots.map(({ request, index }, b) => {
        if (request.greedy) return argmax![b]!;
        const row = logits!.subarray(j * V, ++j * V);
        return sampleToken(row, request.options, request.rows[index]!.rng);
      });
    } finally {
      tf.dispose([out.argmax, out.sampled].filter((t) => t !== undefined));
    }
  }

  /**
   * Records each row's token (streaming it, finding eos and stop strings), settles requests whose rows
   * are all done, and returns the indices of the rows that go on. A throwing `onToken` fails its request only.
   */
  #advance(slots: Slot[], tokens: number[]): number[] {
    const keep: number[] = [];
    let b = 0;
    while (b < slots.length) {
      const request = slots[b]!.request;
      const first = b;
      while (b < slots.length && slots[b]!.request === request) b++;
      const last = request.step === request.budget - 1;
      try {
        for (let i = first; i < b; i++) {
          const slot = slots[i]!;
          advance(request.rows[slot.index]!, slot.index, tokens[i]!, this.#codec, { ...request.options, last });
          slot.next = tokens[i]!;
        }
      } catch (err) {
        this.#fail(request, err);
        continue;
      }
      this.#stats.tokens += b - first;
      request.step++;
      if (request.rows.every((r) => r.done)) this.#settle(request);
      else for (let i = first; i < b; i++) if (!request.rows[slots[i]!.index]!.done) keep.push(i);
    }
    return keep;
  }

  /** Settles running requests whose signal fired (with what they have) and waiting ones (with nothing). */
  #dropAborted(): void {
    for (const r of this.#waiting) if (r.options.signal?.aborted) this.#settle(r);
    this.#waiting = this.#waiting.filter((r) => !r.settled);
    if (this.#slots.some((s) => s.request.options.signal?.aborted)) {
      for (const s of this.#slots) if (s.request.options.signal?.aborted) this.#settle(s.request);
      this.#remove(this.#slots.flatMap((s, i) => s.request.settled ? [] : [i]));
    }
  }

  /** Keeps the running rows at `keep` (ascending), shrinking the cache. */
  #remove(keep: number[]): void {
    if (keep.length === this.#slots.length) return;
    this.#slots = keep.map((i) => this.#slots[i]!);
    this.#state = this.#state && keepRows(this.#state, keep);
  }

  #settle(request: Request): void {
    if (request.settled) return;
    request.settled = true;
    this.#stats.finished++;
    request.resolve(generations(request.rows));
  }

  #fail(request: Request, err: unknown): void {
    if (request.settled) return;
    request.settled = true;
    this.#stats.finished++;
    request.reject(err instanceof Error ? err : new Error(String(err)));
  }
}
