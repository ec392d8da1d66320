/**
 * The DPO engine: a policy and a frozen reference (weights of its own, or the policy's base with its
 * LoRA adapter disabled), reference log-probs cached per pair and reference version, one forward over
 * chosen and rejected together, gradient accumulation, clipping, NaN-safe updates, reference refreshes
 * (iterative DPO and TR-DPO), and checkpoints that resume exactly. The offline CLI and the online worker
 * both drive this class.
 */
import * as tf from "../model/tf.ts";
import type { CausalLM } from "../model/arch/causal_lm.ts";
import { buildScoringBatch, scoreRows, type ScoringBatch, type TokenPair } from "../model/logprobs.ts";
import type { DpoConfig } from "./config.ts";
import { ktoLoss, preferenceLoss } from "./losses.ts";
import { clipCoefficient, globalNorm, learningRateAt, Optimizer } from "./optimizer.ts";

/** A preference pair as token ids (no eos: the scorer appends it). */
export interface PreferencePair {
  promptIds: number[];
  chosenIds: number[];
  rejectedIds: number[];
  /** What ends both completions instead of the trainer's `eosId`: a chat template's end-of-turn. */
  eosId?: number;
}

/** What one optimizer step reports, with TRL's metric names. */
export interface StepMetrics {
  step: number;
  loss: number;
  grad_norm: number;
  learning_rate: number;
  "rewards/chosen": number;
  "rewards/rejected": number;
  "rewards/accuracies": number;
  "rewards/margins": number;
  "logps/chosen": number;
  "logps/rejected": number;
  "logits/chosen": number;
  "logits/rejected": number;
  /**
   * Mean of log π(y|x) − log π_ref(y|x) over the chosen and rejected completions: for pairs sampled
   * from the policy (online), a Monte-Carlo estimate of KL(π ‖ π_ref), as TRL's online trainers report it.
   */
  "objective/kl": number;
  /** True when the loss or a gradient was not finite and the update was skipped. */
  skipped: boolean;
  /** Updates skipped so far. */
  skipped_steps: number;
  /** The reference version the step was measured against. */
  ref_version: number;
}

/** Unpaired binary feedback (a thumbs up or down on one completion), as token ids. */
export interface KtoExample {
  promptIds: number[];
  completionIds: number[];
  desirable: boolean;
  /** The completion's terminator, when not the trainer's eos (a chat answer's end-of-turn). */
  eosId?: number;
}

/** What one KTO step reports (TRL's KTO metric names). */
export interface KtoMetrics {
  step: number;
  loss: number;
  grad_norm: number;
  learning_rate: number;
  /** The batch KL reference point z0. */
  kl: number;
  "rewards/chosen": number;
  "rewards/rejected": number;
  "logps/chosen": number;
  "logps/rejected": number;
  skipped: boolean;
  skipped_steps: number;
  ref_version: number;
}

/** Options of `DpoTrainer`. */
export interface DpoTrainerOptions {
  /** The model being trained; its variables (its adapter's, when it has one) are updated in place. */
  policy: CausalLM;
  /** The reference: separate weights, never given a gradient; null when the policy has a LoRA adapter. */
  reference: CausalLM | null;
  config: DpoConfig;
  /** Appended after every completion. */
  eosId: number;
  /** Context for an empty prompt; default `eosId`. */
  bosId?: number;
  /**
   * Keep an exponential moving average of the trainable weights with this decay per optimizer step (at most
   * `emaDecayAt`); 0 or absent: none.
   */
  emaDecay?: number;
  /**
   * Adaptive β (the adaptive KL controller of Ziegler et al., 2019): after every DPO update β is multiplied by
   * 1 + 0.1·clip(KL / klTarget − 1, −0.2, 0.2), KL the step's `objective/kl`, so that β rises while the policy
   * runs further from the reference than the target and falls while it stays closer. 0 or absent: β stays fixed.
   */
  klTarget?: number;
}

/** β after a DPO update that measured `kl` (see `DpoTrainerOptions.klTarget`), kept within [1e-3, 10]. */
export function adaptBeta(beta: number, kl: number, target: number): number {
  if (!(target > 0) || !Number.isFinite(kl)) return beta;
  const error = Math.max(-0.2, Math.min(0.2, kl / target - 1));
  return Math.max(1e-3, Math.min(10, beta * (1 + 0.1 * error)));
}

