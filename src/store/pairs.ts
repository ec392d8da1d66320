/**
 * The pair store on Deno KV, the single source of truth of the system. Every state change of a pair is
 * one atomic commit checked on the pair's versionstamp, with its index entries and counters moved in the
 * same commit (see `keys.ts` for the layout). Work is claimed with leases, never with queues.
 */
import { counterValue, decodeStored, parseInput } from "./_codec.ts";
import { importLabeledMany, labeledPair } from "./_import_many.ts";
import { checkedPair, insertPair, transitionPair } from "./_mutations.ts";
import { claimPairs, decodePair, isPastExpiry, MAX_ATTEMPTS, releaseLease, renewLease } from "./_leases.ts";
import { readIndexPage } from "./_paging.ts";
import { BatchedGet } from "./_batched_get.ts";
import { GroupCommit, RecordedWrites } from "./_group_commit.ts";
import { commitWithinLimits } from "./_size.ts";
import { createIdGenerator, type IdGenerator } from "./_ulid.ts";
import { type Activity, ACTIVITY_RETENTION_MS, pruneActivity, readActivity } from "./activity.ts";
import { pruneRateWindows, takeRateTokens } from "./rate_limits.ts";
import {
  countJudgeFailure,
  countVerdictUsage,
  type JudgeActivity,
  type JudgeUsage,
  pruneJudgeActivity,
  readJudgeActivity,
  readJudgeUsage,
} from "./judge_usage.ts";
import { CompletionStore, DEFAULT_COMPLETION_RETENTION_MS, type SignalResult } from "./completions.ts";
import { ConflictError, NotFoundError, StoreInputError } from "./errors.ts";
import {
  type ClaimOptions,
  type CompletionInput,
  type CreatePairInput,
  CreatePairInputSchema,
  type FeedbackInput,
  type FeedbackListOptions,
  type IdempotencyOptions,
  IdempotencyOptionsSchema,
  type ImportLabeledInput,
  ImportLabeledInputSchema,
  type ListOptions,
  ListOptionsSchema,
  type RenewOptions,
  type VerdictInput,
  VerdictInputSchema,
} from "./inputs.ts";
import {
  idempotencyKey,
  idOfIndexKey,
  leaseKey,
  PAIR_EXPIRY_PREFIX,
  PAIR_TIME_PREFIX,
  pairCountKey,
  pairExpiryEnd,
  pairKey,
  pairStatusPrefix,
  webhookSeenKey,
} from "./keys.ts";
import {
  type Completion,
  IdempotencyRecordSchema,
  type Lease,
  type LeaseRole,
  type Pair,
  PAIR_STATUSES,
  type PairStatus,
  type RetiredStatus,
  sameText,
  type StoredVerdict,
} from "./schema.ts";
import { markSettled, trainedPairs, TrainingRecords } from "./training_records.ts";

export { ConflictError, NotFoundError, StoreCorruptError, StoreInputError, StoreLimitError } from "./errors.ts";
export { type Activity, ACTIVITY_RETENTION_MS, MINUTE_MS, minuteOf } from "./activity.ts";
export { JUDGE_USAGE_METRICS, type JudgeActivity, type JudgeUsage } from "./judge_usage.ts";
export * from "./inputs.ts";
export * from "./schema.ts";

/** How long a repeated request with the same idempotency key returns the first pair. */
export const IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000;

const LOST_RACE = "lost the race to other writers every time";

// Pairs expired per commit: one check each (≤ 10) and at most 8 × 64 KiB written (< 800 KiB).
const EXPIRE_BATCH = 8;
// Rate-limit windows are deleted once an hour old (windows are a minute or so).
const RATE_WINDOW_RETENTION_MS = 3600_000;
// How often `expirePending` also deletes activity counters past their retention.
const PRUNE_EVERY_MS = 10 * 60_000;
// Most minutes `activity` reads at once: a day.
const MAX_ACTIVITY_MINUTES = 24 * 60;

