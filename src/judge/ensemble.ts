/**
 * A vote over several judges (LLM judges of different families, a verifier and an LLM, ...), by one of
 * two rules (`ENSEMBLE_RULES`):
 *
 * - `majority` (the default): the members that voted a or b decide, by plurality; a member that abstains
 *   (answers tie) or fails does not veto, so a verifier's vote stands when an LLM abstains or errs. Equal
 *   votes, or no a/b vote at all, make a tie; when every member failed the ensemble fails (retried later).
 * - `unanimous`: every member must vote the same a or b; any failure fails the ensemble (retried later),
 *   any other disagreement is a tie.
 */

import { type Choice, type Judge, JudgeError, type JudgeInput, type Prompt, type Verdict } from "./types.ts";

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
}

/** How often the members agree, for the dashboard. */
export interface EnsembleAgreement {
  /** Verdicts the ensemble returned. */
  verdicts: number;
  /** Of those, verdicts where every member answered and all gave the same choice. */
  unanimous: number;
  /** `unanimous / verdicts` (0 before the first verdict). */
  unanimousFraction: number;
  /** Per member: how many of its answers matched the ensemble's verdict, out of how many it gave. */
  members: Record<string, { agreed: number; answered: number; failed: number }>;
}

/** The ensemble judge, with its agreement statistics. */
export interface EnsembleJudge extends Judge {
  readonly kind: "ensemble";
  readonly members: readonly Judge[];
  agreement(): EnsembleAgreement;
}

/** Creates an ensemble judge; members that answer "pending" (human judges) cannot vote and are refused. */
export function createEnsembleJudge(judges: Judge[], options: EnsembleJudgeOptions = {}): EnsembleJudge {
  const id = options.id ?? "ensemble";
  const rule = options.rule ?? "majority";
  const decide = rule === "majority" ? decideMajority : decideUnanimous;
  if (judges.length === 0) {
    throw new TypeError(`Cannot create ensemble judge '${id}' as it needs at least one member: current count is 0`);
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
  const stats = { verdicts: 0, unanimous: 0 };
  const members: EnsembleAgreement["members"] = Object.fromEntries(
    ids.map((x) => [x, { agreed: 0, answered: 0, failed: 0 }]),
  );

  async function vote(judge: Judge, input: JudgeInput, signal?: AbortSignal): Promise<Choice | JudgeError> {
    try {
      const verdict = await judge.judge(input, signal);
      if (verdict === "pending") {
        return new JudgeError(`Cannot count a vote from '${judge.id}' as it answered "pending"`, {
          judgeId: judge.id,
          code: "invalid",
        });
      }
      return verdict.choice;
    } catch (err) {
      return err instanceof JudgeError
        ? err
        : new JudgeError(`Cannot count a vote from '${judge.id}' as it threw: ${(err as Error)?.message ?? err}`, {
          judgeId: judge.id,
          code: "failed",
          cause: err,
        });
    }
  }

  const ensemble: EnsembleJudge = {
    id,
    kind: "ensemble",
    members: judges,
    async judge(input: JudgeInput, signal?: AbortSignal): Promise<Verdict> {
      const start = performance.now();
      const votes = await Promise.all(judges.map((j) => vote(j, input, signal)));
      const outcome = decide(votes.map((v) => (v instanceof JudgeError ? "failed" : v)));
      const tally = votes.map((v, i) => `${ids[i]}: ${v instanceof JudgeError ? `failed (${v.code})` : v}`).join(", ");
      if (outcome === "undecided") {
        const failures = votes.filter((v): v is JudgeError => v instanceof JudgeError);
        throw new JudgeError(
          failures.length === votes.length
            ? `Cannot get a verdict from ensemble '${id}' as every member failed: ${tally}`
            : `Cannot get a verdict from ensemble '${id}' as a member failed and the rule is unanimous: ${tally}`,
          { judgeId: id, code: "failed", cause: new AggregateError(failures) },
        );
      }
      stats.verdicts++;
      const unanimous = votes.every((v) => v === votes[0] && !(v instanceof JudgeError));
      if (unanimous) stats.unanimous++;
      votes.forEach((v, i) => {
        const m = members[ids[i]!]!;
        if (v instanceof JudgeError) m.failed++;
        else {
          m.answered++;
          if (v === outcome) m.agreed++;
        }
      });
      return {
        choice: outcome,
        reason: `${rule} of ${votes.length}: ${tally}`,
        latencyMs: performance.now() - start,
        judgeId: id,
        agreed: unanimous,
      };
    },
    agreement(): EnsembleAgreement {
      return {
        ...stats,
        unanimousFraction: stats.verdicts === 0 ? 0 : stats.unanimous / stats.verdicts,
        members: structuredClone(members),
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

/**
 * The majority rule: among the members that voted a or b, the choice with more votes wins; equal counts
 * (none included) are a tie. Ties and failures abstain. "undecided" only when every member failed.
 */
export function decideMajority(votes: (Choice | "failed")[]): Choice | "undecided" {
  if (votes.every((v) => v === "failed")) return "undecided";
  const a = votes.filter((v) => v === "a").length;
  const b = votes.filter((v) => v === "b").length;
  return a > b ? "a" : b > a ? "b" : "tie";
}

/** The unanimous rule: every member voted the same a or b; a failure anywhere is "undecided"; else a tie. */
export function decideUnanimous(votes: (Choice | "failed")[]): Choice | "undecided" {
  if (votes.some((v) => v === "failed")) return "undecided";
  for (const choice of ["a", "b"] as const) if (votes.length > 0 && votes.every((v) => v === choice)) return choice;
  return "tie";
}
