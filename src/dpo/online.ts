/**
 * The online trainer: claims labeled pairs from the store with leases, trains on them with the DPO
 * engine (a step as soon as a batch is there, or in rounds of K pairs and E epochs) and publishes
 * policy versions. Exactly once: the ids a version holds are recorded in the commit that publishes it,
 * and only then are the pairs marked trained (`PairStore.settle`, idempotent); the trainer's fence,
 * checked by that commit, keeps a trainer that was cut off from publishing what its successor now
 * trains. Leases are renewed on a timer while steps and rounds run. A pair it cannot train (its prompt
 * no longer fits, say) or that is too stale ends `rejected` or `stale` instead of stopping the loop.
 *
 * With `kto`, thumbs up/down on served completions train too: they are claimed, leased, recorded in the
 * version that holds them and settled exactly like pairs, and trained in KTO steps of their own (TRL's KTO
 * loss with the batch's KL reference point, the same reference as the DPO steps) between the DPO steps:
 * a KTO step whenever `kto.batch` thumbs are claimed, so the mix follows what arrives.
 */
import type { Tokenizer } from "../model/io/tokenizer.ts";
import type { MarkTrainedResult, PairStore } from "../store/pairs.ts";
import type { PublishOptions } from "../store/checkpoints.ts";
import { FencedOutError } from "../store/errors.ts";
import type { Completion, Pair } from "../store/schema.ts";
import type { FenceHold } from "../store/training_records.ts";
import type { DpoTrainer, KtoExample, KtoMetrics, PreferencePair, StepMetrics } from "./trainer.ts";
import { pause } from "../util/time.ts";
import { renderPrompt } from "./fit.ts";

/** Where policy versions go; the checkpoint store implements it. */
export interface PolicyPublisher {
  /** The version served now, if any. */
  current(): Promise<{ version: number } | null>;
  /** Publishes the model files in `dir` as the next version, recording its pairs, and switches the pointer to it. */
  publish(
    dir: string,
    meta: { parentVersion?: number; trainedPairs?: number; note?: string },
    options: PublishOptions,
  ): Promise<{
    version: number;
  }>;
}

/** What the online trainer needs of the pair store. */
export type TrainingPairs = Pick<
  PairStore,
  "claim" | "renew" | "settle" | "retire" | "claimFeedback" | "retireCompletion"
>;

/** Training on thumbs up/down (KTO) beside the pairs. */
export interface OnlineKto {
  /** Token ids of a completion and its label. */
  encode: (completion: Completion) => KtoExample;
  /** Why a completion cannot be trained (it is retired `rejected` with that reason), or null. */
  problem: (completion: Completion) => string | null;
  /** Thumbs per KTO step (at least 2: the KL reference point pairs each with another). */
  batch: number;
  onStep?: (metrics: KtoMetrics) => void | Promise<void>;
}

/** Options of `runOnlineTrainer`. */
export interface OnlineTrainerOptions {
  store: TrainingPairs;
  publisher: PolicyPublisher;
  trainer: DpoTrainer;
  /** Token ids of a labeled pair (its prompt text, chosen and rejected responses). */
  encode: (pair: Pair) => PreferencePair;
  /** Why a labeled pair cannot be trained (it ends `rejected` with that reason), or null. */
  problem: (pair: Pair) => string | null;
  /** Writes the current policy in Hugging Face layout into a new directory. */
  savePolicy: (dir: string) => Promise<void>;
  /** Where publishes stage the model files (cleared when a trainer starts). */
  tmpDir: string;
  /** This trainer run's own name in leases (a restarted trainer is a new instance). */
  owner: string;
  /** Its hold on the trainer fence, checked by every publish and by the lease timer. */
  fence: FenceHold;
  /**
   * The version the trainer's weights came from (null: the starting model, nothing published). Each publish
   * names its parent and fails with `PointerMovedError` when that is no longer the served version (a rollback):
   * a version is never published on top of one it was not trained from.
   */
  startVersion: number | null;
  /** Whether the fence is still held (false: another trainer took over, and this one stops). */
  holdsFence: () => Promise<boolean>;
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
  /** Pairs sampled from a policy more than this many versions old end `stale` instead of being trained. */
  maxStaleness: number;
  leaseMs: number;
  /** How long to wait when there is no work. */
  pollMs: number;
  signal: AbortSignal;
  onStep?: (metrics: StepMetrics) => void | Promise<void>;
  onPublish?: (version: number, pairs: number) => void | Promise<void>;
  /** Called with pairs whose lease was found lost on renewal, and with pairs ended stale or rejected. */
  onLeaseLost?: (ids: string[]) => void;
  onRetired?: (pair: Pair, status: "stale" | "rejected", reason: string) => void;
  /** Called after every settle, with what it did (for logs). */
  onSettled?: (version: number, result: MarkTrainedResult) => void;
  /** Train thumbs up/down too (see the module comment); off when absent. */
  kto?: OnlineKto;
  /**
   * Asked before each publish whether the trained policy may be served (the promotion gate, `gate.ts`): when
   * it answers false nothing is published, training goes on from this policy, and what it was trained on
   * stays held for the next publish. Absent: every publish goes ahead.
   */
  gate?: () => Promise<boolean>;
  /**
   * Called after every publish with the number of labeled pairs trained into the policy that it did not
   * publish (the gate refused their candidate; they go with the next): work done, not work waiting (the
   * feeder's backlog).
   */
  onHolding?: (pairs: number) => void | Promise<void>;
}

