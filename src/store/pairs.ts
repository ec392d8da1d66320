/**
 * The pair store on Deno KV, the single source of truth of the system. Every state change of a pair is
 * one atomic commit checked on the pair's versionstamp, with its index entries and counters moved in the
 * same commit (see `keys.ts` for the layout). Work is claimed with leases, never with queues.
 */
import { counterValue, decodeStored, parseInput } from "./_codec.ts";
import { checkedPair, insertPair, transitionPair } from "./_mutations.ts";
import {
  claimPairs,
  decodeLease,
  decodePair,
  isLive,
  isPastExpiry,
  MAX_ATTEMPTS,
  releaseLease,
  renewLease,
} from "./_leases.ts";
import { readIndexPage } from "./_paging.ts";
import { commitWithinLimits } from "./_size.ts";
import { createIdGenerator, type IdGenerator } from "./_ulid.ts";
import { type Activity, ACTIVITY_RETENTION_MS, pruneActivity, readActivity } from "./activity.ts";
import { CompletionStore, DEFAULT_COMPLETION_RETENTION_MS } from "./completions.ts";
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
  type MarkTrainedOptions,
  MarkTrainedOptionsSchema,
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
} from "./keys.ts";
import {
  type Completion,
  IdempotencyRecordSchema,
  type LeaseRole,
  type Pair,
  PAIR_STATUSES,
  type PairStatus,
  type Verdict,
} from "./schema.ts";

export { ConflictError, NotFoundError, StoreCorruptError, StoreInputError, StoreLimitError } from "./errors.ts";
export { type Activity, ACTIVITY_RETENTION_MS, MINUTE_MS, minuteOf } from "./activity.ts";
export * from "./inputs.ts";
export * from "./schema.ts";

/** How long a repeated request with the same idempotency key returns the first pair. */
export const IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000;

// Pairs expired per commit: one check each (≤ 10) and at most 8 × 64 KiB written (< 800 KiB).
const EXPIRE_BATCH = 8;
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