/**
 * The decay of the policy's exponential moving average after optimizer step `step` (0-based): `decay`, but
 * at most (1 + step) / (10 + step), so that the first steps are not averaged with the starting weights at
 * full weight (the num_updates rule of TensorFlow's ExponentialMovingAverage).
 */
export function emaDecayAt(decay: number, step: number): number {
  return Math.min(decay, (1 + step) / (10 + step));
}

interface RefLogps {
  chosen: number;
  rejected: number;
  version: number;
}

/** The trainer's own state, saved with a checkpoint. */
export interface TrainerState {
  step: number;
  refVersion: number;
  skippedSteps: number;
}

/** Runs DPO steps on batches of preference pairs. */
export class DpoTrainer {
  readonly policy: CausalLM;
  /** Null: the reference is the policy with its adapter disabled. */
  readonly reference: CausalLM | null;
  readonly config: DpoConfig;
  readonly optimizer: Optimizer;
  /** Optimizer steps taken (skipped ones included: they consume their batch). */
  step = 0;
  /** Bumped at every reference refresh; cached reference log-probs of older versions are recomputed. */
  refVersion = 0;
  skippedSteps = 0;
  /** Sequences scored under the reference so far (the cache's effect, for tests and benchmarks). */
  referenceRowsScored = 0;
  /**
   * Where the last `trainStep` spent its time, in seconds: reference log-probs (zero when cached),
   * policy forward and backward with the loss and its statistics, and clipping plus the optimizer update.
   */
  lastStepTimes = { reference_s: 0, forward_backward_s: 0, update_s: 0 };
  /**
   * Whether a pair's chosen and rejected completions (and any other completions of the same prompt in a batch)
   * share one row after a single copy of the prompt (`ScoringOptions.sharePrompts`). Benchmarks turn it off to
   * measure the layout TRL runs.
   */
  sharePrompts = true;
  #eosId: number;
  #bosId?: number;
  #refCache = new Map<string, RefLogps>();
  /** The moving average of the trainable weights by parameter name (`emaDecay` > 0), or null. */
  #ema: Map<string, tf.Variable> | null = null;
  /** The moving average's decay per optimizer step (0: none). */
  readonly emaDecay: number;
  /** β of the next step: `config.beta`, adapted after every step toward `klTarget` when one is set. */
  beta: number;
  readonly klTarget: number;

  constructor(options: DpoTrainerOptions) {
    if ((options.reference === null) !== (options.policy.adapter !== undefined)) {
      throw new Error(
        options.reference === null
          ? "Cannot train without a reference model unless the policy has a LoRA adapter (its base is the reference)"
          : "Cannot train a LoRA policy against a separate reference: its base with the adapter disabled is the reference",
      );
    }
    this.policy = options.policy;
    this.reference = options.reference;
    this.config = options.config;
    this.#eosId = options.eosId;
    this.#bosId = options.bosId;
    this.optimizer = new Optimizer(options.policy.trainableParams(), {
      name: options.config.optimizer,
      learningRate: options.config.learning_rate,
      weightDecay: options.config.weight_decay,
    });
    const decay = options.emaDecay ?? 0;
    if (!(decay >= 0 && decay < 1)) {
      throw new Error(`Cannot keep a moving average of the weights as its decay must be in [0, 1): ${decay}`);
    }
    this.emaDecay = decay;
    this.beta = options.config.beta;
    this.klTarget = options.klTarget ?? 0;
    if (decay > 0) {
      this.#ema = new Map([...this.policy.trainableParams()].map(([name, v]) => [name, copyVariable(v)]));
    }
  }

  /** Whether the trainer keeps a moving average of the policy's weights (`emaDecay` > 0). */
  get hasEma(): boolean {
    return this.#ema !== null;
  }

