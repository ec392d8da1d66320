/**
 * Single completions and what users say about them: thumbs up/down (KTO's labels), and the signals a chat
 * app gets that are preferences in themselves, each stored as a labeled pair in the same commit as the
 * signal (so a signal is never half-recorded, and never makes its pair twice):
 *
 * - a thumbs up and a thumbs down on two answers to the same conversation: chosen the one up;
 * - an edit of an answer: chosen the edit, rejected the answer;
 * - a choice among the `n` answers of one response: chosen the one picked, against each other one.
 *
 * Each such pair is trained like any other (weight 1), its verdict naming the signal (`human` judge
 * `feedback:thumbs`, `feedback:edit`, `feedback:choice`) and the annotator. Answers that are the same text
 * (blanks aside) make no pair.
 */
import { decodeStored, parseInput } from "./_codec.ts";
import { readIndexPage } from "./_paging.ts";
import { assertValueFits, commitWithinLimits } from "./_size.ts";
import { ConflictError, NotFoundError, StoreInputError } from "./errors.ts";
import {
  type CompletionInput,
  CompletionInputSchema,
  type FeedbackInput,
  FeedbackInputSchema,
  type FeedbackListOptions,
  FeedbackListOptionsSchema,
} from "./inputs.ts";
import {
  COMPLETION_FEEDBACK_PREFIX,
  COMPLETION_TRAINABLE_PREFIX,
  completionConversationKey,
  completionConversationPrefix,
  completionFeedbackKey,
  completionKey,
  completionTrainableKey,
  feedbackCountKey,
  leaseKey,
} from "./keys.ts";
import { decodeLease, isLive } from "./_leases.ts";
import { type Completion, CompletionSchema, type Lease, type Pair, sameText } from "./schema.ts";
import { insertPair } from "./_mutations.ts";
import type { IdGenerator } from "./_ulid.ts";
import { counterValue } from "./_codec.ts";

/** How long a completion nobody gave feedback on is kept by default: 30 days. */
export const DEFAULT_COMPLETION_RETENTION_MS = 30 * 24 * 3600 * 1000;

const MAX_ATTEMPTS = 8;
const ONE = 1n;
// Answers to one conversation looked at for an opposite thumbs (the newest first wins).
const MAX_PARTNERS = 100;

/** What a signal on a completion made: the completion as stored, and the pairs it formed. */
export interface SignalResult {
  completion: Completion;
  pairs: string[];
}

