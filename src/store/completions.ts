/** Single completions and their thumbs-up/down feedback, the KTO side of the store. */
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
import { COMPLETION_FEEDBACK_PREFIX, completionFeedbackKey, completionKey, feedbackCountKey } from "./keys.ts";
import { type Completion, CompletionSchema } from "./schema.ts";
import { counterValue } from "./_codec.ts";

/** How long a completion nobody gave feedback on is kept by default: 30 days. */
export const DEFAULT_COMPLETION_RETENTION_MS = 30 * 24 * 3600 * 1000;

const MAX_ATTEMPTS = 8;
const ONE = 1n;

/** Completions for KTO feedback; `PairStore` exposes these methods. */
export class CompletionStore {
  readonly #kv: Deno.Kv;
  readonly #now: () => number;
  readonly #retentionMs: number;

  /** Wraps `kv`; `retentionMs` is how long a completion without feedback is kept. */
  constructor(kv: Deno.Kv, now: () => number, retentionMs: number) {
    this.#kv = kv;
    this.#now = now;
    this.#retentionMs = retentionMs;
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
    const completion: Completion = { ...parsed, createdAt: this.#now() };
    const what = `completion '${completion.id}'`;
    assertValueFits(completion, what);
    const key = completionKey(completion.id);
    const op = this.#kv.atomic().check({ key, versionstamp: null }).set(key, completion, {
      expireIn: this.#retentionMs,
    });
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
   * already-expired completion a `NotFoundError`); the completion is then kept without expiry.
   */
  async recordCompletionFeedback(id: string, input: FeedbackInput): Promise<Completion> {
    const { label, annotator } = parseInput(FeedbackInputSchema, input, `feedback on completion '${id}'`);
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const entry = await this.#kv.get(completionKey(id));
      if (entry.value === null) throw new NotFoundError(`Cannot record feedback as completion '${id}' does not exist`);
      const before = decodeStored(CompletionSchema, entry.value, `completion '${id}'`);
      if (before.feedback !== undefined) {
        throw new ConflictError(`Cannot record feedback on completion '${id}' as it already has feedback`);
      }
      const at = this.#now();
      const after: Completion = {
        ...before,
        feedback: annotator === undefined ? { label, at } : { label, annotator, at },
      };
      assertValueFits(after, `completion '${id}'`);
      const op = this.#kv.atomic().check(entry)
        .set(completionKey(id), after) // no expireIn: labeled completions are kept
        .set(completionFeedbackKey(at, id), null)
        .sum(feedbackCountKey(label), ONE);
      if (await commitWithinLimits(op, `completion '${id}'`)) return after;
    }
    throw new Error(`Cannot record feedback on completion '${id}': lost the race ${MAX_ATTEMPTS} times in a row`);
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
