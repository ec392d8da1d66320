/** The arguments of the store's methods, as zod schemas (the store parses every argument it is given). */
import { z } from "zod";
import { ChatMessageSchema, LeaseRoleSchema, type Pair, PairStatusSchema, StoredVerdictSchema } from "./schema.ts";

const Ms = z.number().int().nonnegative();
const Version = z.number().int().nonnegative();
const Index = z.number().int().nonnegative();
const Owner = z.string().min(1).max(256);

/** A new pair sampled from the policy (`PairStore.create`). */
export const CreatePairInputSchema = z.object({
  /** The prompt as a plain string; exactly one of `prompt` and `messages`. */
  prompt: z.string().optional(),
  /** The prompt as chat messages; exactly one of `prompt` and `messages`. */
  messages: z.array(ChatMessageSchema).min(1).optional(),
  /** What the policy saw (chat template applied). */
  promptText: z.string(),
  /** The sampled responses, at least two. */
  responses: z.array(z.string()).min(2),
  /** The policy version that sampled them. */
  policyVersion: Version,
  /** The two response indices shown to the judge as a and b; default [0, 1]. */
  candidates: z.tuple([Index, Index]).default([0, 1]),
  /** When the pair stops accepting verdicts (ms); pending human pairs set it. */
  expiresAt: Ms.optional(),
  /** Responses a client's own model wrote (`client`) rather than samples of the policy; default `sampled`. */
  source: z.enum(["sampled", "client"]).default("sampled"),
  /** The label of the model that wrote a client's responses. */
  producedBy: z.string().min(1).max(200).optional(),
});
/** A new pair sampled from the policy (`PairStore.create`). */
export type CreatePairInput = z.input<typeof CreatePairInputSchema>;

/** An already-labeled triple from a dataset (`PairStore.importLabeled`), TRL's `{prompt, chosen, rejected}`. */
export const ImportLabeledInputSchema = z.object({
  /** The prompt as a plain string; exactly one of `prompt` and `messages`. */
  prompt: z.string().optional(),
  /** The prompt as chat messages; exactly one of `prompt` and `messages`. */
  messages: z.array(ChatMessageSchema).min(1).optional(),
  /** The prompt as the policy will see it; defaults to `prompt`, required with `messages`. */
  promptText: z.string().optional(),
  chosen: z.string(),
  rejected: z.string(),
  /** The policy version current at import; 0 when unknown. */
  policyVersion: Version.default(0),
  /** Names the dataset or the importer in `verdict.judge.id`; default "import". */
  judgeId: z.string().min(1).default("import"),
  annotator: z.string().optional(),
  reason: z.string().optional(),
}).superRefine((p, ctx) => {
  if (p.chosen === p.rejected) ctx.addIssue({ code: "custom", message: "chosen and rejected are the same text" });
  if (p.messages !== undefined && p.promptText === undefined) {
    ctx.addIssue({
      code: "custom",
      message: "'promptText' is required with 'messages' (the store renders no template)",
    });
  }
});
/** An already-labeled triple from a dataset (`PairStore.importLabeled`). */
export type ImportLabeledInput = z.input<typeof ImportLabeledInputSchema>;

/** A verdict as a judge gives it (`PairStore.recordVerdict`); `at` defaults to the store's clock. */
export const VerdictInputSchema = StoredVerdictSchema.extend({ at: Ms.optional() });
/** A verdict as a judge gives it (`PairStore.recordVerdict`). */
export type VerdictInput = z.input<typeof VerdictInputSchema>;

/** Options of idempotent creation. */
export const IdempotencyOptionsSchema = z.object({
  /** A client's key (e.g. the `Idempotency-Key` header): a repeat returns the first pair for 24 h. */
  idempotencyKey: z.string().min(1).max(256).optional(),
});
/** Options of idempotent creation. */
export type IdempotencyOptions = z.input<typeof IdempotencyOptionsSchema>;

/** `PairStore.list` options. */
export const ListOptionsSchema = z.object({
  /** Only pairs in this status; all pairs when absent. */
  status: PairStatusSchema.optional(),
  /** Most pairs on the page, 1 to 100; default 20. */
  limit: z.number().int().min(1).max(100).default(20),
  /** The cursor of the previous page. */
  cursor: z.string().optional(),
});
/** `PairStore.list` options. */
export type ListOptions = z.input<typeof ListOptionsSchema>;

/** `PairStore.claim` options (except `filter`, a function zod does not check). */
export const ClaimOptionsSchema = z.object({
  /** Pairs in this status (judges claim `awaiting_judgment`, trainers `labeled`). */
  status: PairStatusSchema,
  role: LeaseRoleSchema,
  /** Names the worker; leases are compared by it. */
  owner: Owner,
  /** How long the lease lasts unless renewed (ms). */
  leaseMs: z.number().int().positive(),
  /** Most pairs claimed by this call, 1 to 1000. */
  limit: z.number().int().min(1).max(1000),
  /**
   * The trainer fence token the claimer holds (`training_records.ts`): written into its leases, and a
   * live lease claimed under a lower token counts as free (its holder can no longer publish).
   */
  fence: z.number().int().positive().optional(),
});
/** `PairStore.claim` options. */
export type ClaimOptions = z.input<typeof ClaimOptionsSchema> & {
  /** Claims only pairs it accepts; it runs after the pair is read and before the claim commits. */
  filter?: (pair: Pair) => boolean | Promise<boolean>;
};

/** `PairStore.renew` options. */
export const RenewOptionsSchema = z.object({
  role: LeaseRoleSchema,
  owner: Owner,
  leaseMs: z.number().int().positive(),
});
/** `PairStore.renew` options. */
export type RenewOptions = z.input<typeof RenewOptionsSchema>;

/** A completion served to a user, kept for KTO feedback (`PairStore.recordCompletion`). */
export const CompletionInputSchema = z.object({
  /** The id the client will quote back (e.g. the chat completion id). */
  id: z.string().min(1).max(256),
  prompt: z.string().optional(),
  messages: z.array(ChatMessageSchema).min(1).optional(),
  promptText: z.string().optional(),
  text: z.string(),
  policyVersion: Version,
});
/** A completion served to a user (`PairStore.recordCompletion`). */
export type CompletionInput = z.input<typeof CompletionInputSchema>;

/** Feedback on one completion: KTO's desirable (`true`) or undesirable (`false`). */
export const FeedbackInputSchema = z.object({ label: z.boolean(), annotator: z.string().optional() });
/** Feedback on one completion. */
export type FeedbackInput = z.input<typeof FeedbackInputSchema>;

/** `PairStore.listCompletionFeedback` options. */
export const FeedbackListOptionsSchema = z.object({
  limit: z.number().int().min(1).max(100).default(20),
  cursor: z.string().optional(),
});
/** `PairStore.listCompletionFeedback` options. */
export type FeedbackListOptions = z.input<typeof FeedbackListOptionsSchema>;