/**
 * A labeled pair as the trainer sees it: the prompt exactly as the policy saw it, and each response as
 * the policy wrote it. A conversation's answers end with the template's end-of-turn token, the one the
 * policy stopped on (a plain prompt's with eos). Responses are cut to fit `maxLength` (imports may not).
 */
export function encodeStoredPair(tokenizer: Tokenizer, pair: Pair, maxLength: number): PreferencePair {
  const promptIds = tokenizer.encode(trainingPromptText(tokenizer, pair));
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

/**
 * The prompt text a pair is trained on: what the policy saw, or, for a client's conversation stored by a
 * server without a model (empty `promptText`), its messages through this tokenizer's chat template.
 */
export function trainingPromptText(tokenizer: Tokenizer, pair: Pair): string {
  return pair.promptText !== "" || pair.messages === undefined
    ? pair.promptText
    : renderPrompt(tokenizer, pair.messages);
}

/**
 * A completion with thumbs as the KTO step sees it: the prompt as the policy saw it, the answer as it wrote
 * it (cut to fit `maxLength`), ended like `encodeStoredPair` ends a pair's responses.
 */
export function encodeCompletion(tokenizer: Tokenizer, completion: Completion, maxLength: number): KtoExample {
  const promptIds = tokenizer.encode(completion.promptText ?? completion.prompt ?? "");
  const room = Math.max(1, maxLength - Math.max(promptIds.length, 1) - 1);
  const chat = completion.messages !== undefined && tokenizer.chatTemplate !== undefined;
  return {
    promptIds,
    completionIds: tokenizer.encode(completion.text).slice(0, room),
    desirable: completion.feedback!.label,
    ...(chat && tokenizer.endOfTurnId !== undefined ? { eosId: tokenizer.endOfTurnId } : {}),
  };
}

/** Runs until `signal` aborts; what was trained but not published by then is redone later. */
export async function runOnlineTrainer(o: OnlineTrainerOptions): Promise<void> {
  const held = new Map<string, Trained>(); // claimed and not yet published: renewed by the timer
  const stop = new AbortController();
  const signal = AbortSignal.any([o.signal, stop.signal]);
  let fencedOut: Error | null = null;
  const keeper = keepLeases(o, held, () => {
    fencedOut = new FencedOutError(
      `Cannot go on training as another trainer took the fence from '${o.owner}' (token ${o.fence.token}): stopping`,
    );
    stop.abort();
  });
  let pending: Pair[] = []; // claimed, not trained yet
  const thumbs: Completion[] = []; // claimed feedback, not trained yet
  let trained: Trained[] = []; // trained, not published yet
  let steps = 0;
  let rounds = 0;
  const lineage = { parent: o.startVersion };
  try {
    while (!signal.aborted) {
      const want = o.mode === "stream" ? o.batchPairs - pending.length : o.roundPairs - pending.length;
      if (want > 0) {
        const fresh = await claimTrainable(o, held, Math.min(want, 1000));
        for (const p of fresh) held.set(p.id, p);
        pending.push(...fresh);
      }
      if (o.kto && thumbs.length < o.kto.batch) {
        const fresh = await claimFeedback(o, o.kto, held, o.kto.batch - thumbs.length);
        for (const c of fresh) held.set(c.id, c);
        thumbs.push(...fresh);
      }
      const ktoReady = o.kto !== undefined && thumbs.length >= o.kto.batch;
      if (ktoReady) {
        // A KTO step on the thumbs claimed, between the DPO steps (in rounds mode too).
        const batch = thumbs.splice(0, o.kto!.batch);
        await ktoStep(o, o.kto!, batch);
        trained.push(...batch);
        if (o.mode === "stream" && ++steps % o.publishEverySteps === 0) {
          trained = await publishAndReport(o, trained, held, lineage);
        }
      }
      const ready = o.mode === "stream" ? pending.length >= o.batchPairs : pending.length >= o.roundPairs;
      if (!ready) {
        if (!ktoReady) await pause(o.pollMs, signal);
        continue;
      }
      if (o.mode === "stream") {
        const batch = pending.splice(0, o.batchPairs);
        await step(o, batch);
        trained.push(...batch);
        if (++steps % o.publishEverySteps === 0) trained = await publishAndReport(o, trained, held, lineage);
      } else {
        const round = pending;
        pending = [];
        for (let e = 0; e < o.roundEpochs && !signal.aborted; e++) {
          for (let i = 0; i < round.length && !signal.aborted; i += o.batchPairs) {
            await step(o, round.slice(i, i + o.batchPairs));
          }
        }
        if (signal.aborted) break;
        trained.push(...round);
        // Refresh before publishing: the trainer checkpoint saved with the version holds the new reference.
        if (o.refRefreshRounds > 0 && ++rounds % o.refRefreshRounds === 0) o.trainer.refreshReference(1);
        trained = await publishAndReport(o, trained, held, lineage);
      }
    }
  } finally {
    keeper.stop();
  }
  if (fencedOut) throw fencedOut;
}

/**
 * Publishes, then tells `onHolding` how many labeled pairs the trainer carries on because the gate refused
 * them. Not before: pairs in training or before the gate are work in progress, which the feeder counts as
 * backlog, so that it samples no more than its backlog ahead of the version being made. (Told while the
 * gate ran, the feeder sampled another round from the old version then, and pairs trained two versions
 * after the one they came from.)
 */
async function publishAndReport(
  o: OnlineTrainerOptions,
  trained: Trained[],
  held: Map<string, Trained>,
  lineage: { parent: number | null },
): Promise<Trained[]> {
  const carried = await publish(o, trained, held, lineage);
  await o.onHolding?.(carried.filter((t) => "responses" in t).length);
  return carried;
}

/** Claims up to `limit` labeled pairs and ends those it must not train (stale or untrainable) at once. */
async function claimTrainable(o: OnlineTrainerOptions, held: Map<string, Trained>, limit: number): Promise<Pair[]> {
  const version = (await o.publisher.current())?.version ?? 0;
  const claimed = await o.store.claim({
    status: "labeled",
    role: "train",
    owner: o.owner,
    leaseMs: o.leaseMs,
    limit,
    fence: o.fence.token,
    // A pair whose lease lapsed while this trainer works on it must not be claimed a second time.
    filter: (p) => !held.has(p.id),
  });
  const fresh: Pair[] = [];
  for (const pair of claimed) {
    // Staleness is about on-policy samples; imported preferences and a client's own answers are always fair game.
    const stale = pair.source === "sampled" && pair.policyVersion < version - o.maxStaleness;
    const reason = stale
      ? `sampled from policy v${pair.policyVersion}, more than max_staleness ${o.maxStaleness} versions before ` +
        `v${version}`
      : o.problem(pair);
    if (reason === null) {
      fresh.push(pair);
      continue;
    }
    const status = stale ? "stale" : "rejected";
    if (await o.store.retire(pair.id, status, reason)) o.onRetired?.(pair, status, reason);
  }
  return fresh;
}

/** What a version may hold: pairs (DPO) and completions with thumbs (KTO). */
type Trained = Pair | Completion;

/** Claims up to `limit` thumbs to train, and retires at once those it must not (stale or not encodable). */
async function claimFeedback(
  o: OnlineTrainerOptions,
  kto: OnlineKto,
  held: Map<string, Trained>,
  limit: number,
): Promise<Completion[]> {
  const version = (await o.publisher.current())?.version ?? 0;
  const claimed = await o.store.claimFeedback({
    owner: o.owner,
    leaseMs: o.leaseMs,
    limit,
    fence: o.fence.token,
    skip: (id) => held.has(id),
  });
  const fresh: Completion[] = [];
  for (const c of claimed) {
    // A thumbs is on the answer one version wrote: too old a version, and it says little of the policy now.
    const stale = c.policyVersion < version - o.maxStaleness;
    const reason = stale
      ? `answered by policy v${c.policyVersion}, more than max_staleness ${o.maxStaleness} versions before v${version}`
      : kto.problem(c);
    if (reason === null) fresh.push(c);
    else await o.store.retireCompletion(c.id, stale ? "stale" : "rejected", reason);
  }
  return fresh;
}

async function ktoStep(o: OnlineTrainerOptions, kto: OnlineKto, batch: Completion[]): Promise<void> {
  const metrics = await o.trainer.ktoStep(batch.map(kto.encode), Number.MAX_SAFE_INTEGER);
  await kto.onStep?.(metrics);
}

/**
 * Renews the leases on every held pair and checks the fence on a timer, so that leases outlive long
 * steps and rounds; `onFencedOut` is called once when another trainer took the fence.
 */
function keepLeases(o: OnlineTrainerOptions, held: Map<string, Trained>, onFencedOut: () => void): { stop(): void } {
  let running = false;
  const tick = async () => {
    if (running) return;
    running = true;
    try {
      if (!(await o.holdsFence())) {
        clearInterval(timer);
        onFencedOut();
        return;
      }
      const ids = [...held.keys()];
      const renewed = await Promise.all(
        ids.map((id) => o.store.renew(id, { role: "train", owner: o.owner, leaseMs: o.leaseMs })),
      );
      // A pair published meanwhile had its lease deleted by the settle: not a loss.
      const lost = ids.filter((id, i) => !renewed[i] && held.has(id));
      if (lost.length > 0) o.onLeaseLost?.(lost);
    } catch (err) {
      console.error(`Cannot renew the train leases: ${(err as Error).message} (retrying at the next tick)`);
    } finally {
      running = false;
    }
  };
  const timer = setInterval(tick, Math.max(Math.min(o.leaseMs / 3, 5000), 50));
  return { stop: () => clearInterval(timer) };
}

async function step(o: OnlineTrainerOptions, batch: Pair[]): Promise<void> {
  // Online training has no planned end: the learning-rate schedule sees an unbounded horizon.
  const metrics = await o.trainer.trainStep(batch.map(o.encode), Number.MAX_SAFE_INTEGER);
  await o.onStep?.(metrics);
}

/**
 * Publishes the policy with the ids of what it holds in the same commit, then settles them (marks them
 * trained); returns what is left to publish.
 */
async function publish(
  o: OnlineTrainerOptions,
  trained: Trained[],
  held: Map<string, Trained>,
  lineage: { parent: number | null },
): Promise<Trained[]> {
  if (trained.length === 0) return trained;
  if (o.gate && !(await o.gate())) return trained;
  const dir = await Deno.makeTempDir({ dir: o.tmpDir, prefix: "publish-" });
  try {
    await o.savePolicy(dir);
    const { version } = await o.publisher.publish(dir, {
      ...(lineage.parent === null ? {} : { parentVersion: lineage.parent }),
      trainedPairs: trained.length,
      note: `reference refreshed ${o.trainer.refVersion} time(s)`,
    }, { pairIds: trained.map((p) => p.id), fence: o.fence, expectParent: lineage.parent });
    lineage.parent = version;
    for (const p of trained) held.delete(p.id);
    const result = await o.store.settle(version);
    o.onSettled?.(version, result);
    o.trainer.forgetReference(trained.filter((t): t is Pair => "responses" in t).map(o.encode));
    await o.onPublish?.(version, trained.length);
    return [];
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