  /**
   * Runs `fn` with the policy's trainable weights replaced by their moving average (`emaDecay`), then puts
   * the trained weights back: what is published, served and evaluated is the average, what trains is not.
   * Without an average, runs `fn` on the policy as it is. Nothing may train while `fn` runs.
   */
  async withEmaWeights<T>(fn: () => T | Promise<T>): Promise<T> {
    if (!this.#ema) return await fn();
    const params = this.policy.trainableParams();
    const trained = new Map<string, tf.Tensor>();
    for (const [name, avg] of this.#ema) {
      const p = params.get(name)!;
      trained.set(name, p.clone());
      p.assign(avg);
    }
    try {
      return await fn();
    } finally {
      for (const [name, t] of trained) {
        params.get(name)!.assign(t);
        t.dispose();
      }
    }
  }

  /** The moving average's weights by parameter name; empty without one. */
  emaWeights(): Map<string, tf.Variable> {
    return new Map(this.#ema ?? []);
  }

  /** The trainer's counters, for a checkpoint. */
  state(): TrainerState {
    return { step: this.step, refVersion: this.refVersion, skippedSteps: this.skippedSteps };
  }

  /** Restores counters from a checkpoint (the optimizer state is restored separately). */
  restore(state: TrainerState): void {
    this.step = state.step;
    this.refVersion = state.refVersion;
    this.skippedSteps = state.skippedSteps;
    this.#refCache.clear();
  }

  private scoringOptions() {
    return {
      eosId: this.#eosId,
      bosId: this.#bosId,
      maxLength: Math.min(this.config.max_length ?? Infinity, this.policy.contextLength),
      sharePrompts: this.sharePrompts,
    };
  }

  /** chosen rows then rejected rows, in one batch: one forward pass serves both, and they share their prompt. */
  private layout(pairs: PreferencePair[]) {
    const rows: TokenPair[] = [
      ...pairs.map((p) => ({ promptIds: p.promptIds, completionIds: p.chosenIds, eosId: p.eosId })),
      ...pairs.map((p) => ({ promptIds: p.promptIds, completionIds: p.rejectedIds, eosId: p.eosId })),
    ];
    return buildScoringBatch(rows, this.scoringOptions());
  }

  /**
   * Reference log-probs of each pair, outside any gradient. With `precompute_ref_log_probs` they are
   * computed once per pair and reference version and then served from the cache.
   */
  async referenceLogps(pairs: PreferencePair[]): Promise<{ chosen: number[]; rejected: number[] }> {
    const cache = this.config.precompute_ref_log_probs;
    const missing = pairs.filter((p) => !cache || this.#refCache.get(pairKey(p))?.version !== this.refVersion);
    const size = this.config.per_device_train_batch_size;
    for (let i = 0; i < missing.length; i += size) {
      const chunk = missing.slice(i, i + size);
      const sums = this.#referenceScores(this.layout(chunk));
      this.referenceRowsScored += 2 * chunk.length;
      const values = await sums.data();
      sums.dispose();
      chunk.forEach((p, j) => {
        this.#refCache.set(pairKey(p), {
          chosen: values[j]!,
          rejected: values[chunk.length + j]!,
          version: this.refVersion,
        });
      });
    }
    const got = pairs.map((p) => this.#refCache.get(pairKey(p))!);
    if (!cache) this.#refCache.clear();
    return { chosen: got.map((r) => r.chosen), rejected: got.map((r) => r.rejected) };
  }

  /** Summed log-probs under the reference, without gradient. */
  #referenceScores(batch: ScoringBatch): tf.Tensor1D {
    if (this.reference) return tf.tidy(() => scoreRows(this.reference!, batch).logps);
    const adapter = this.policy.adapter!;
    adapter.enabled = false;
    try {
      return tf.tidy(() => scoreRows(this.policy, batch).logps);
    } finally {
      adapter.enabled = true;
    }
  }

  /** Runs the policy's forward passes of a step in training mode (the adapter's dropout, unless disabled). */
  #training<T>(fn: () => T): T {
    const adapter = this.policy.adapter;
    if (!adapter || this.config.disable_dropout) return fn();
    adapter.training = true;
    try {
      return fn();
    } finally {
      adapter.training = false;
    }
  }

  /** Forgets cached reference log-probs (the online worker drops pairs it has trained on). */
  forgetReference(pairs: PreferencePair[]): void {
    for (const p of pairs) this.#refCache.delete(pairKey(p));
  }

