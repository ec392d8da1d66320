/**
 * What the trainer records beside the pairs: the fence that lets exactly one trainer publish, which
 * pairs each published version holds, and (through `TrainingRecords`) its status, step metrics and
 * evaluations.
 *
 * Exactly once rests on two rules. The ids a version holds are written in the very commit that
 * publishes it (`addTrainedPairs`, inside the checkpoint store's pointer switch), together with an
 * `unsettled` marker; marking those pairs `trained` comes after and is idempotent (`PairStore.settle`),
 * so a crash in between is repaired by settling every unsettled version before training resumes. And
 * every trainer takes the fence as it starts (`takeFence`: the token only rises) and every publish
 * checks it, so a trainer that was paused or cut off cannot publish pairs its successor now trains;
 * train leases carry the token they were claimed under, and a higher token voids them at once instead
 * of after the lease runs out.
 */
import { z } from "zod";
import { counterValue, decodeStored } from "./_codec.ts";
import { commitWithinLimits } from "./_size.ts";
import { StoreInputError } from "./errors.ts";
import {
  EVAL_PREFIX,
  evalKey,
  GATE_PREFIX,
  gateBarKey,
  gateCountKey,
  gateKey,
  TRAIN_METRICS_PREFIX,
  trainedPairsKey,
  trainedPairsPrefix,
  trainerFenceKey,
  trainerStatusKey,
  trainMetricsKey,
  UNSETTLED_PREFIX,
  unsettledKey,
} from "./keys.ts";
import { type PolicyPointer, readPointer } from "./_checkpoint_schema.ts";
import { type TrainerStatus, TrainerStatusSchema } from "./trainer_status.ts";

/** Pair ids in one `["trained_pairs", version, chunk]` value (26-character ids: about 29 KB). */
export const TRAINED_IDS_PER_CHUNK = 1000;
/** Most pairs one version may hold: their ids must fit in the publishing commit beside the version record. */
export const MAX_PAIRS_PER_VERSION = 20 * TRAINED_IDS_PER_CHUNK;

/** The fence value: which trainer instance may publish, under which token. */
export const FenceSchema = z.object({
  token: z.number().int().positive(),
  /** The trainer's configured name (`--owner`). */
  owner: z.string().min(1),
  /** This run of it: a restarted trainer is a new instance. */
  instance: z.string().min(1),
  takenAt: z.number().int().nonnegative(),
});
/** The fence value. */
export type Fence = z.infer<typeof FenceSchema>;

/** A trainer's hold on the fence: what its publishes check. */
export interface FenceHold extends Fence {
  versionstamp: string;
}

/** Reads the fence; null before any trainer ran. */
export async function readFence(kv: Deno.Kv): Promise<Fence | null> {
  const entry = await kv.get(trainerFenceKey());
  return entry.value === null ? null : decodeStored(FenceSchema, entry.value, "the trainer fence");
}

/** Takes the fence with the next token: from now on only this instance publishes. Returns the hold. */
export async function takeFence(
  kv: Deno.Kv,
  who: { owner: string; instance: string; now?: number },
): Promise<FenceHold> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const entry = await kv.get(trainerFenceKey());
    const before = entry.value === null ? null : decodeStored(FenceSchema, entry.value, "the trainer fence");
    const fence: Fence = {
      token: (before?.token ?? 0) + 1,
      owner: who.owner,
      instance: who.instance,
      takenAt: who.now ?? Date.now(),
    };
    const result = await kv.atomic().check(entry).set(trainerFenceKey(), fence).commit();
    if (result.ok) return { ...fence, versionstamp: result.versionstamp };
    await new Promise((r) => setTimeout(r, Math.random() * 20));
  }
  throw new Error("Cannot take the trainer fence: 50 attempts lost a race with other starting trainers");
}

/** The check a publish adds: the fence is still exactly as `hold` took it. */
export function fenceCheck(hold: FenceHold): Deno.AtomicCheck {
  return { key: trainerFenceKey(), versionstamp: hold.versionstamp };
}

