/**
 * Offline DPO over a fixed dataset. The batch of every step is a pure function of the seed and the
 * step number (a seeded shuffle per epoch), so a run resumed from a checkpoint sees exactly the
 * batches it would have seen without stopping.
 */
import { createRng } from "../model/sampling.ts";
import type { DpoConfig } from "./config.ts";
import type { DpoTrainer, PreferencePair, StepMetrics } from "./trainer.ts";

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

/** Options of `trainOffline`. */
export interface OfflineOptions {
  trainer: DpoTrainer;
  pairs: PreferencePair[];
  /** Called after every optimizer step. */
  onStep?: (metrics: StepMetrics) => void | Promise<void>;
  /** Called every `saveSteps` steps and after the last one, to write a checkpoint. */
  onSave?: (step: number) => Promise<void>;
  saveSteps?: number;
  /** Stops after the current step (Ctrl-C); `onSave` runs for the step reached. */
  signal?: AbortSignal;
}

/** Trains from the trainer's current step to the planned number of steps. */
export async function trainOffline(options: OfflineOptions): Promise<void> {
  const { trainer, pairs } = options;
  if (pairs.length === 0) throw new Error("Cannot train: the dataset has no usable pairs");
  const total = plannedSteps(pairs.length, trainer.config);
  let saved = trainer.step;
  while (trainer.step < total && !options.signal?.aborted) {
    const batch = batchIndices(pairs.length, trainer.step, trainer.config).map((i) => pairs[i]!);
    const metrics = await trainer.trainStep(batch, total);
    await options.onStep?.(metrics);
    if (options.saveSteps && trainer.step % options.saveSteps === 0) {
      await options.onSave?.(trainer.step);
      saved = trainer.step;
    }
  }
  if (saved !== trainer.step) await options.onSave?.(trainer.step);
}