/** Options of `PairStore`. */
export interface PairStoreOptions {
  /** The clock (ms since the epoch); default `Date.now`. Tests pass a fake one. */
  now?: () => number;
  /** How long a completion without feedback is kept (ms); default 30 days. */
  completionRetentionMs?: number;
}

/** What `create` and `importLabeled` return: the pair, and whether this call created it. */
export interface CreateResult {
  pair: Pair;
  /** `false` when the idempotency key had already created `pair`. */
  created: boolean;
}

/** What `settle` did with each id a version holds. */
export interface MarkTrainedResult {
  /** Moved to trained by this call. */
  trained: string[];
  /** Already trained into this policy version (a retry): left as they were. */
  alreadyTrained: string[];
  /** Left as they were, with the reason. */
  refused: { id: string; reason: string }[];
}

/** The pair store; see the module comment. Every method parses its arguments and what it reads back. */
export class PairStore {
  readonly #kv: Deno.Kv;
  readonly #now: () => number;
  readonly #newId: IdGenerator = createIdGenerator();
  readonly #completions: CompletionStore;
  // Verdicts and imports that arrive together share a commit (`_group_commit.ts`).
  readonly #group: GroupCommit;
  // Reads of one pair that arrive together share a `getMany` (`_batched_get.ts`).
  readonly #reads: BatchedGet;
  #prunedAt = -Infinity;

  /** Wraps an open `Deno.Kv` (which the caller closes). */
  /** The trainer's records on the same KV (fence, versions' pairs, status, step metrics, evaluations). */
  readonly records: TrainingRecords;

