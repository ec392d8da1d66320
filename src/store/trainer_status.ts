/** What the trainer is doing now, under `trainerStatusKey()`: written after every step and publish. */
import { z } from "zod";
import { decodeStored } from "./_codec.ts";
import { trainerStatusKey } from "./keys.ts";

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
  /** When this record was written, ms since the epoch. */
  updated_at: z.number().int().nonnegative(),
});
/** The trainer's status record. */
export type TrainerStatus = z.input<typeof TrainerStatusSchema>;

/** Overwrites the status (one trainer per KV writes it; the last write wins). */
export async function writeTrainerStatus(kv: Deno.Kv, status: TrainerStatus): Promise<void> {
  await kv.set(trainerStatusKey(), TrainerStatusSchema.parse(status));
}

/** The last status written, or null when no trainer has run on this KV. */
export async function readTrainerStatus(kv: Deno.Kv): Promise<TrainerStatus | null> {
  const entry = await kv.get(trainerStatusKey());
  return entry.value === null ? null : decodeStored(TrainerStatusSchema, entry.value, "the trainer status");
}
