/**
 * A vote over several judges (LLM judges of different families, a verifier and an LLM, ...), by one of
 * two rules (`ENSEMBLE_RULES`):
 *
 * - `majority` (the default): the members that voted a or b decide, by their summed weights (1 each unless
 *   given); a member that abstains (answers tie) or fails does not veto, so a verifier's vote stands when an
 *   LLM abstains or errs. Equal weight on both sides, or no a/b vote at all, make a tie; when every member
 *   failed the ensemble fails (retried later).
 * - `unanimous`: every member must vote the same a or b; any failure fails the ensemble (retried later),
 *   any other disagreement is a tie. Weights play no part.
 *
 * Every verdict carries each member's vote (with its latency and usage), so the store can count how often
 * each member agrees with the ensemble.
 */

import {
  type Choice,
  type Judge,
  JudgeError,
  type JudgeInput,
  type JudgeUsageReport,
  type MemberVote,
  type Prompt,
  type Verdict,
} from "./types.ts";

/** How an ensemble combines its members' votes (see the module comment). */
export const ENSEMBLE_RULES = ["majority", "unanimous"] as const;
/** One of `ENSEMBLE_RULES`. */
export type EnsembleRule = (typeof ENSEMBLE_RULES)[number];

/** Options of `createEnsembleJudge`. */
export interface EnsembleJudgeOptions {
  /** The judge's id in verdicts and metrics. Default "ensemble". */
  id?: string;
  /** How votes combine; default "majority". */
  rule?: EnsembleRule;
  /** Each member's weight under `majority`, in member order (positive, finite); default 1 each. */
  weights?: number[];
}

/** The ensemble judge. */
export interface EnsembleJudge extends Judge {
  readonly kind: "ensemble";
  readonly members: readonly Judge[];
}

/** Creates an ensemble judge; members that answer "pending" (human judges) cannot vote and are refused. */
export function createEnsembleJudge(judges: Judge[], options: EnsembleJudgeOptions = {}): EnsembleJudge {
  const id = options.id ?? "ensemble";
  const rule = options.rule ?? "majority";
  const weights = options.weights ?? judges.map(() => 1);
  if (judges.length === 0) {
    throw new TypeError(`Cannot create ensemble judge '${id}' as it needs at least one member: current count is 0`);
  }
  if (weights.length !== judges.length || weights.some((w) => !(Number.isFinite(w) && w > 0))) {
    throw new TypeError(
      `Cannot create ensemble judge '${id}' as it needs one positive weight per member: ` +
        `current weights are [${weights.join(", ")}] for ${judges.length} member(s)`,
    );
  }
  const human = judges.find((j) => j.kind === "webhook");
  if (human !== undefined) {
    throw new TypeError(
      `Cannot create ensemble judge '${id}' with webhook judge '${human.id}' as a human's verdict arrives later`,
    );
  }
  const ids = judges.map((j) => j.id);
  const duplicate = ids.find((x, i) => ids.indexOf(x) !== i);
  if (duplicate !== undefined) {
    throw new TypeError(`Cannot create ensemble judge '${id}' as member ids must be unique: '${duplicate}' repeats`);
  }

  async function vote(judge: Judge, input: JudgeInput, signal?: AbortSignal): Promise<MemberVote> {
    const start = performance.now();
    const failed = (error: string): MemberVote => ({
      judgeId: judge.id,
      choice: "failed",
      latencyMs: performance.now() - start,
      error,
    });
    try {
      const verdict = await judge.judge(input, signal);
      if (verdict === "pending") return failed(`Cannot count a vote from '${judge.id}' as it answered "pending"`);
      return {
        judgeId: judge.id,
        choice: verdict.choice,
        latencyMs: verdict.latencyMs,
        ...(verdict.usage ? { usage: verdict.usage } : {}),
      };
    } catch (err) {
      return failed(
        err instanceof JudgeError
          ? err.message
          : `Cannot count a vote from '${judge.id}' as it threw: ${(err as Error)?.message ?? err}`,
      );
    }
  }

  const ensemble: EnsembleJudge = {
    id,
    kind: "ensemble",
    members: judges,
    async judge(input: JudgeInput, signal?: AbortSignal): Promise<Verdict> {
      const start = performance.now();
      const votes = await Promise.all(judges.map((j) => vote(j, input, signal)));
      const choices = votes.map((v) => v.choice);
      const outcome = rule === "majority" ? decideMajority(choices, weights) : decideUnanimous(choices);
      const tally = votes.map((v) => `${v.judgeId}: ${v.choice === "failed" ? `failed (${v.error})` : v.choice}`)
        .join(", ");
      if (outcome === "undecided") {
        throw new JudgeError(
          votes.every((v) => v.choice === "failed")
            ? `Cannot get a verdict from ensemble '${id}' as every member failed: ${tally}`
            : `Cannot get a verdict from ensemble '${id}' as a member failed and the rule is unanimous: ${tally}`,
          { judgeId: id, code: "failed" },
        );
      }
      const usage = sumUsage(votes.flatMap((v) => (v.usage ? [v.usage] : [])));
      return {
        choice: outcome,
        reason: `${rule} of ${votes.length}: ${tally}`,
        latencyMs: performance.now() - start,
        judgeId: id,
        agreed: choices.every((c) => c === choices[0] && c !== "failed"),
        ...(usage ? { usage } : {}),
        votes,
      };
    },
  };
  const scorers = judges.filter((j) => j.score !== undefined);
  if (scorers.length === judges.length) {
    // Every member can score: the ensemble's score is their mean.
    ensemble.score = async (prompt: Prompt, completion: string) => {
      const scores = await Promise.all(scorers.map((j) => j.score!(prompt, completion)));
      return scores.reduce((s, x) => s + x, 0) / scores.length;
    };
  }
  return ensemble;
}

/** The members' usage summed; undefined when none reported any. */
function sumUsage(reports: JudgeUsageReport[]): JudgeUsageReport | undefined {
  if (reports.length === 0) return undefined;
  return {
    requests: reports.reduce((s, u) => s + u.requests, 0),
    promptTokens: reports.reduce((s, u) => s + u.promptTokens, 0),
    completionTokens: reports.reduce((s, u) => s + u.completionTokens, 0),
  };
}

/**
 * The majority rule: among the members that voted a or b, the choice with more weight (default 1 a vote)
 * wins; equal weight (none included) is a tie. Ties and failures abstain. "undecided" only when every
 * member failed.
 */
export function decideMajority(votes: (Choice | "failed")[], weights?: number[]): Choice | "undecided" {
  if (votes.every((v) => v === "failed")) return "undecided";
  const weight = (choice: Choice) => votes.reduce((s, v, i) => s + (v === choice ? weights?.[i] ?? 1 : 0), 0);
  const a = weight("a");
  const b = weight("b");
  return a > b ? "a" : b > a ? "b" : "tie";
}

/** The unanimous rule: every member voted the same a or b; a failure anywhere is "undecided"; else a tie. */
export function decideUnanimous(votes: (Choice | "failed")[]): Choice | "undecided" {
  if (votes.some((v) => v === "failed")) return "undecided";
  for (const choice of ["a", "b"] as const) if (votes.length > 0 && votes.every((v) => v === choice)) return choice;
  return "tie";
}
