/**
 * The policy being served, swappable while requests run: a request holds the version it started
 * with until it finishes, and a replaced version's weights are freed only after its last request.
 * Each version decodes through one scheduler, so concurrent requests share forward steps.
 */
import type { CausalLM } from "../model/arch/causal_lm.ts";
import { generate, type GenerateOptions, type Generation } from "../model/decoding/generate.ts";
import { DecodeScheduler, type SchedulerStats } from "../model/decoding/scheduler.ts";
import type { Tokenizer } from "../model/io/tokenizer.ts";

/** One servable policy version. */
export interface PolicyVersion {
  model: CausalLM;
  tokenizer: Tokenizer;
  version: number;
}

/** A version as requests see it: with the way to generate from it. */
export interface ServedPolicy extends PolicyVersion {
  /** `generate` on this version: through its scheduler, or alone when batching is off. */
  generate(prompts: number[][], options: GenerateOptions): Promise<Generation[]>;
}

/** Options of `PolicyHolder`. */
export interface PolicyHolderOptions {
  /** Decode concurrent requests in one loop per version (continuous batching). Default true. */
  batching?: boolean;
  /** Most rows a version's decoding loop runs at once. Default 32. */
  maxBatchRows?: number;
}

/** A hold on one version, released once what needs it is done. */
export interface PolicyLease {
  policy: ServedPolicy;
  /** Ends the hold; the second and later calls do nothing. */
  release(): void;
}

interface Held {
  served: ServedPolicy;
  scheduler?: DecodeScheduler;
  users: number;
  retired: boolean;
}

/** Holds the current policy and hands it out per request. */
export class PolicyHolder {
  readonly #options: PolicyHolderOptions;
  #current: Held;

  constructor(initial: PolicyVersion, options: PolicyHolderOptions = {}) {
    this.#options = options;
    this.#current = this.#serve(initial);
  }

  /** The version new requests get. */
  get version(): number {
    return this.#current.served.version;
  }

  /** The current version's decoding counters (undefined when batching is off). */
  get decoding(): SchedulerStats | undefined {
    return this.#current.scheduler?.stats;
  }

  /** Runs `fn` with the current policy; a swap during `fn` does not free what it uses. */
  async use<T>(fn: (policy: ServedPolicy) => Promise<T>): Promise<T> {
    const lease = this.acquire();
    try {
      return await fn(lease.policy);
    } finally {
      lease.release();
    }
  }

  /** Holds the current policy until `release`: for work that outlives a call, such as a streamed response. */
  acquire(): PolicyLease {
    const held = this.#current;
    held.users++;
    let released = false;
    return {
      policy: held.served,
      release: () => {
        if (released) return;
        released = true;
        held.users--;
        if (held.retired && held.users === 0) free(held);
      },
    };
  }

  /** Serves `next` from now on; the previous version is freed when its last request ends. */
  swap(next: PolicyVersion): void {
    const old = this.#current;
    this.#current = this.#serve(next);
    old.retired = true;
    if (old.users === 0) free(old);
  }

  /** Frees the current version (shutdown). */
  dispose(): void {
    this.#current.retired = true;
    if (this.#current.users === 0) free(this.#current);
  }

  #serve(policy: PolicyVersion): Held {
    if (this.#options.batching === false) {
      const served = {
        ...policy,
        generate: (p: number[][], o: GenerateOptions) => generate(policy.model, policy.tokenizer, p, o),
      };
      return { served, users: 0, retired: false };
    }
    const scheduler = new DecodeScheduler(policy.model, policy.tokenizer, { maxBatchRows: this.#options.maxBatchRows });
    const served = { ...policy, generate: (p: number[][], o: GenerateOptions) => scheduler.submit(p, o) };
    return { served, scheduler, users: 0, retired: false };
  }
}

/** Frees a retired version: its scheduler refuses new work and finishes what it has, then the weights go. */
function free(held: Held): void {
  if (!held.scheduler) return held.served.model.dispose();
  held.scheduler.close().then(() => held.served.model.dispose());
}
