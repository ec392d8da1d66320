/** What the store keeps, as zod schemas: every value read back from KV is parsed with one of these. */
import { z } from "zod";
import type { ChatMessage } from "../model/io/tokenizer.ts";
import { ID_PATTERN } from "./_ulid.ts";

/**
 * A pair's life: awaiting_judgment → labeled | tie | expired | judge_failed; labeled → trained | stale |
 * rejected; judge_failed → labeled | tie (a person can still label it). `identical`: sampled responses
 * that are all the same text (blanks aside), stored to be counted and never judged. `judge_failed`: the judge failed
 * on it `max_attempts` times; `stale`: sampled from a policy more versions back than the trainer's
 * `max_staleness`; `rejected`: the trainer cannot train it (its prompt does not fit the model's context,
 * say). These three carry the reason in `statusReason`.
 */
export const PAIR_STATUSES = [
  "awaiting_judgment",
  "labeled",
  "tie",
  "expired",
  "trained",
  "stale",
  "rejected",
  "judge_failed",
  "identical",
] as const;
/** The statuses a labeled pair may end in without being trained. */
export const RETIRED_STATUSES = ["stale", "rejected"] as const;
/** One of `RETIRED_STATUSES`. */
export type RetiredStatus = (typeof RETIRED_STATUSES)[number];
/** One of `PAIR_STATUSES`. */
export const PairStatusSchema = z.enum(PAIR_STATUSES);
/** One of `PAIR_STATUSES`. */
export type PairStatus = z.infer<typeof PairStatusSchema>;

/** Who may hold a lease on a pair: a judge worker or a trainer. */
export const LeaseRoleSchema = z.enum(["judge", "train"]);
/** Who may hold a lease on a pair: a judge worker or a trainer. */
export type LeaseRole = z.infer<typeof LeaseRoleSchema>;

/** One chat message, as `src/model/io/messages.ts` defines it. */
export const ChatMessageSchema: z.ZodType<ChatMessage, ChatMessage> = z.object({
  role: z.string(),
  content: z.string(),
});

const Ms = z.number().int().nonnegative();
const Index = z.number().int().nonnegative();
const Version = z.number().int().nonnegative();

/** What the per-minute activity counters count (see `activityKey`). */
export const ACTIVITY_KINDS = [
  /** A pair sampled and stored. */
  "created",
  /** An already-labeled pair imported. */
  "imported",
  /** A verdict a or b (the pair became labeled). */
  "labeled",
  /** A verdict tie. */
  "tie",
  /** A pending pair expired unjudged. */
  "expired",
  /** A labeled pair trained into a policy version. */
  "trained",
  /** A labeled pair too old to train on (see `PAIR_STATUSES`). */
  "stale",
  /** A labeled pair the trainer could not train on (see `PAIR_STATUSES`). */
  "rejected",
  /** A pair the judge failed on too often (see `PAIR_STATUSES`). */
  "judge_failed",
  /** A sampled pair whose responses were all the same text (see `PAIR_STATUSES`). */
  "identical",
  /** A verdict whose judge agreed with itself (both orders, or every ensemble member). */
  "agreed",
  /** A verdict whose judge disagreed with itself (counted as a tie by the LLM judge). */
  "disagreed",
] as const;
/** One of `ACTIVITY_KINDS`. */
export type ActivityKind = (typeof ACTIVITY_KINDS)[number];

/** Which judge gave a verdict. */
export const VerdictJudgeSchema = z.object({
  kind: z.enum(["verifier", "hf", "webhook", "human", "ensemble", "import"]),
  id: z.string().min(1),
});
/** Which judge gave a stored verdict (the judge itself is a `Judge` of `src/judge/types.ts`). */
export type VerdictJudge = z.infer<typeof VerdictJudgeSchema>;

const Count = z.number().int().nonnegative();

/** What one judgment cost at a remote service: HTTP requests (retries included) and tokens as reported. */
export const JudgeUsageSchema = z.object({ requests: Count, promptTokens: Count, completionTokens: Count });

