/**
 * The online trainer: claims labeled pairs from the store with leases, trains on them with the DPO
 * engine (a step as soon as a batch is there, or in rounds of K pairs and E epochs), publishes
 * policy versions, and only then marks the pairs trained into the version that holds them. A worker
 * killed at any moment loses nothing: unpublished work is redone from the last published version
 * once the leases expire, and published pairs are marked trained again on restart (idempotently).
 */
import type { Tokenizer } from "../model/tokenizer.ts";
import type { PairStore } from "../store/pairs.ts";
import type { Pair } from "../store/schema.ts";
import type { DpoTrainer, PreferencePair, StepMetrics } from "./trainer.ts";
import { pause } from "../util/time.ts";

/** Where policy versions go; the checkpoint store implements it. */
export interface PolicyPublisher {
  /** The version served now, if any. */
  current(): Promise<{ version: number } | null>;
  /** Publishes the model files in `dir` as the next version and switches the pointer to it. */
  publish(dir: string, meta: { parentVersion?: number; trainedPairs?: number; note?: string }): Promise<{
    version: number;
  }>;
}

/** Options of `runOnlineTrainer`. */
export interface OnlineTrainerOptions {
  store: PairStore;
  publisher: PolicyPublisher;
  trainer: DpoTrainer;
  /** Token ids of a labeled pair (its prompt text, chosen and rejected responses). */
  encode: (pair: Pair) => PreferencePair;
  /** Writes the current policy in Hugging Face layout into a new directory. */
  savePolicy: (dir: string) => Promise<void>;
  /** Remembers which pairs a published version holds (read back by `reconcile`). */
  recordTrainedPairs: (version: number, ids: string[]) => Promise<void>;
  /** Names this worker in leases. */
  owner: string;
  /** `stream`: a step whenever a batch is claimed; `rounds`: collect `roundPairs`, train `roundEpochs`. */
  mode: "stream" | "rounds";
  /** Pairs per optimizer step. */
  batchPairs: number;
  roundPairs: number;
  roundEpochs: number;
  /** Stream mode: publish after this many steps. */
  publishEverySteps: number;
  /** Rounds mode: copy the policy into the reference every N rounds (0: never). */
  refRefreshRounds: number;
  /** Pairs sampled from a policy more than this many versions old are not trained on. */
  maxStaleness: number;
  leaseMs: number;
  /** How long to wait when there is no work. */
  pollMs: number;
  signal: AbortSignal;
  onStep?: (metrics: StepMetrics) => void | Promise<void>;
  onPublish?: (version: number, pairs: number) => void | Promise<void>;
}

/**
 * A labeled pair as the trainer sees it: the prompt exactly as the policy saw it, and each response as
 * the policy wrote it. A conversation's answers end with the template's end-of-turn token, the one the
 * policy stopped on (a plain prompt's with eos). Responses are cut to fit `maxLength` (imports may not).
 */
export function encodeStoredPair(tokenizer: Tokenizer, pair: Pair, maxLength: number): PreferencePair {
  const promptIds = tokenizer.encode(pair.promptText);
  const room = Math.max(1, maxLength - Math.max(promptIds.length, 1) - 1);
  const completion = (index: number | undefined) => {
    if (index === undefined) throw new Error(`Cannot train on pair '${pair.id}' as it has no verdict`);
    return tokenizer.encode(pair.responses[index]!).slice(0, room);
  };
  // Without a template the server shows messages as a plain transcript, which ends like any text.
  const chat = pair.messages !== undefined && tokenizer.chatTemplate !== undefined;
  return {
    promptIds,
    chosenIds: completion(pair.chosen),
    rejectedIds: completion(pair.rejected),
    ...(chat && tokenizer.endOfTurnId !== undefined ? { eosId: tokenizer.endOfTurnId } : {}),
  };
}