  /**
   * One optimizer step on `pairs`, split into `gradient_accumulation_steps` micro-batches whose
   * gradients add up to the gradient of the mean loss over all pairs. A non-finite loss or gradient
   * skips the update (counted in `skipped_steps`); the step still consumes its batch.
   */
  async trainStep(pairs: PreferencePair[], totalSteps: number): Promise<StepMetrics> {
    if (pairs.length === 0) throw new Error("Cannot take a DPO step on an empty batch");
    const t0 = performance.now();
    const refs = await this.referenceLogps(pairs);
    const t1 = performance.now();
    const micro = Math.ceil(pairs.length / this.config.gradient_accumulation_steps);
    const vars = this.policy.trainableVariables();
    const sums = new Map<string, tf.Tensor>();
    const stats = {
      loss: 0,
      chosen: [] as number[],
      rejected: [] as number[],
      logitsChosen: 0,
      logitsRejected: 0,
      kl: 0,
    };
    const lengths = { chosen: 0, rejected: 0 };
    const vocab = this.policy.config.vocab_size;
    for (let start = 0; start < pairs.length; start += micro) {
      const part = pairs.slice(start, start + micro);
      const batch = this.layout(part);
      const B = part.length;
      const counts = batch.counts;
      const weight = B / pairs.length;
      const kept: tf.Tensor[] = [];
      const { value, grads } = this.#training(() =>
        tf.variableGrads(() => {
          const { logps, logitSums } = scoreRows(this.policy, batch, true); // [2B]
          const out = preferenceLoss({
            policyChosen: tf.slice(logps, 0, B) as tf.Tensor1D,
            policyRejected: tf.slice(logps, B, B) as tf.Tensor1D,
            refChosen: tf.tensor1d(refs.chosen.slice(start, start + B)),
            refRejected: tf.tensor1d(refs.rejected.slice(start, start + B)),
            chosenLengths: tf.tensor1d(counts.slice(0, B)),
            rejectedLengths: tf.tensor1d(counts.slice(B)),
          }, {
            beta: this.beta,
            labelSmoothing: this.config.label_smoothing,
            lossTypes: this.config.loss_type,
            lossWeights: this.config.loss_weights,
            lengthNormalize: this.config.length_normalize,
          });
          kept.push(
            ...[out.chosenRewards, out.rejectedRewards, out.chosenLogps, out.rejectedLogps, logitSums, logps].map(
              tf.keep,
            ),
          );
          return tf.mul(out.loss, weight) as tf.Scalar;
        }, vars)
      );
      const [chosenRewards, rejectedRewards, chosenLogps, rejectedLogps, logitSums, rawLogps] = await Promise.all(
        kept.map((t) => t.data()),
      );
      tf.dispose(kept);
      stats.loss += (await value.data())[0]!;
      value.dispose();
      for (let j = 0; j < B; j++) {
        stats.chosen.push(chosenRewards![j]!, chosenLogps![j]!);
        stats.rejected.push(rejectedRewards![j]!, rejectedLogps![j]!);
      }
      for (let j = 0; j < B; j++) {
        stats.kl += rawLogps![j]! - refs.chosen[start + j]! + rawLogps![B + j]! - refs.rejected[start + j]!;
      }
      stats.logitsChosen += sumOf(logitSums!.subarray(0, B));
      stats.logitsRejected += sumOf(logitSums!.subarray(B));
      lengths.chosen += sumOf(counts.slice(0, B));
      lengths.rejected += sumOf(counts.slice(B));
      for (const v of vars) {
        const g = grads[v.name]!;
        const prev = sums.get(v.name);
        sums.set(v.name, prev ? tf.tidy(() => tf.add(prev, g)) : tf.keep(g));
        if (prev) {
          prev.dispose();
          g.dispose();
        }
      }
    }
    const t2 = performance.now();
    const update = await this.applyUpdate(sums, stats.loss, totalSteps);
    const t3 = performance.now();
    this.lastStepTimes = {
      reference_s: (t1 - t0) / 1e3,
      forward_backward_s: (t2 - t1) / 1e3,
      update_s: (t3 - t2) / 1e3,
    };
    const metrics = summarize(stats, lengths, vocab, pairs.length, {
      step: this.step,
      ...update,
      skipped_steps: this.skippedSteps,
      ref_version: this.refVersion,
    });
    if (!update.skipped) this.beta = adaptBeta(this.beta, metrics["objective/kl"], this.klTarget);
    this.refreshReferenceIfDue();
    return metrics;
  }

  /**
   * The end of every step: clip the summed gradients (keyed by variable name; consumed), schedule the
   * learning rate, and update, or skip the update when the loss or a gradient is not finite.
   */
  private async applyUpdate(sums: Map<string, tf.Tensor>, loss: number, totalSteps: number) {
    const named = new Map([...this.policy.trainableParams()].map(([name, v]) => [name, sums.get(v.name)!]));
    // The clipping scale goes into the update: no scaled copy of the gradients.
    const norm = await globalNorm([...named.values()]);
    const lr = learningRateAt(this.step, {
      base: this.config.learning_rate,
      schedule: this.config.lr_scheduler_type,
      warmupSteps: this.config.warmup_steps,
      totalSteps,
    });
    const skipped = !Number.isFinite(norm) || !Number.isFinite(loss);
    if (skipped) this.skippedSteps++;
    else {
      this.optimizer.step(named, lr, clipCoefficient(norm, this.config.max_grad_norm));
      this.#updateEma();
    }
    tf.dispose([...named.values()]);
    this.step++;
    return { grad_norm: norm, learning_rate: lr, skipped };
  }

  /**
   * One KTO step on unpaired feedback (TRL's KTOTrainer): the reference point is the batch's KL
   * estimate from mismatched pairs (prompt i with the completion of example i−1, as TRL pairs them),
   * scored without gradient under policy and reference. The batch needs at least two examples.
   */
  async ktoStep(examples: KtoExample[], totalSteps: number): Promise<KtoMetrics> {
    const n = examples.length;
    if (n < 2) throw new Error(`Cannot take a KTO step: the KL estimate needs at least 2 examples, got ${n}`);
    const rows = examples.map((e) => ({ promptIds: e.promptIds, completionIds: e.completionIds, eosId: e.eosId }));
    const mismatched = examples.map((e, i) => {
      const other = examples[(i + n - 1) % n]!;
      return { promptIds: e.promptIds, completionIds: other.completionIds, eosId: other.eosId };
    });
    const all = buildScoringBatch([...rows, ...mismatched], this.scoringOptions());
    const mismatchedBatch = buildScoringBatch(mismatched, this.scoringOptions());
    const refAll = this.#referenceScores(all);
    const klPolicy = tf.tidy(() => scoreRows(this.policy, mismatchedBatch).logps);
    const [refValues, klPolicyValues] = await Promise.all([refAll.data(), klPolicy.data()]);
    tf.dispose([refAll, klPolicy]);
    this.referenceRowsScored += 2 * n;
    const batch = buildScoringBatch(rows, this.scoringOptions());
    const kept: tf.Tensor[] = [];
    const vars = this.policy.trainableVariables();
    const { value, grads } = this.#training(() =>
      tf.variableGrads(() => {
        const { logps } = scoreRows(this.policy, batch);
        const out = ktoLoss({
          policy: logps,
          ref: tf.tensor1d(refValues.slice(0, n)),
          desirable: tf.tensor1d(examples.map((e) => (e.desirable ? 1 : 0))),
          klPolicy: tf.tensor1d(klPolicyValues),
          klRef: tf.tensor1d(refValues.slice(n)),
        }, {
          beta: this.beta,
          desirableWeight: this.config.desirable_weight,
          undesirableWeight: this.config.undesirable_weight,
        });
        kept.push(tf.keep(out.kl), tf.keep(out.rewards), tf.keep(logps));
        return out.loss;
      }, vars)
    );
    const [kl, rewards, logps] = await Promise.all(kept.map((t) => t.data()));
    tf.dispose(kept);
    const loss = (await value.data())[0]!;
    value.dispose();
    const sums = new Map(vars.map((v) => [v.name, grads[v.name]!]));
    const update = await this.applyUpdate(sums, loss, totalSteps);
    const mean = (pick: (i: number) => number, want: boolean) => {
      const idx = examples.map((e, i) => (e.desirable === want ? i : -1)).filter((i) => i >= 0);
      return idx.length ? idx.reduce((a, i) => a + pick(i), 0) / idx.length : 0;
    };
    const metrics: KtoMetrics = {
      step: this.step,
      loss,
      ...update,
      kl: kl![0]!,
      "rewards/chosen": mean((i) => rewards![i]!, true),
      "rewards/rejected": mean((i) => rewards![i]!, false),
      "logps/chosen": mean((i) => logps![i]!, true),
      "logps/rejected": mean((i) => logps![i]!, false),
      skipped_steps: this.skippedSteps,
      ref_version: this.refVersion,
    };
    this.refreshReferenceIfDue();
    return metrics;
  }

  /** avg ← d·avg + (1 − d)·θ after an update, d = `emaDecayAt(emaDecay, step)`. */
  #updateEma(): void {
    if (!this.#ema) return;
    const d = emaDecayAt(this.emaDecay, this.step);
    const params = this.policy.trainableParams();
    tf.tidy(() => {
      for (const [name, avg] of this.#ema!) avg.assign(tf.add(tf.mul(avg, d), tf.mul(params.get(name)!, 1 - d)));
    });
  }

  /** Frees the moving average's weights (the models and the optimizer are freed by their owners). */
  disposeEma(): void {
    for (const v of this.#ema?.values() ?? []) v.dispose();
    this.#ema = null;
  }

  /** Applies the reference schedule after a step: hard copy every N steps, or the TR-DPO soft mix. */
  private refreshReferenceIfDue(): void {
    const c = this.config;
    if (c.ref_refresh_steps !== undefined && this.step % c.ref_refresh_steps === 0) {
      this.refreshReference(1);
    } else if (c.sync_ref_model && this.step % c.ref_model_sync_steps === 0) {
      this.refreshReference(c.ref_model_mixup_alpha);
    }
  }

  /** π_ref ← α·π_θ + (1−α)·π_ref (α = 1: a hard copy); cached reference log-probs become stale. */
  refreshReference(alpha: number): void {
    const reference = this.reference;
    if (!reference) throw new Error("Cannot refresh the reference of a LoRA policy: the reference is its frozen base");
    tf.tidy(() => {
      for (const [name, ref] of reference.params) {
        const p = this.policy.params.get(name)!;
        ref.assign(alpha === 1 ? p : tf.add(tf.mul(p, alpha), tf.mul(ref, 1 - alpha)));
      }
    });
    this.refVersion++;
  }
}

function copyVariable(v: tf.Variable): tf.Variable {
  const copy = v.clone();
  const out = tf.variable(copy, false);
  copy.dispose();
  return out;
}

function pairKey(p: PreferencePair): string {
  return `${p.promptIds.join(",")}|${p.chosenIds.join(",")}|${p.rejectedIds.join(",")}|${p.eosId ?? ""}`;
}

function sumOf(values: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < values.length; i++) s += values[i]!;
  return s;
}