/** One ensemble member's vote: its choice or "failed" (with the error), its latency and usage. */
export const MemberVoteSchema = z.object({
  judgeId: z.string().min(1),
  choice: z.enum(["a", "b", "tie", "failed"]),
  latencyMs: z.number().nonnegative(),
  usage: JudgeUsageSchema.optional(),
  error: z.string().max(2000).optional(),
});

/**
 * A judge's answer on the two candidates shown to it as a and b, as stored with the pair (the judge's own
 * `Verdict`, in `src/judge/types.ts`, plus who gave it and when).
 */
export const StoredVerdictSchema = z.object({
  choice: z.enum(["a", "b", "tie"]),
  judge: VerdictJudgeSchema,
  annotator: z.string().optional(),
  reason: z.string().optional(),
  at: Ms,
  latencyMs: z.number().nonnegative().optional(),
  /**
   * Whether the judge agreed with itself: an LLM judge asked in both orders gave the same answer, or every
   * member of an ensemble voted the same. Absent for single-answer judges (verifier, human) and old records.
   */
  agreed: z.boolean().optional(),
  /** What the decision cost at a remote service (LLM judges; an ensemble's is its members' sum). */
  usage: JudgeUsageSchema.optional(),
  /** An ensemble's members' votes, in member order. */
  votes: z.array(MemberVoteSchema).optional(),
});
/** A judge's answer as stored with the pair. */
export type StoredVerdict = z.infer<typeof StoredVerdictSchema>;

/** A stored preference pair (see `PAIR_STATUSES` for its life). */
export const PairSchema = z.object({
  id: z.string().regex(ID_PATTERN, "expected a 26-character time-sortable id"),
  createdAt: Ms,
  updatedAt: Ms,
  status: PairStatusSchema,
  prompt: z.string().optional(),
  messages: z.array(ChatMessageSchema).min(1).optional(),
  /** The prompt exactly as the policy saw it (chat template applied). */
  promptText: z.string(),
  responses: z.array(z.string()).min(2),
  policyVersion: Version,
  /** The two response indices shown to the judge as a and b. */
  candidates: z.tuple([Index, Index]),
  chosen: Index.optional(),
  rejected: Index.optional(),
  verdict: StoredVerdictSchema.optional(),
  /** When a pair still awaiting judgment stops accepting verdicts (ms). */
  expiresAt: Ms.optional(),
  /** The policy version this pair was trained into. */
  trainedInto: Version.optional(),
  /** Why a pair is `stale`, `rejected` or `judge_failed`. */
  statusReason: z.string().optional(),
  /** Judgments that failed on this pair so far (absent: none). */
  judgeFailures: z.number().int().positive().optional(),
  /** sampled: the policy's answers; client: a client's own model's answers; imported: a labeled dataset. */
  source: z.enum(["sampled", "client", "imported"]),
  /** The label of the model that wrote a client's responses. */
  producedBy: z.string().optional(),
}).superRefine((p, ctx) => {
  const fail = (message: string) => ctx.addIssue({ code: "custom", message });
  if ((p.prompt === undefined) === (p.messages === undefined)) fail("expected exactly one of 'prompt' and 'messages'");
  const [a, b] = p.candidates;
  if (a === b || a >= p.responses.length || b >= p.responses.length) {
    fail(`'candidates' must be two different indices into the ${p.responses.length} responses: got [${a}, ${b}]`);
  } else if (p.status === "identical" ? !p.responses.every((r) => sameText(r, p.responses[0]!)) : false) {
    fail("an identical pair's responses are all the same text");
  }
  const retired = (RETIRED_STATUSES as readonly string[]).includes(p.status);
  const judged = p.status === "labeled" || p.status === "trained" || retired;
  if (judged) {
    if (p.verdict === undefined || p.verdict.choice === "tie") fail(`a ${p.status} pair needs a verdict of a or b`);
    if (p.chosen === undefined || p.rejected === undefined) fail(`a ${p.status} pair needs 'chosen' and 'rejected'`);
    else if (!sameSet([p.chosen, p.rejected], p.candidates)) fail("'chosen' and 'rejected' must be the two candidates");
  } else if (p.chosen !== undefined || p.rejected !== undefined) {
    fail(`a ${p.status} pair has no 'chosen' or 'rejected'`);
  }
  if (p.status === "tie" && p.verdict?.choice !== "tie") fail("a tie pair needs a verdict 'tie'");
  const unjudged = ["awaiting_judgment", "expired", "judge_failed", "identical"].includes(p.status);
  if (unjudged && p.verdict !== undefined) {
    fail(`a ${p.status} pair has no verdict`);
  }
  if ((p.status === "trained") !== (p.trainedInto !== undefined)) fail("'trainedInto' is set exactly on trained pairs");
  const explained = retired || p.status === "judge_failed";
  if (explained !== (p.statusReason !== undefined)) {
    fail("'statusReason' is set exactly on stale, rejected and judge_failed pairs");
  }
});
/** A stored preference pair (see `PAIR_STATUSES` for its life). */
export type Pair = z.infer<typeof PairSchema>;