/** Whether `hold` still holds the fence. */
export async function holdsFence(kv: Deno.Kv, hold: FenceHold): Promise<boolean> {
  return (await kv.get(trainerFenceKey())).versionstamp === hold.versionstamp;
}

/** Adds a version's pair ids and its `unsettled` marker to the commit that publishes it. */
export function addTrainedPairs(op: Deno.AtomicOperation, version: number, ids: readonly string[]): void {
  if (ids.length > MAX_PAIRS_PER_VERSION) {
    throw new StoreInputError(
      `Cannot publish policy version ${version} holding ${ids.length} pairs: at most ${MAX_PAIRS_PER_VERSION} ` +
        "fit in the commit that publishes it (publish more often)",
    );
  }
  if (new Set(ids).size !== ids.length) {
    throw new StoreInputError(`Cannot publish policy version ${version}: its pair ids list one pair twice`);
  }
  for (let i = 0; i * TRAINED_IDS_PER_CHUNK < ids.length; i++) {
    op.set(trainedPairsKey(version, i), ids.slice(i * TRAINED_IDS_PER_CHUNK, (i + 1) * TRAINED_IDS_PER_CHUNK));
  }
  if (ids.length > 0) op.set(unsettledKey(version), null);
}

/** The ids of the pairs a published version holds (empty for a version that holds none, or is unknown). */
export async function trainedPairs(kv: Deno.Kv, version: number): Promise<string[]> {
  const ids: string[] = [];
  for await (const e of kv.list({ prefix: trainedPairsPrefix(version) })) {
    ids.push(...decodeStored(IdsSchema, e.value, `the pair ids of policy version ${version}`));
  }
  return ids;
}

/** Published versions whose pairs are not all marked trained yet, oldest first. */
export async function unsettledVersions(kv: Deno.Kv): Promise<number[]> {
  const out: number[] = [];
  for await (const e of kv.list({ prefix: UNSETTLED_PREFIX })) out.push(e.key[1] as number);
  return out;
}

/** Drops a version's `unsettled` marker once every pair it lists is trained. */
export async function markSettled(kv: Deno.Kv, version: number): Promise<void> {
  await commitWithinLimits(kv.atomic().delete(unsettledKey(version)), `the settled marker of version ${version}`);
}

const IdsSchema = z.array(z.string());

/** One training step's record as the trainer wrote it, with when. */
export interface StepEntry {
  at: number;
  value: unknown;
}

/** How long step metrics are kept. */
const STEP_RETENTION_MS = 30 * 24 * 3600_000;

/**
 * The trainer's records beside the pairs, on one KV: the fence, which pairs each version holds, its status,
 * its step metrics and its evaluations, and the served-policy pointer for readers. The one way the roles,
 * the online loop and the dashboard reach them; nothing outside `src/store/` touches KV.
 */
export class TrainingRecords {
  readonly #kv: Deno.Kv;

  constructor(kv: Deno.Kv) {
    this.#kv = kv;
  }

