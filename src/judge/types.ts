/** The one interface every judge implements, and the error that keeps failures out of the labels. */

import type { ChatMessage } from "../model/io/tokenizer.ts";

/** A prompt as the server received it: plain text or a conversation. */
export type Prompt = string | ChatMessage[];

/** A judge's answer: response a is better, response b is better, or neither. */
export type Choice = "a" | "b" | "tie";

/** The kinds of judge; the server and dashboard group metrics by kind. */
export type JudgeKind = "verifier" | "hf" | "webhook" | "ensemble";

/** One pair to judge: a prompt and two responses sampled for it. */
export interface JudgeInput {
  prompt: Prompt;
  a: string;
  b: string;
  /** The pair's id in the store; required by judges that answer later (webhook). */
  pairId?: string;
}

/** A judge's decision about one pair. */
export type Verdict = {
  choice: Choice;
  /** A short human-readable explanation (the LLM's rationale, the votes of an ensemble). */
  reason?: string;
  /** Wall time the judge took, in milliseconds. */
  latencyMs: number;
  /** The id of the judge that decided. */
  judgeId: string;
  /**
   * Whether the judge agreed with itself, for judges that answer more than once: an LLM judge asked in both
   * orders, an ensemble's members (all voted the same). Absent for single-answer judges.
   */
  agreed?: boolean;
  /** What the decision cost at a remote service (LLM judges; an ensemble sums its members'). */
  usage?: JudgeUsageReport;
  /** An ensemble's members' votes, in member order. */
  votes?: MemberVote[];
};

/** What one judgment cost at a remote service. */
export interface JudgeUsageReport {
  /** HTTP requests made, retries included. */
  requests: number;
  /** Prompt and completion tokens, as the endpoint reported them (0 where it reports none). */
  promptTokens: number;
  completionTokens: number;
}

/** One ensemble member's vote: its choice, or "failed" with the error. */
export interface MemberVote {
  judgeId: string;
  choice: Choice | "failed";
  latencyMs: number;
  usage?: JudgeUsageReport;
  /** The member's error, for "failed". */
  error?: string;
}

/** A judge: decides which of two responses is better, or hands the pair to a human ("pending"). */
export interface Judge {
  readonly id: string;
  readonly kind: JudgeKind;
  /**
   * Judges one pair. Resolves with a verdict, or "pending" when a human will answer later through the
   * feedback endpoint. Rejects only with a `JudgeError`; the caller then leaves the pair unjudged.
   */
  judge(input: JudgeInput, signal?: AbortSignal): Promise<Verdict | "pending">;
  /** Scores one completion (higher is better), so the server can pair best against worst among n. */
  score?(prompt: Prompt, completion: string): Promise<number>;
}

/** Running counters of a judge that talks to a remote service, for Prometheus metrics. */
export interface JudgeCounters {
  /** HTTP attempts made (first tries and retries). */
  requests: number;
  /** Attempts that were retried (HTTP 429/5xx, network error, timeout, unparseable answer). */
  retries: number;
  /** `judge` calls that ended in a `JudgeError`. */
  failures: number;
  /** `judge` calls that ended in a verdict (or "pending"). */
  successes: number;
  /** Sum of the latencies of successful `judge` calls, in milliseconds. */
  latencyMsSum: number;
}

/** Why a judge failed. */
export type JudgeErrorCode =
  | "timeout" // the remote service did not answer in time
  | "network" // the connection failed
  | "http" // the remote service answered with an error status
  | "unparseable" // the answer had no verdict in it
  | "aborted" // the caller's signal was aborted
  | "invalid" // the input or configuration cannot be judged (no pair id, bad verifier output)
  | "failed"; // anything else (a verifier that threw, every member of an ensemble failed)

/** Options of `JudgeError`. */
export interface JudgeErrorOptions {
  judgeId: string;
  code: JudgeErrorCode;
  /** The HTTP status, for code "http". */
  status?: number;
  cause?: unknown;
}

/**
 * The judge failed to decide (network, timeout, unparseable answer after retries, ...). Never turned
 * into a label: the caller leaves the pair unjudged and tries again later.
 */
export class JudgeError extends Error {
  readonly judgeId: string;
  readonly code: JudgeErrorCode;
  readonly status?: number;

  constructor(message: string, options: JudgeErrorOptions) {
    super(message, { cause: options.cause });
    this.name = "JudgeError";
    this.judgeId = options.judgeId;
    this.code = options.code;
    this.status = options.status;
  }
}

/** A fresh set of zeroed counters. */
export function newCounters(): JudgeCounters {
  return { requests: 0, retries: 0, failures: 0, successes: 0, latencyMsSum: 0 };
}