function summarize(
  stats: {
    loss: number;
    chosen: number[];
    rejected: number[];
    logitsChosen: number;
    logitsRejected: number;
    kl: number;
  },
  lengths: { chosen: number; rejected: number },
  vocab: number,
  n: number,
  rest: Omit<StepMetrics, "loss" | `rewards/${string}` | `logps/${string}` | `logits/${string}` | "objective/kl">,
): StepMetrics {
  let chosenReward = 0, rejectedReward = 0, chosenLogp = 0, rejectedLogp = 0, correct = 0;
  for (let j = 0; j < n; j++) {
    const rc = stats.chosen[2 * j]!, rr = stats.rejected[2 * j]!;
    chosenReward += rc;
    rejectedReward += rr;
    chosenLogp += stats.chosen[2 * j + 1]!;
    rejectedLogp += stats.rejected[2 * j + 1]!;
    if (rc > rr) correct++;
  }
  return {
    ...rest,
    loss: stats.loss,
    "rewards/chosen": chosenReward / n,
    "rewards/rejected": rejectedReward / n,
    "rewards/accuracies": correct / n,
    "rewards/margins": (chosenReward - rejectedReward) / n,
    "logps/chosen": chosenLogp / n,
    "logps/rejected": rejectedLogp / n,
    "logits/chosen": stats.logitsChosen / (lengths.chosen * vocab),
    "logits/rejected": stats.logitsRejected / (lengths.rejected * vocab),
    "objective/kl": stats.kl / (2 * n),
  };
}
