/**
 * Offline DPO over a fixed dataset. The batch of every step is a pure function of the seed and the
 * step number (a seeded shuffle per epoch), so a run resumed from a checkpoint sees exactly the
 * batches it would have seen without stopping.
 */
import { createRng } from "../model/decoding/sampling.ts";
import type { DpoConfig } from "./config.ts";
import type { DpoTrainer, KtoExample, KtoMetrics, PreferencePair, StepMetrics } from "./trainer.ts";

/** Pairs per optimizer step. */
export function pairsPerStep(config: DpoConfig): number {
  return config.per_device_train_batch_size * config.gradient_accumulation_steps;
}

/** Optimizer steps for a dataset of `n` pairs: `max_steps`, else `num_train_epochs` passes. */
export function plannedSteps(n: number, config: DpoConfig): number {
  const perEpoch = Math.ceil(n / pairsPerStep(config));
  return config.max_steps ?? Math.max(1, Math.ceil(config.num_train_epochs * perEpoch));
}

/** Indices of the pairs of step `step` (0-based): epoch e is a shuffle seeded by (seed, e). */
export function batchIndices(n: number, step: number, config: DpoConfig): number[] {
  const size = pairsPerStep(config);
  const perEpoch = Math.ceil(n / size);
  const epoch = Math.floor(step / perEpoch);
  const within = step % perEpoch;
  const rng = createRng((config.seed * 1_000_003 + epoch) >>> 0);
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return order.slice(within * size, (within + 1) * size);
}

/** Options of `trainOffline`: preference pairs (DPO and friends) or unpaired feedback (KTO). */
export interface OfflineOptions {
  trainer: DpoTrainer;
  /** Preference pairs, trained with `trainStep`; or, instead: */
  pairs?: PreferencePair[];
  /** unpaired feedback, trained with `ktoStep`. */
  kto?: KtoExample[];
  /** Called after every optimizer step. */
  onStep?: (metrics: StepMetrics | KtoMetrics) => void | Promise<void>;
  /** Called every `saveSteps` steps and after the last one, to write a checkpoint. */
  onSave?: (step: number) => Promise<void>;
  saveSteps?: number;
  /** Stops after the current step (Ctrl-C); `onSave` runs for the step reached. */
  signal?: AbortSignal;
}

/** Trains from the trainer's current step to the planned number of steps. */
export async function trainOffline(options: OfflineOptions): Promise<void> {
  const { trainer, pairs, kto } = options;
  if ((pairs === undefined) === (kto === undefined)) throw new Error("Cannot train: give either pairs or kto examples");
  const n = pairs?.length ?? kto!.length;
  if (n === 0) throw new Error("Cannot train: the dataset has no usable examples");
  const total = plannedSteps(n, trainer.config);
  let saved = trainer.step;
  while (trainer.step < total && !options.signal?.aborted) {
    const indices = batchIndices(n, trainer.step, trainer.config);
    // KTO's KL estimate needs two examples: a lone last example of an epoch borrows a neighbour.
    if (kto && indices.length === 1 && n > 1) indices.push((indices[0]! + 1) % n);
    const metrics = pairs
      ? await trainer.trainStep(indices.map((i) => pairs[i]!), total)
      : await trainer.ktoStep(indices.map((i) => kto![i]!), total);
    await options.onStep?.(metrics);
    if (options.saveSteps && trainer.step % options.saveSteps === 0) {
      await options.onSave?.(trainer.step);
      saved = trainer.step;
    }
  }
  if (saved !== trainer.step) await options.onSave?.(trainer.step);
}