/** What `markTrained` did with each id. */
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
  #prunedAt = -Infinity;

  /** Wraps an open `Deno.Kv` (which the caller closes). */
  constructor(kv: Deno.Kv, options: PairStoreOptions = {}) {
    this.#kv = kv;
    this.#now = options.now ?? Date.now;
    this.#completions = new CompletionStore(
      kv,
      this.#now,
      options.completionRetentionMs ?? DEFAULT_COMPLETION_RETENTION_MS,
    );
  }

  /**
   * Stores a new pair awaiting judgment with its index entries and counter in one commit. With an
   * idempotency key, a repeat within 24 h returns the first pair with `created: false`.
   * Throws `StoreLimitError` (nothing written) when the pair would not fit in one KV value.
   */
  async create(input: CreatePairInput, options: IdempotencyOptions = {}): Promise<CreateResult> {
    const p = parseInput(CreatePairInputSchema, input, "a new pair");
    const { idempotencyKey } = parseInput(IdempotencyOptionsSchema, options, "create options");
    return await this.#insert(idempotencyKey, (id, now) => ({
      id,
      createdAt: now,
      updatedAt: now,
      status: "awaiting_judgment",
      ...promptOf(p),
      promptText: p.promptText,
      responses: p.responses,
      policyVersion: p.policyVersion,
      candidates: p.candidates,
      ...(p.expiresAt === undefined ? {} : { expiresAt: p.expiresAt }),
      source: "sampled",
    }));
  }

  /**
   * Stores an already-labeled triple (status labeled, judge kind "import", responses [chosen, rejected]),
   * with the same idempotency behaviour as `create`.
   */
  async importLabeled(input: ImportLabeledInput, options: IdempotencyOptions = {}): Promise<CreateResult> {
    const p = parseInput(ImportLabeledInputSchema, input, "an imported pair");
    const { idempotencyKey } = parseInput(IdempotencyOptionsSchema, options, "import options");
    return await this.#insert(idempotencyKey, (id, now) => ({
      id,
      createdAt: now,
      updatedAt: now,
      status: "labeled",
      ...promptOf(p),
      promptText: p.promptText ?? p.prompt ?? "",
      responses: [p.chosen, p.rejected],
      policyVersion: p.policyVersion,
      candidates: [0, 1],
      chosen: 0,
      rejected: 1,
      verdict: {
        choice: "a",
        judge: { kind: "import", id: p.judgeId },
        ...(p.annotator === undefined ? {} : { annotator: p.annotator }),
        ...(p.reason === undefined ? {} : { reason: p.reason }),
        at: now,
      },
      source: "imported",
    }));
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
      const op = this.#kv.atomic().check({ key: pairKey(pair.id), versionstamp: null });
      if (idemKey !== undefined) {
        op.check({ key: idemKey, versionstamp: null }).set(idemKey, pair.id, { expireIn: IDEMPOTENCY_TTL_MS });
      }
      insertPair(op, pair);
      if (await commitWithinLimits(op, what)) return { pair, created: true };
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
   * The KV this store wraps, for the readers of what other roles write beside the pairs (the trainer's
   * metrics, evaluations and status) on the dashboard.
   */
  get kv(): Deno.Kv {
    return this.#kv;
  }

  /** The pair with this id, or `null`. */
  async get(id: string): Promise<Pair | null> {
    return (await this.#getEntry(id))?.pair ?? null;
  }

  async #getEntry(id: string): Promise<{ pair: Pair; entry: Deno.KvEntry<unknown> } | null> {
    const entry = await this.#kv.get(pairKey(id));
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
      if (pair.status !== "awaiting_judgment") {
        throw new ConflictError(
          `Cannot record a verdict on pair '${id}' as it is no longer awaiting judgment: its status is '${pair.status}'`,
        );
      }
      if (isPastExpiry(pair, now)) {
        throw new ConflictError(
          `Cannot record a verdict on pair '${id}' as it expired at ${new Date(pair.expiresAt!).toISOString()}`,
        );
      }
      const verdict: Verdict = { ...given, at: given.at ?? now };
      const after = checkedPair(judged(pair, verdict, now), `pair '${id}'`);
      const op = this.#kv.atomic().check(entry);
      transitionPair(op, pair, after);
      op.delete(leaseKey("judge", id));
      if (await commitWithinLimits(op, `pair '${id}'`)) return after;
      // Lost a race: the next round re-reads and usually finds the other writer's verdict (409).
    }
    throw new Error(`Cannot record a verdict on pair '${id}': lost the race ${MAX_ATTEMPTS} times in a row`);
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
   * Moves labeled pairs to trained (`trainedInto: policyVersion`), one commit per pair checking the pair
   * and this owner's live train lease, which the commit deletes. Pairs already trained into this version
   * are reported as such without a write, so a retry after a crash never counts a pair twice.
   */
  async markTrained(ids: readonly string[], options: MarkTrainedOptions): Promise<MarkTrainedResult> {
    const { policyVersion, owner } = parseInput(MarkTrainedOptionsSchema, options, "markTrained options");
    const result: MarkTrainedResult = { trained: [], alreadyTrained: [], refused: [] };
    for (const id of ids) {
      const outcome = await this.#markOneTrained(id, policyVersion, owner);
      if (outcome === "trained") result.trained.push(id);
      else if (outcome === "already") result.alreadyTrained.push(id);
      else result.refused.push({ id, reason: outcome });
    }
    return result;
  }

  async #markOneTrained(id: string, policyVersion: number, owner: string): Promise<"trained" | "already" | string> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const [pairEntry, leaseEntry] = await this.#kv.getMany([pairKey(id), leaseKey("train", id)]);
      if (pairEntry!.value === null) return "the pair does not exist";
      const pair = decodePair(pairEntry!.value, id);
      if (pair.status === "trained" && pair.trainedInto === policyVersion) return "already";
      if (pair.status !== "labeled") {
        const into = pair.status === "trained" ? ` into policy version ${pair.trainedInto}` : "";
        return `the pair is ${pair.status}${into}, not labeled`;
      }
      const lease = decodeLease(leaseEntry!.value, "train", id);
      const now = this.#now();
      if (lease === null || lease.owner !== owner || !isLive(lease, now)) {
        const holder = lease === null ? "nobody" : `'${lease.owner}' until ${new Date(lease.expiresAt).toISOString()}`;
        return `'${owner}' holds no live train lease on the pair (held by ${holder})`;
      }
      const after: Pair = { ...pair, status: "trained", trainedInto: policyVersion, updatedAt: now };
      const op = this.#kv.atomic().check(pairEntry!).check(leaseEntry!);
      transitionPair(op, pair, checkedPair(after, `pair '${id}'`));
      op.delete(leaseKey("train", id));
      if (await commitWithinLimits(op, `pair '${id}'`)) return "trained";
    }
    return `lost the race ${MAX_ATTEMPTS} times in a row`;
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

  /** Keeps a served completion for KTO feedback; see `CompletionStore.recordCompletion`. */
  recordCompletion(input: CompletionInput): Promise<Completion> {
    return this.#completions.recordCompletion(input);
  }

  /** The completion with this id, or `null`. */
  getCompletion(id: string): Promise<Completion | null> {
    return this.#completions.getCompletion(id);
  }

  /** Records the one feedback a completion takes; see `CompletionStore.recordCompletionFeedback`. */
  recordCompletionFeedback(id: string, input: FeedbackInput): Promise<Completion> {
    return this.#completions.recordCompletionFeedback(id, input);
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

function judged(pair: Pair, verdict: Verdict, now: number): Pair {
  const [a, b] = pair.candidates;
  if (verdict.choice === "tie") return { ...pair, status: "tie", verdict, updatedAt: now };
  const [chosen, rejected] = verdict.choice === "a" ? [a, b] : [b, a];
  return { ...pair, status: "labeled", chosen, rejected, verdict, updatedAt: now };
}

function expired(pair: Pair, now: number): Pair {
  return { ...pair, status: "expired", updatedAt: now };
}
