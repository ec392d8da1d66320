/** What the trainer is doing now, under `trainerStatusKey()`: written after every step and publish (`TrainingRecords`). */
import { z } from "zod";

/** The trainer's status record. */
export const TrainerStatusSchema = z.object({
  /** The trainer's name in leases. */
  owner: z.string(),
  /** Optimizer steps taken so far. */
  step: z.number().int().nonnegative(),
  /** The last version it published (or started from); 0 before any. */
  policy_version: z.number().int().nonnegative(),
  /** Reference refreshes so far. */
  ref_version: z.number().int().nonnegative(),
  /** Train leases this trainer run found lost when it renewed them (a step outlasted the lease). */
  leases_lost: z.number().int().nonnegative().default(0),
  /** Pairs this trainer run ended as stale or rejected instead of training them. */
  retired: z.number().int().nonnegative().default(0),
  /**
   * Labeled pairs trained into the policy whose candidate the gate refused, held until a later one passes:
   * trained work, not work waiting. Counted once the gate has decided: pairs in training or before the gate
   * are work in progress.
   */
  held_pairs: z.number().int().nonnegative().default(0),
  /** When this record was written, ms since the epoch. */
  updated_at: z.number().int().nonnegative(),
});
/** The trainer's status record. */
export type TrainerStatus = z.input<typeof TrainerStatusSchema>;