/** The digest that names a conversation: every answer to the same prompt text shares it. */
export async function conversationDigest(promptText: string): Promise<string> {
  const hash = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(promptText));
  return Array.from(new Uint8Array(hash).slice(0, 16), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Completions for KTO feedback; `PairStore` exposes these methods. */
export class CompletionStore {
  readonly #kv: Deno.Kv;
  readonly #now: () => number;
  readonly #retentionMs: number;
  readonly #newId: IdGenerator;

  /** Wraps `kv`; `retentionMs` is how long a completion without feedback is kept; pair ids come from `newId`. */
  constructor(kv: Deno.Kv, now: () => number, retentionMs: number, newId: IdGenerator) {
    this.#kv = kv;
    this.#now = now;
    this.#retentionMs = retentionMs;
    this.#newId = newId;
  }

  /**
   * Keeps a served completion so feedback can name it later. It expires after the retention time
   * unless feedback arrives; a second completion with the same id is a `ConflictError`.
   */
  async recordCompletion(input: CompletionInput): Promise<Completion> {
    const parsed = parseInput(CompletionInputSchema, input, "a completion");
    if ((parsed.prompt === undefined) === (parsed.messages === undefined)) {
      throw new StoreInputError("Cannot accept a completion: expected exactly one of 'prompt' and 'messages'");
    }
    const conversation = parsed.promptText === undefined ? undefined : await conversationDigest(parsed.promptText);
    const completion: Completion = {
      ...parsed,
      createdAt: this.#now(),
      ...(conversation === undefined ? {} : { conversation }),
    };
    const what = `completion '${completion.id}'`;
    assertValueFits(completion, what);
    const key = completionKey(completion.id);
    const op = this.#kv.atomic().check({ key, versionstamp: null }).set(key, completion, {
      expireIn: this.#retentionMs,
    });
    if (conversation !== undefined) {
      op.set(completionConversationKey(conversation, completion.id), null, { expireIn: this.#retentionMs });
    }
    if (!(await commitWithinLimits(op, what))) {
      throw new ConflictError(`Cannot record ${what} as a completion with this id already exists`);
    }
    return completion;
  }

  /** The completion with this id, or `null`. */
  async getCompletion(id: string): Promise<Completion | null> {
    const entry = await this.#kv.get(completionKey(id));
    return entry.value === null ? null : decodeStored(CompletionSchema, entry.value, `completion '${id}'`);
  }

  /**
   * Records the one feedback a completion takes (a second one is a `ConflictError`, an unknown or
   * already-expired completion a `NotFoundError`); the completion is then kept without expiry. When another
   * answer to the same conversation has the opposite thumbs and no thumbs pair yet, the two become a labeled
   * pair in the same commit.
   */
  async recordCompletionFeedback(id: string, input: FeedbackInput): Promise<SignalResult> {
    const { label, annotator } = parseInput(FeedbackInputSchema, input, `feedback on completion '${id}'`);
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const { entry, completion: before } = await this.#entry(id);
      if (before.feedback !== undefined) {
        throw new ConflictError(`Cannot record feedback on completion '${id}' as it already has feedback`);
      }
      const at = this.#now();
      const after: Completion = {
        ...before,
        feedback: annotator === undefined ? { label, at } : { label, annotator, at },
      };
      const op = this.#kv.atomic().check(entry);
      const partner = await this.#thumbsPartner(after);
      const pairs: string[] = [];
      if (partner !== null) {
        const [up, down] = label ? [after, partner.completion] : [partner.completion, after];
        const pair = this.#pair(after, up.text, down.text, "feedback:thumbs", at, {
          annotator,
          reason: `thumbs up on ${up.id}, thumbs down on ${down.id}`,
          policyVersion: Math.min(up.policyVersion, down.policyVersion),
        });
        insertPair(op, pair);
        pairs.push(pair.id);
        after.thumbsPair = pair.id;
        const other = { ...partner.completion, thumbsPair: pair.id };
        op.check(partner.entry).set(completionKey(other.id), other);
      }
      assertValueFits(after, `completion '${id}'`);
      op.set(completionKey(id), after) // no expireIn: labeled completions are kept
        .set(completionFeedbackKey(at, id), null)
        .set(completionTrainableKey(id), null) // its thumbs now awaits training (KTO)
        .sum(feedbackCountKey(label), ONE);
      if (await commitWithinLimits(op, `completion '${id}'`)) return { completion: after, pairs };
    }
    throw new Error(`Cannot record feedback on completion '${id}': lost the race ${MAX_ATTEMPTS} times in a row`);
  }

  /**
   * Records a user's edit of a completion: the edit is chosen over the answer, as a labeled pair made in the
   * same commit. One edit per completion (a second is a `ConflictError`); an edit that changes nothing but
   * blanks is a `StoreInputError`. The completion is then kept without expiry.
   */
  async recordCompletionEdit(id: string, input: { text: string; annotator?: string }): Promise<SignalResult> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const { entry, completion: before } = await this.#entry(id);
      if (before.edit !== undefined) throw new ConflictError(`Cannot record an edit of completion '${id}': it has one`);
      if (sameText(input.text, before.text)) {
        throw new StoreInputError(`Cannot record an edit of completion '${id}' that changes nothing but blanks`);
      }
      const at = this.#now();
      const pair = this.#pair(before, input.text, before.text, "feedback:edit", at, {
        annotator: input.annotator,
        reason: `the user's edit of ${id}`,
        policyVersion: before.policyVersion,
      });
      const after: Completion = {
        ...before,
        edit: {
          text: input.text,
          at,
          pair: pair.id,
          ...(input.annotator === undefined ? {} : { annotator: input.annotator }),
        },
      };
      assertValueFits(after, `completion '${id}'`);
      const op = this.#kv.atomic().check(entry).set(completionKey(id), after);
      insertPair(op, pair);
      if (await commitWithinLimits(op, `completion '${id}'`)) return { completion: after, pairs: [pair.id] };
    }
    throw new Error(`Cannot record an edit of completion '${id}': lost the race ${MAX_ATTEMPTS} times in a row`);
  }

  /**
   * Records that the user picked `chosen` among the answers `ids` of one response (its `n` choices): a
   * labeled pair of the pick against each other answer (answers equal to it make none), all in one commit
   * with the mark on the pick. One pick per response: a second is a `ConflictError`.
   */
  async recordChoice(ids: string[], chosen: string, annotator?: string): Promise<SignalResult> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const entries = await this.#kv.getMany<unknown[]>(ids.map(completionKey));
      const found = entries.flatMap((e, i) =>
        e.value === null
          ? []
          : [{ entry: e, completion: decodeStored(CompletionSchema, e.value, `completion '${ids[i]}'`) }]
      );
      const pick = found.find((f) => f.completion.id === chosen);
      if (pick === undefined) {
        throw new NotFoundError(`Cannot record a choice as completion '${chosen}' does not exist`);
      }
      if (found.length < 2) {
        throw new StoreInputError(`Cannot record a choice of '${chosen}' as the response has no other answer kept`);
      }
      if (found.some((f) => f.completion.chosen !== undefined)) {
        throw new ConflictError(
          `Cannot record a choice of '${chosen}' as an answer of this response was chosen already`,
        );
      }
      const at = this.#now();
      const op = this.#kv.atomic();
      const pairs: string[] = [];
      for (const other of found) {
        if (other === pick || sameText(other.completion.text, pick.completion.text)) continue;
        const pair = this.#pair(pick.completion, pick.completion.text, other.completion.text, "feedback:choice", at, {
          annotator,
          reason: `${chosen} chosen over ${other.completion.id}`,
          policyVersion: pick.completion.policyVersion,
        });
        insertPair(op, pair);
        pairs.push(pair.id);
      }
      for (const f of found) op.check(f.entry);
      const after: Completion = {
        ...pick.completion,
        chosen: { at, pairs, ...(annotator === undefined ? {} : { annotator }) },
      };
      assertValueFits(after, `completion '${chosen}'`);
      op.set(completionKey(chosen), after);
      if (await commitWithinLimits(op, `the choice of '${chosen}'`)) return { completion: after, pairs };
    }
    throw new Error(`Cannot record a choice of '${chosen}': lost the race ${MAX_ATTEMPTS} times in a row`);
  }

  /**
   * Claims up to `limit` completions whose thumbs awaits training, with a train lease each (the pairs'
   * lease keys: completion ids never clash with pair ids), skipping those with a live lease unless it was
   * claimed under a lower trainer `fence`, and those `skip` names (held already).
   */
  async claimFeedback(options: {
    owner: string;
    leaseMs: number;
    limit: number;
    fence?: number;
    skip?: (id: string) => boolean;
  }): Promise<Completion[]> {
    const claimed: Completion[] = [];
    for await (const index of this.#kv.list({ prefix: COMPLETION_TRAINABLE_PREFIX }, { batchSize: 100 })) {
      if (claimed.length >= options.limit) break;
      const id = index.key[1] as string;
      if (options.skip?.(id)) continue;
      for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
        const [entry, leaseEntry] = await this.#kv.getMany([completionKey(id), leaseKey("train", id)]);
        if (entry!.value === null) break;
        const completion = decodeStored(CompletionSchema, entry!.value, `completion '${id}'`);
        const lease = decodeLease(leaseEntry!.value, "train", id);
        const t = this.#now();
        const fenced = options.fence !== undefined && lease !== null && (lease.fence ?? 0) < options.fence;
        if (completion.feedback === undefined || completion.trainedInto !== undefined) break;
        if (isLive(lease, t) && !fenced) break;
        const value: Lease = {
          owner: options.owner,
          claimedAt: t,
          expiresAt: t + options.leaseMs,
          ...(options.fence === undefined ? {} : { fence: options.fence }),
        };
        const op = this.#kv.atomic().check(entry!).check(leaseEntry!)
          .set(leaseKey("train", id), value, { expireIn: options.leaseMs });
        if (await commitWithinLimits(op, `the train lease on completion '${id}'`)) {
          claimed.push(completion);
          break;
        }
      }
    }
    return claimed;
  }

  /**
   * Marks a completion's thumbs trained into `version` (settling a published version), dropping it from the
   * trainable index and its lease; idempotent. Returns "trained", "already", or why it could not.
   */
  async markCompletionTrained(id: string, version: number): Promise<"trained" | "already" | string> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const entry = await this.#kv.get(completionKey(id));
      if (entry.value === null) return "the completion does not exist";
      const completion = decodeStored(CompletionSchema, entry.value, `completion '${id}'`);
      if (completion.trainedInto === version) return "already";
      if (completion.trainedInto !== undefined) return `the completion was trained into v${completion.trainedInto}`;
      const op = this.#kv.atomic().check(entry).set(completionKey(id), { ...completion, trainedInto: version })
        .delete(completionTrainableKey(id)).delete(leaseKey("train", id));
      if (await commitWithinLimits(op, `completion '${id}'`)) return "trained";
    }
    return "lost the race";
  }

  /** Ends a completion's thumbs without training it (stale or not encodable), with the reason. */
  async retireCompletion(id: string, status: "stale" | "rejected", reason: string): Promise<boolean> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const entry = await this.#kv.get(completionKey(id));
      if (entry.value === null) return false;
      const completion = decodeStored(CompletionSchema, entry.value, `completion '${id}'`);
      if (completion.trainedInto !== undefined || completion.retired !== undefined) return false;
      const op = this.#kv.atomic().check(entry)
        .set(completionKey(id), { ...completion, retired: { status, reason: reason.slice(0, 2000) } })
        .delete(completionTrainableKey(id)).delete(leaseKey("train", id));
      if (await commitWithinLimits(op, `completion '${id}'`)) return true;
    }
    throw new Error(`Cannot retire completion '${id}': lost the race ${MAX_ATTEMPTS} times in a row`);
  }

  async #entry(id: string): Promise<{ entry: Deno.KvEntry<unknown>; completion: Completion }> {
    const entry = await this.#kv.get(completionKey(id));
    if (entry.value === null) {
      throw new NotFoundError(`Cannot find completion '${id}': it does not exist or has expired`);
    }
    return {
      entry: entry as Deno.KvEntry<unknown>,
      completion: decodeStored(CompletionSchema, entry.value, `completion '${id}'`),
    };
  }

  /** The newest other answer to the same conversation with the opposite thumbs, no thumbs pair and another text. */
  async #thumbsPartner(
    completion: Completion,
  ): Promise<{ entry: Deno.KvEntry<unknown>; completion: Completion } | null> {
    if (completion.conversation === undefined || completion.feedback === undefined) return null;
    const ids: string[] = [];
    const index = this.#kv.list({ prefix: completionConversationPrefix(completion.conversation) }, {
      limit: MAX_PARTNERS,
      reverse: true,
    });
    for await (const e of index) if (e.key[2] !== completion.id) ids.push(e.key[2] as string);
    const entries = ids.length === 0 ? [] : await this.#kv.getMany<unknown[]>(ids.map(completionKey));
    let best: { entry: Deno.KvEntry<unknown>; completion: Completion } | null = null;
    for (const [i, e] of entries.entries()) {
      if (e.value === null) continue;
      const other = decodeStored(CompletionSchema, e.value, `completion '${ids[i]}'`);
      const fits = other.feedback !== undefined && other.feedback.label !== completion.feedback.label &&
        other.thumbsPair === undefined && other.promptText === completion.promptText &&
        !sameText(other.text, completion.text);
      if (fits && (best === null || other.feedback!.at > best.completion.feedback!.at)) {
        best = { entry: e as Deno.KvEntry<unknown>, completion: other };
      }
    }
    return best;
  }

  /** A labeled pair from a signal on `from` (its prompt): `chosen` over `rejected`. */
  #pair(
    from: Completion,
    chosen: string,
    rejected: string,
    signal: string,
    now: number,
    o: { annotator?: string; reason: string; policyVersion: number },
  ): Pair {
    return {
      id: this.#newId(now),
      createdAt: now,
      updatedAt: now,
      status: "labeled",
      ...(from.messages === undefined ? { prompt: from.prompt! } : { messages: from.messages }),
      promptText: from.promptText ?? from.prompt ?? "",
      responses: [chosen, rejected],
      policyVersion: o.policyVersion,
      candidates: [0, 1],
      chosen: 0,
      rejected: 1,
      verdict: {
        choice: "a",
        judge: { kind: "human", id: signal },
        ...(o.annotator === undefined ? {} : { annotator: o.annotator }),
        reason: o.reason,
        at: now,
      },
      source: "imported",
    };
  }

  /** Completions with feedback, newest feedback first, a page at a time. */
  async listCompletionFeedback(
    options: FeedbackListOptions = {},
  ): Promise<{ completions: Completion[]; cursor?: string }> {
    const { limit, cursor } = parseInput(FeedbackListOptionsSchema, options, "feedback list options");
    const page = await readIndexPage(
      this.#kv,
      COMPLETION_FEEDBACK_PREFIX,
      { limit, cursor, reverse: true },
      async (ids) => {
        const entries = await this.#kv.getMany(ids.map(completionKey));
        return entries.map((e, i) =>
          e.value === null ? null : decodeStored(CompletionSchema, e.value, `completion '${ids[i]}'`)
        );
      },
    );
    return page.cursor === undefined ? { completions: page.items } : { completions: page.items, cursor: page.cursor };
  }

  /** Number of desirable and undesirable feedbacks, read from counters. */
  async feedbackCounts(): Promise<{ desirable: number; undesirable: number }> {
    const [yes, no] = await this.#kv.getMany([feedbackCountKey(true), feedbackCountKey(false)]);
    return {
      desirable: counterValue(yes?.value ?? null, "the desirable feedback counter"),
      undesirable: counterValue(no?.value ?? null, "the undesirable feedback counter"),
    };
  }
}