/** Whether two answers are the same text once runs of blanks are one space and the ends are trimmed. */
export function sameText(x: string, y: string): boolean {
  const norm = (s: string) => s.replace(/\s+/g, " ").trim();
  return x === y || norm(x) === norm(y);
}

function sameSet(x: readonly number[], y: readonly number[]): boolean {
  return x.length === y.length && x.every((v) => y.includes(v)) && y.every((v) => x.includes(v));
}

/** A lease on one pair for one role: whoever holds it (until `expiresAt`) works on that pair. */
export const LeaseSchema = z.object({
  owner: z.string().min(1),
  expiresAt: Ms,
  claimedAt: Ms,
  /** The trainer fence token its holder claimed under (train leases); a higher token voids it. */
  fence: z.number().int().nonnegative().optional(),
});
/** A lease on one pair for one role. */
export type Lease = z.infer<typeof LeaseSchema>;

/** A single completion kept for KTO feedback (`{prompt, completion, label}`). */
export const CompletionSchema = z.object({
  id: z.string().min(1),
  createdAt: Ms,
  prompt: z.string().optional(),
  messages: z.array(ChatMessageSchema).min(1).optional(),
  promptText: z.string().optional(),
  text: z.string(),
  policyVersion: Version,
  feedback: z.object({ label: z.boolean(), annotator: z.string().optional(), at: Ms }).optional(),
  /** Which conversation it answers: a digest of `promptText`, shared by every answer to the same turn. */
  conversation: z.string().optional(),
  /** The pair its thumbs formed with an opposite thumbs on another answer to the same conversation. */
  thumbsPair: z.string().optional(),
  /** The user's edit of this answer, and the pair it made (chosen: the edit). */
  edit: z.object({ text: z.string(), annotator: z.string().optional(), at: Ms, pair: z.string() }).optional(),
  /** The policy version its thumbs was trained into (KTO, by the online worker). */
  trainedInto: Version.optional(),
  /** Why its thumbs will not be trained: sampled too many versions back, or it cannot be encoded. */
  retired: z.object({ status: z.enum(["stale", "rejected"]), reason: z.string() }).optional(),
  /** Chosen among the choices of one response (`n` ≥ 2), and the pairs that made (chosen against each other). */
  chosen: z.object({ annotator: z.string().optional(), at: Ms, pairs: z.array(z.string()) }).optional(),
}).refine((c) => (c.prompt === undefined) !== (c.messages === undefined), {
  message: "expected exactly one of 'prompt' and 'messages'",
});
/** A single completion kept for KTO feedback. */
export type Completion = z.infer<typeof CompletionSchema>;

/** The value of an idempotency record: the id of the pair the first request created. */
export const IdempotencyRecordSchema = z.string().regex(ID_PATTERN);