/** Runs until `signal` aborts; what was trained but not published by then is redone later. */
export async function runOnlineTrainer(o: OnlineTrainerOptions): Promise<void> {
  let pending: Pair[] = []; // claimed, not trained yet
  let trained: Pair[] = []; // trained, not published yet
  let steps = 0;
  let rounds = 0;
  let renewedAt = Date.now();
  const held = () => [...pending, ...trained];
  while (!o.signal.aborted) {
    const want = o.mode === "stream" ? o.batchPairs - pending.length : o.roundPairs - pending.length;
    if (want > 0) {
      const version = (await o.publisher.current())?.version ?? 0;
      const fresh = await o.store.claim({
        status: "labeled",
        role: "train",
        owner: o.owner,
        leaseMs: o.leaseMs,
        limit: Math.min(want, 1000),
        // Staleness is about on-policy samples; imported preferences are always fair game.
        filter: (p) => p.source === "imported" || p.policyVersion >= version - o.maxStaleness,
      });
      pending.push(...fresh);
    }
    if (Date.now() - renewedAt > o.leaseMs / 3) {
      await Promise.all(held().map((p) => o.store.renew(p.id, { role: "train", owner: o.owner, leaseMs: o.leaseMs })));
      renewedAt = Date.now();
    }
    const ready = o.mode === "stream" ? pending.length >= o.batchPairs : pending.length >= o.roundPairs;
    if (!ready) {
      await pause(o.pollMs, o.signal);
      continue;
    }
    if (o.mode === "stream") {
      const batch = pending.splice(0, o.batchPairs);
      await step(o, batch);
      trained.push(...batch);
      if (++steps % o.publishEverySteps === 0) trained = await publish(o, trained);
    } else {
      const round = pending;
      pending = [];
      for (let e = 0; e < o.roundEpochs && !o.signal.aborted; e++) {
        for (let i = 0; i < round.length && !o.signal.aborted; i += o.batchPairs) {
          await step(o, round.slice(i, i + o.batchPairs));
        }
      }
      if (o.signal.aborted) break;
      trained.push(...round);
      // Refresh before publishing: the trainer checkpoint saved with the version holds the new reference.
      if (o.refRefreshRounds > 0 && ++rounds % o.refRefreshRounds === 0) o.trainer.refreshReference(1);
      trained = await publish(o, trained);
    }
  }
}

async function step(o: OnlineTrainerOptions, batch: Pair[]): Promise<void> {
  // Online training has no planned end: the learning-rate schedule sees an unbounded horizon.
  const metrics = await o.trainer.trainStep(batch.map(o.encode), Number.MAX_SAFE_INTEGER);
  await o.onStep?.(metrics);
}

/** Publishes the policy, then marks what it holds as trained into it; returns what is left to publish. */
async function publish(o: OnlineTrainerOptions, trained: Pair[]): Promise<Pair[]> {
  if (trained.length === 0) return trained;
  const dir = await Deno.makeTempDir({ prefix: "dpo-publish-" });
  try {
    await o.savePolicy(dir);
    const parent = await o.publisher.current();
    const { version } = await o.publisher.publish(dir, {
      parentVersion: parent?.version,
      trainedPairs: trained.length,
      note: `reference refreshed ${o.trainer.refVersion} time(s)`,
    });
    const ids = trained.map((p) => p.id);
    await o.recordTrainedPairs(version, ids);
    const result = await o.store.markTrained(ids, { policyVersion: version, owner: o.owner });
    if (result.refused.length > 0) {
      console.error(`policy v${version}: ${result.refused.length} pair(s) not marked trained (leases lost)`);
    }
    o.trainer.forgetReference(trained.map(o.encode));
    await o.onPublish?.(version, trained.length);
    return [];
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/**
 * After a restart: pairs the current version holds but the store still calls labeled (the worker
 * died between publishing and marking) are claimed and marked trained into it.
 */
export async function reconcile(
  o: Pick<OnlineTrainerOptions, "store" | "owner" | "leaseMs">,
  version: number,
  ids: string[],
): Promise<number> {
  const wanted = new Set(ids);
  const claimed = await o.store.claim({
    status: "labeled",
    role: "train",
    owner: o.owner,
    leaseMs: o.leaseMs,
    limit: 1000,
    filter: (p) => wanted.has(p.id),
  });
  if (claimed.length === 0) return 0;
  const result = await o.store.markTrained(claimed.map((p) => p.id), { policyVersion: version, owner: o.owner });
  return result.trained.length;
}