  constructor(kv: Deno.Kv, options: PairStoreOptions = {}) {
    this.#kv = kv;
    this.#group = new GroupCommit(kv);
    this.#reads = new BatchedGet(kv);
    this.records = new TrainingRecords(kv);
    this.#now = options.now ?? Date.now;
    this.#completions = new CompletionStore(
      kv,
      this.#now,
      options.completionRetentionMs ?? DEFAULT_COMPLETION_RETENTION_MS,
      this.#newId,
    );
  }

  /**
   * Stores a new pair awaiting judgment with its index entries and counter in one commit; a pair whose
   * responses are all the same text (blanks aside) is stored `identical` instead, never to be judged, and
   * candidates naming two equal texts among different ones are refused (`StoreInputError`). With an
   * idempotency key, a repeat within 24 h returns the first pair with `created: false`.
   * Throws `StoreLimitError` (nothing written) when the pair would not fit in one KV value.
   */
  async create(input: CreatePairInput, options: IdempotencyOptions = {}): Promise<CreateResult> {
    const p = parseInput(CreatePairInputSchema, input, "a new pair");
    const { idempotencyKey } = parseInput(IdempotencyOptionsSchema, options, "create options");
    const identical = p.responses.every((r) => sameText(r, p.responses[0]!));
    const [a, b] = p.candidates;
    if (!identical && sameText(p.responses[a] ?? "", p.responses[b] ?? "")) {
      throw new StoreInputError(
        `Cannot store a new pair as its candidates [${a}, ${b}] are the same text while other responses differ`,
      );
    }
    return await this.#insert(idempotencyKey, (id, now) => ({
      id,
      createdAt: now,
      updatedAt: now,
      status: identical ? "identical" : "awaiting_judgment",
      ...promptOf(p),
      promptText: p.promptText,
      responses: p.responses,
      policyVersion: p.policyVersion,
      candidates: p.candidates,
      ...(p.expiresAt === undefined || identical ? {} : { expiresAt: p.expiresAt }),
      source: p.source,
      ...(p.producedBy === undefined ? {} : { producedBy: p.producedBy }),
    }));
  }

  /**
   * Stores an already-labeled triple (status labeled, judge kind "import", responses [chosen, rejected]),
   * with the same idempotency behaviour as `create`.
   */
  async importLabeled(input: ImportLabeledInput, options: IdempotencyOptions = {}): Promise<CreateResult> {
    const p = parseInput(ImportLabeledInputSchema, input, "an imported pair");
    const { idempotencyKey } = parseInput(IdempotencyOptionsSchema, options, "import options");
    return await this.#insert(idempotencyKey, (id, now) => labeledPair(p, id, now));
  }

  /**
   * Stores a list of labeled triples all or nothing: every item is checked as `importLabeled` checks it,
   * then all go in one commit, and a list that cannot fit in one is refused (`StoreLimitError`) before
   * anything is written. With an idempotency key, item `i` uses `${key}#${i}` and a repeat returns the
   * first pairs with `created: false`. Results are in the order of `inputs`.
   */
  importLabeledMany(inputs: readonly ImportLabeledInput[], options: IdempotencyOptions = {}): Promise<CreateResult[]> {
    const ctx = {
      kv: this.#kv,
      group: this.#group,
      now: this.#now,
      newId: this.#newId,
      idempotencyTtlMs: IDEMPOTENCY_TTL_MS,
    };
    return importLabeledMany(ctx, inputs, options);
  }

  async #insert(key: string | undefined, build: (id: string, now: number) => Pair): Promise<CreateResult> {
    const idemKey = key === undefined ? undefined : idempotencyKey(key);
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      if (idemKey !== undefined) {
        const first = await this.#replay(idemKey, key!);
        if (first !== null) return { pair: first, created: false };
      }
      const now = this.#now();
      const pair = build(this.#newId(now), now);
      const what = `pair '${pair.id}'`;
      checkedPair(pair, what);
      const op = new RecordedWrites().check({ key: pairKey(pair.id), versionstamp: null });
      if (idemKey !== undefined) {
        op.check({ key: idemKey, versionstamp: null }).set(idemKey, pair.id, { expireIn: IDEMPOTENCY_TTL_MS });
      }
      insertPair(op, pair);
      if (await this.#group.commit(op, what)) return { pair, created: true };
      // Lost to a concurrent request with the same key (replayed on the next round) or an id clash.
    }
    throw new Error(`Cannot create a pair: lost the race ${MAX_ATTEMPTS} times in a row`);
  }

  async #replay(idemKey: Deno.KvKey, key: string): Promise<Pair | null> {
    const record = await this.#kv.get(idemKey);
    if (record.value === null) return null;
    const id = decodeStored(IdempotencyRecordSchema, record.value, `idempotency record '${key}'`);
    const pair = await this.get(id);
    if (pair === null) throw new NotFoundError(`Idempotency key '${key}' names pair '${id}', which does not exist`);
    return pair;
  }

  /**
   * Records that a signed request with `webhookId` was accepted, for `ttlMs` (longer than the signature's
   * tolerance window). Returns `false`, writing nothing, when that id was accepted before: a replay.
   */
  async useWebhookId(webhookId: string, ttlMs: number): Promise<boolean> {
    const key = webhookSeenKey(webhookId.slice(0, 256));
    const op = this.#kv.atomic().check({ key, versionstamp: null }).set(key, null, { expireIn: ttlMs });
    return await commitWithinLimits(op, `webhook-id '${webhookId.slice(0, 64)}'`);
  }

  /** The pair with this id, or `null`. */
  async get(id: string): Promise<Pair | null> {
    return (await this.#getEntry(id))?.pair ?? null;
  }

  async #getEntry(id: string): Promise<{ pair: Pair; entry: Deno.KvEntry<unknown> } | null> {
    const entry = await this.#reads.get(pairKey(id));
    return entry.value === null ? null : { pair: decodePair(entry.value, id), entry };
  }

  /** A page of pairs, newest first, through the status index (or the time index without `status`). */
  async list(options: ListOptions = {}): Promise<{ pairs: Pair[]; cursor?: string }> {
    const { status, limit, cursor } = parseInput(ListOptionsSchema, options, "list options");
    const page = await this.#page(status, { limit, cursor, reverse: true });
    return page.cursor === undefined ? { pairs: page.items } : { pairs: page.items, cursor: page.cursor };
  }

  /** Every pair (of one status, if given), oldest first, read a page at a time: for exports. */
  async *iterate(options: { status?: PairStatus } = {}): AsyncGenerator<Pair> {
    const { status } = parseInput(ListOptionsSchema, options, "iterate options");
    let cursor: string | undefined;
    do {
      const page = await this.#page(status, { limit: 100, cursor, reverse: false });
      yield* page.items;
      cursor = page.cursor;
    } while (cursor !== undefined);
  }

  #page(status: PairStatus | undefined, options: { limit: number; cursor?: string; reverse: boolean }) {
    const prefix = status === undefined ? PAIR_TIME_PREFIX : pairStatusPrefix(status);
    return readIndexPage(this.#kv, prefix, options, async (ids) => {
      const entries = await this.#kv.getMany(ids.map(pairKey));
      return entries.map((e, i) => {
        if (e.value === null) return null;
        const pair = decodePair(e.value, ids[i]!);
        return status === undefined || pair.status === status ? pair : null; // it moved since the index read
      });
    });
  }

  /**
   * Records a judge's verdict: awaiting_judgment → labeled (a/b name the chosen candidate) or tie, in
   * one commit checked on the pair's versionstamp that also moves the index and drops the judge lease.
   * Throws `NotFoundError` for an unknown id, `ConflictError` when the pair is no longer awaiting
   * judgment or its `expiresAt` has passed (even before the sweeper ran): a verdict never overwrites.
   */
  async recordVerdict(id: string, input: VerdictInput): Promise<Pair> {
    const given = parseInput(VerdictInputSchema, input, `a verdict on pair '${id}'`);
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const found = await this.#getEntry(id);
      if (found === null) throw new NotFoundError(`Cannot record a verdict as pair '${id}' does not exist`);
      const { pair, entry } = found;
      const now = this.#now();
      // A pair the judge gave up on is still open to a verdict (a person's, through the API).
      if (pair.status !== "awaiting_judgment" && pair.status !== "judge_failed") {
        throw new ConflictError(
          `Cannot record a verdict on pair '${id}' as it is no longer awaiting judgment: its status is '${pair.status}'`,
        );
      }
      if (isPastExpiry(pair, now)) {
        throw new ConflictError(
          `Cannot record a verdict on pair '${id}' as it expired at ${new Date(pair.expiresAt!).toISOString()}`,
        );
      }
      if (hasEqualCandidates(pair)) {
        const repaired = await this.repairCandidates(id);
        throw new ConflictError(
          `Cannot record a verdict on pair '${id}' as its candidates a and b were the same text: ` +
            (repaired?.status === "identical"
              ? "all its responses are, so it is now identical and needs no verdict"
              : "two different responses replace them, to be judged afresh"),
        );
      }
      const verdict: StoredVerdict = { ...given, at: given.at ?? now };
      const after = checkedPair(judged(pair, verdict, now), `pair '${id}'`);
      const op = new RecordedWrites().check(entry);
      transitionPair(op, pair, after);
      op.delete(leaseKey("judge", id));
      countVerdictUsage(op, verdict);
      if (await this.#group.commit(op, `pair '${id}'`)) return after;
      // Lost a race: the next round re-reads and usually finds the other writer's verdict (409).
    }
    throw new Error(`Cannot record a verdict on pair '${id}': lost the race ${MAX_ATTEMPTS} times in a row`);
  }

  /**
   * Counts a failed judgment of a pair awaiting judgment, in one commit checked on the pair. The judge's
   * lease is kept and runs `backoffMs` from now (the wait before the next try); at `maxAttempts` failures
   * the pair ends `judge_failed` with `error` as its reason instead, never sent to a judge again (a verdict
   * through the API still lands). Returns the pair as stored, or null when it is no longer awaiting
   * judgment (a verdict landed meanwhile).
   */
  async recordJudgeFailure(
    id: string,
    failure: { error: string; maxAttempts: number; backoffMs: number; owner: string; judgeId: string },
  ): Promise<Pair | null> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const found = await this.#getEntry(id);
      if (found === null || found.pair.status !== "awaiting_judgment") return null;
      const { pair, entry } = found;
      const now = this.#now();
      const failures = (pair.judgeFailures ?? 0) + 1;
      const after: Pair = failures >= failure.maxAttempts
        ? { ...pair, status: "judge_failed", judgeFailures: failures, statusReason: failure.error.slice(0, 2000) }
        : { ...pair, judgeFailures: failures };
      after.updatedAt = now;
      const op = this.#kv.atomic().check(entry);
      transitionPair(op, pair, checkedPair(after, `pair '${id}'`));
      countJudgeFailure(op, now, failure.judgeId);
      if (after.status === "judge_failed") op.delete(leaseKey("judge", id));
      else {
        const lease: Lease = { owner: failure.owner, claimedAt: now, expiresAt: now + failure.backoffMs };
        op.set(leaseKey("judge", id), lease, { expireIn: failure.backoffMs });
      }
      if (await commitWithinLimits(op, `pair '${id}'`)) return after;
    }
    throw new Error(`Cannot record a failed judgment of pair '${id}': lost the race ${MAX_ATTEMPTS} times in a row`);
  }

  /**
   * Claims up to `limit` pairs of `status`, oldest first, that have no live lease for `role` (and, for
   * pairs awaiting judgment, have not passed `expiresAt`). Each claim is one commit checking the pair's
   * and the lease key's versionstamps, so two claimers never both win; a pair this owner already holds
   * is not returned again. Returns the pairs claimed.
   */
  claim(options: ClaimOptions): Promise<Pair[]> {
    return claimPairs(this.#kv, this.#now, options);
  }

  /**
   * Extends a live lease this owner holds to `leaseMs` from now. Returns `false` when the lease is
   * gone, expired (another owner may have it: stop working on the pair) or held by another owner.
   */
  renew(id: string, options: RenewOptions): Promise<boolean> {
    return renewLease(this.#kv, this.#now, id, options);
  }

  /** Gives up this owner's lease on a pair so another worker can claim it; `false` if it held none. */
  release(id: string, role: LeaseRole, owner: string): Promise<boolean> {
    return releaseLease(this.#kv, id, role, owner);
  }

  /**
   * Marks every pair a published version's record holds (`training_records.ts`) as trained into it,
   * whatever lease it carries: the record, written in the commit that published the version, is the
   * authority. One commit per pair checked on its versionstamp, which also deletes its train lease; a
   * pair already trained into this version is left as it is, so settling twice counts nothing twice.
   * Drops the version's `unsettled` marker when no pair is left labeled.
   */
  async settle(version: number): Promise<MarkTrainedResult> {
    const result: MarkTrainedResult = { trained: [], alreadyTrained: [], refused: [] };
    for (const id of await trainedPairs(this.#kv, version)) {
      // A version's record lists the pairs and the thumbs (completion ids) it was trained on.
      const outcome = isCompletionId(id)
        ? await this.#completions.markCompletionTrained(id, version)
        : await this.#markOneTrained(id, version);
      if (outcome === "trained") result.trained.push(id);
      else if (outcome === "already") result.alreadyTrained.push(id);
      else result.refused.push({ id, reason: outcome });
    }
    // A refusal other than a lost race is final (the pair moved on for good); retrying cannot help.
    if (!result.refused.some((r) => r.reason === LOST_RACE)) await markSettled(this.#kv, version);
    return result;
  }

  async #markOneTrained(id: string, policyVersion: number): Promise<"trained" | "already" | string> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const entry = await this.#kv.get(pairKey(id));
      if (entry.value === null) return "the pair does not exist";
      const pair = decodePair(entry.value, id);
      if (pair.status === "trained" && pair.trainedInto === policyVersion) return "already";
      if (pair.status !== "labeled") {
        const into = pair.status === "trained" ? ` into policy version ${pair.trainedInto}` : "";
        return `the pair is ${pair.status}${into}, not labeled`;
      }
      const after: Pair = { ...pair, status: "trained", trainedInto: policyVersion, updatedAt: this.#now() };
      const op = this.#kv.atomic().check(entry);
      transitionPair(op, pair, checkedPair(after, `pair '${id}'`));
      op.delete(leaseKey("train", id));
      if (await commitWithinLimits(op, `pair '${id}'`)) return "trained";
    }
    return LOST_RACE;
  }

  /**
   * Repairs a pair still open to judgment (awaiting judgment or judge_failed) whose two candidates are the
   * same text (blanks aside), as pairs stored before that was refused can be: the first two different
   * texts become its candidates, or, when all its responses are the same text, it becomes `identical`,
   * never to be judged. One commit checked on the pair. Returns the pair as stored afterwards (the same pair
   * when it needed nothing), or null when it does not exist.
   */
  async repairCandidates(id: string): Promise<Pair | null> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const found = await this.#getEntry(id);
      if (found === null) return null;
      const { pair, entry } = found;
      if (!hasEqualCandidates(pair)) return pair;
      const now = this.#now();
      const j = pair.responses.findIndex((r) => !sameText(r, pair.responses[0]!));
      const after: Pair = j < 0
        ? { ...pair, status: "identical", updatedAt: now }
        : { ...pair, candidates: [0, j], updatedAt: now };
      if (j < 0) {
        delete after.expiresAt;
        delete after.statusReason;
        delete after.judgeFailures;
      }
      const op = this.#kv.atomic().check(entry);
      transitionPair(op, pair, checkedPair(after, `pair '${id}'`));
      if (j < 0) op.delete(leaseKey("judge", id));
      if (await commitWithinLimits(op, `pair '${id}'`)) return after;
    }
    throw new Error(`Cannot repair the candidates of pair '${id}': lost the race ${MAX_ATTEMPTS} times in a row`);
  }

  /**
   * Ends a labeled pair without training it: `stale` (sampled too many versions back) or `rejected` (it
   * cannot be trained), with the reason. One commit checked on the pair, which also deletes its train
   * lease. Returns `false` when the pair is no longer labeled (another trainer settled it meanwhile).
   */
  async retire(id: string, status: RetiredStatus, reason: string): Promise<boolean> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const found = await this.#getEntry(id);
      if (found === null || found.pair.status !== "labeled") return false;
      const after: Pair = { ...found.pair, status, statusReason: reason.slice(0, 2000), updatedAt: this.#now() };
      const op = this.#kv.atomic().check(found.entry);
      transitionPair(op, found.pair, checkedPair(after, `pair '${id}'`));
      op.delete(leaseKey("train", id));
      if (await commitWithinLimits(op, `pair '${id}'`)) return true;
    }
    throw new Error(`Cannot retire pair '${id}': lost the race ${MAX_ATTEMPTS} times in a row`);
  }

  /**
   * Moves pairs awaiting judgment whose `expiresAt <= now` to expired, found through the expiry index,
   * up to 8 per commit with a versionstamp check each. Returns how many it moved. Every 10 minutes it
   * also deletes the activity counters older than `ACTIVITY_RETENTION_MS` (the periodic sweep that
   * servers and judges already run).
   */
  async expirePending(now: number = this.#now()): Promise<number> {
    if (now - this.#prunedAt >= PRUNE_EVERY_MS) {
      this.#prunedAt = now;
      await pruneActivity(this.#kv, now - ACTIVITY_RETENTION_MS);
      await pruneJudgeActivity(this.#kv, now - ACTIVITY_RETENTION_MS);
      await pruneRateWindows(this.#kv, now - RATE_WINDOW_RETENTION_MS);
    }
    let expired = 0;
    let batch: Deno.KvKey[] = [];
    const due = this.#kv.list({ prefix: PAIR_EXPIRY_PREFIX, end: pairExpiryEnd(now) }, { batchSize: 100 });
    for await (const entry of due) {
      batch.push(entry.key);
      if (batch.length < EXPIRE_BATCH) continue;
      expired += await this.#expireBatch(batch, now);
      batch = [];
    }
    if (batch.length > 0) expired += await this.#expireBatch(batch, now);
    return expired;
  }

  async #expireBatch(indexKeys: Deno.KvKey[], now: number): Promise<number> {
    const ids = indexKeys.map(idOfIndexKey);
    const entries = await this.#kv.getMany(ids.map(pairKey));
    const op = this.#kv.atomic();
    const moved: string[] = [];
    for (const [i, entry] of entries.entries()) {
      const pair = entry.value === null ? null : decodePair(entry.value, ids[i]!);
      if (pair === null || pair.status !== "awaiting_judgment") {
        op.delete(indexKeys[i]!); // a stale entry: the pair can never await judgment again
        continue;
      }
      if (!isPastExpiry(pair, now)) continue;
      op.check(entry);
      transitionPair(op, pair, expired(pair, now));
      op.delete(leaseKey("judge", pair.id));
      moved.push(pair.id);
    }
    if (await commitWithinLimits(op, "expired pairs")) return moved.length;
    // A verdict landed on one of them meanwhile: go one pair at a time.
    let n = 0;
    for (const id of moved) if (await this.#expireOne(id, now)) n++;
    return n;
  }

  async #expireOne(id: string, now: number): Promise<boolean> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const found = await this.#getEntry(id);
      if (found === null || found.pair.status !== "awaiting_judgment" || !isPastExpiry(found.pair, now)) return false;
      const op = this.#kv.atomic().check(found.entry);
      transitionPair(op, found.pair, expired(found.pair, now));
      op.delete(leaseKey("judge", id));
      if (await commitWithinLimits(op, `pair '${id}'`)) return true;
    }
    return false;
  }

  /** Number of pairs in each status, from counters kept in the transitions' own commits (O(1)). */
  async counts(): Promise<Record<PairStatus, number>> {
    const entries = await this.#kv.getMany(PAIR_STATUSES.map(pairCountKey));
    const counts = {} as Record<PairStatus, number>;
    for (const [i, status] of PAIR_STATUSES.entries()) {
      counts[status] = counterValue(entries[i]!.value, `the '${status}' pair counter`);
    }
    return counts;
  }

  /**
   * Pairs created, judged, expired and trained, and verdicts whose judge agreed or disagreed with itself,
   * per minute from the minute holding `from` to the one holding `to` (ms; at most a day), from counters
   * kept in the transitions' own commits.
   */
  activity(options: { from: number; to: number }): Promise<Activity> {
    const { from, to } = options;
    if (!(Number.isFinite(from) && Number.isFinite(to) && from <= to && to - from < MAX_ACTIVITY_MINUTES * 60_000)) {
      throw new StoreInputError(
        `Cannot read activity from ${from} to ${to}: expected finite times in order, at most a day apart`,
      );
    }
    return readActivity(this.#kv, from, to);
  }

  /**
   * Takes up to `want` of the `limit` request tokens of an API key's window starting at `window` (ms), in KV
   * so that every server instance draws on one count; returns how many it got. See `rate_limits.ts`.
   */
  takeRateTokens(key: string, window: number, want: number, limit: number): Promise<number> {
    return takeRateTokens(this.#kv, key, window, want, limit);
  }

  /** Every automated judge's running totals (calls, failures, latency, tokens, votes); see `judge_usage.ts`. */
  judgeUsage(): Promise<Record<string, JudgeUsage>> {
    return readJudgeUsage(this.#kv);
  }

  /** The judges' counters per minute, over the same range rules as `activity`. */
  judgeActivity(options: { from: number; to: number }): Promise<JudgeActivity> {
    const { from, to } = options;
    if (!(Number.isFinite(from) && Number.isFinite(to) && from <= to && to - from < MAX_ACTIVITY_MINUTES * 60_000)) {
      throw new StoreInputError(
        `Cannot read judge activity from ${from} to ${to}: expected finite times in order, at most a day apart`,
      );
    }
    return readJudgeActivity(this.#kv, from, to);
  }

  /** Keeps a served completion for KTO feedback; see `CompletionStore.recordCompletion`. */
  recordCompletion(input: CompletionInput): Promise<Completion> {
    return this.#completions.recordCompletion(input);
  }

  /** The completion with this id, or `null`. */
  getCompletion(id: string): Promise<Completion | null> {
    return this.#completions.getCompletion(id);
  }

  /** Records the one feedback a completion takes (and the thumbs pair it may form); see `CompletionStore`. */
  recordCompletionFeedback(id: string, input: FeedbackInput): Promise<SignalResult> {
    return this.#completions.recordCompletionFeedback(id, input);
  }

  /** Claims completions whose thumbs awaits training (KTO), with train leases; see `CompletionStore`. */
  claimFeedback(options: Parameters<CompletionStore["claimFeedback"]>[0]): Promise<Completion[]> {
    return this.#completions.claimFeedback(options);
  }

  /** Ends a completion's thumbs without training it; see `CompletionStore`. */
  retireCompletion(id: string, status: "stale" | "rejected", reason: string): Promise<boolean> {
    return this.#completions.retireCompletion(id, status, reason);
  }

  /** Records a user's edit of a completion, a pair of the edit over it; see `CompletionStore`. */
  recordCompletionEdit(id: string, input: { text: string; annotator?: string }): Promise<SignalResult> {
    return this.#completions.recordCompletionEdit(id, input);
  }

  /** Records the answer picked among a response's choices, pairs of it over the others; see `CompletionStore`. */
  recordChoice(ids: string[], chosen: string, annotator?: string): Promise<SignalResult> {
    return this.#completions.recordChoice(ids, chosen, annotator);
  }

  /** Completions with feedback, newest feedback first, a page at a time. */
  listCompletionFeedback(options: FeedbackListOptions = {}): Promise<{ completions: Completion[]; cursor?: string }> {
    return this.#completions.listCompletionFeedback(options);
  }

  /** Number of desirable and undesirable completion feedbacks (O(1)). */
  feedbackCounts(): Promise<{ desirable: number; undesirable: number }> {
    return this.#completions.feedbackCounts();
  }
}

/** The prompt fields without undefined keys; the schema check refuses both or neither. */
function promptOf(p: { prompt?: string; messages?: Pair["messages"] }): Pick<Pair, "prompt" | "messages"> {
  return {
    ...(p.prompt === undefined ? {} : { prompt: p.prompt }),
    ...(p.messages === undefined ? {} : { messages: p.messages }),
  };
}

function judged(judging: Pair, verdict: StoredVerdict, now: number): Pair {
  const { statusReason: _, ...pair } = judging; // a judge_failed pair's reason goes with its status
  const [a, b] = pair.candidates;
  if (verdict.choice === "tie") return { ...pair, status: "tie", verdict, updatedAt: now };
  const [chosen, rejected] = verdict.choice === "a" ? [a, b] : [b, a];
  return { ...pair, status: "labeled", chosen, rejected, verdict, updatedAt: now };
}

function expired(pair: Pair, now: number): Pair {
  return { ...pair, status: "expired", updatedAt: now };
}

/** Whether a pair open to judgment shows the same text (blanks aside) as a and b. */
export function hasEqualCandidates(pair: Pair): boolean {
  if (pair.status !== "awaiting_judgment" && pair.status !== "judge_failed") return false;
  const [a, b] = pair.candidates;
  return sameText(pair.responses[a]!, pair.responses[b]!);
}

/** Whether an id in a version's record names a completion (its thumbs, trained with KTO) rather than a pair. */
export function isCompletionId(id: string): boolean {
  return id.startsWith("chatcmpl-");
}