  /** Takes the fence with the next token (see `takeFence`). */
  takeFence(who: { owner: string; instance: string; now?: number }): Promise<FenceHold> {
    return takeFence(this.#kv, who);
  }

  /** Whether `hold` still holds the fence. */
  holdsFence(hold: FenceHold): Promise<boolean> {
    return holdsFence(this.#kv, hold);
  }

  /** The fence as it stands; null before any trainer ran. */
  fence(): Promise<Fence | null> {
    return readFence(this.#kv);
  }

  /** Published versions whose pairs are not all marked trained yet, oldest first. */
  unsettledVersions(): Promise<number[]> {
    return unsettledVersions(this.#kv);
  }

  /** The ids of the pairs a published version holds. */
  trainedPairs(version: number): Promise<string[]> {
    return trainedPairs(this.#kv, version);
  }

  /** Overwrites the trainer's status (one trainer per KV writes it; the last write wins). */
  async writeStatus(status: TrainerStatus): Promise<void> {
    await this.#kv.set(trainerStatusKey(), TrainerStatusSchema.parse(status));
  }

  /** The last status written, or null when no trainer has run on this KV. */
  async status(): Promise<TrainerStatus | null> {
    const entry = await this.#kv.get(trainerStatusKey());
    return entry.value === null ? null : decodeStored(TrainerStatusSchema, entry.value, "the trainer status");
  }

  /** Keeps one step's metrics (30 days), keyed by when it was taken. */
  async recordStep(at: number, step: number, metrics: object): Promise<void> {
    const op = this.#kv.atomic().set(trainMetricsKey(at, step), metrics, { expireIn: STEP_RETENTION_MS });
    await commitWithinLimits(op, `step ${step}'s metrics`);
  }

  /**
   * The newest step records taken at or after `since`, up to `limit`, oldest first; `truncated` when older
   * ones since `since` were left out.
   */
  async steps(options: { since: number; limit: number }): Promise<{ steps: StepEntry[]; truncated: boolean }> {
    const steps: StepEntry[] = [];
    const entries = this.#kv.list({ prefix: TRAIN_METRICS_PREFIX, start: trainMetricsKey(options.since, 0) }, {
      reverse: true,
      limit: options.limit + 1,
      batchSize: Math.min(options.limit + 1, 1000),
    });
    let truncated = false;
    for await (const entry of entries) {
      if (steps.length === options.limit) {
        truncated = true;
        break;
      }
      if (typeof entry.key[1] === "number") steps.push({ at: entry.key[1], value: entry.value });
    }
    return { steps: steps.reverse(), truncated };
  }

  /** Keeps a version's evaluation. */
  async recordEval(version: number, result: unknown): Promise<void> {
    await commitWithinLimits(this.#kv.atomic().set(evalKey(version), result), `v${version}'s evaluation`);
  }

  /** A version's evaluation as stored, or null. */
  async evalOf(version: number): Promise<unknown> {
    return (await this.#kv.get(evalKey(version))).value;
  }

  /** The newest `limit` evaluations as stored, oldest first. */
  async evals(limit: number): Promise<unknown[]> {
    const out: unknown[] = [];
    for await (const entry of this.#kv.list({ prefix: EVAL_PREFIX }, { reverse: true, limit })) out.push(entry.value);
    return out.reverse();
  }

  /** Keeps one gate decision (see `src/dpo/gate.ts`; stored as given) and counts its outcome. */
  async recordGate(decision: { at: number; step: number; promoted: boolean } & Record<string, unknown>): Promise<void> {
    const op = this.#kv.atomic().set(gateKey(decision.at, decision.step), decision)
      .sum(gateCountKey(decision.promoted ? "promoted" : "refused"), 1n);
    await commitWithinLimits(op, "a gate decision");
  }

  /** Keeps the gate's bar (stored as given), so that a restarted trainer holds candidates to the same one. */
  async saveGateBar(bar: Record<string, unknown>): Promise<void> {
    await commitWithinLimits(this.#kv.atomic().set(gateBarKey(), bar), "the gate's bar");
  }

  /** The gate's bar as stored, or null. */
  async gateBar(): Promise<unknown> {
    return (await this.#kv.get(gateBarKey())).value;
  }

  /** The newest `limit` gate decisions as stored, oldest first, and the counts of each outcome ever. */
  async gates(limit: number): Promise<{ decisions: unknown[]; promoted: number; refused: number }> {
    const decisions: unknown[] = [];
    if (limit > 0) {
      for await (const e of this.#kv.list({ prefix: GATE_PREFIX }, { reverse: true, limit })) decisions.push(e.value);
    }
    const [promoted, refused] = await this.#kv.getMany([gateCountKey("promoted"), gateCountKey("refused")]);
    return {
      decisions: decisions.reverse(),
      promoted: counterValue(promoted!.value, "the promoted gate counter"),
      refused: counterValue(refused!.value, "the refused gate counter"),
    };
  }

  /** The served-policy pointer (which version, when it switched); null before the first publish. */
  pointer(): Promise<PolicyPointer | null> {
    return readPointer(this.#kv);
  }
}
