/**
 * The judge role: claims pairs awaiting judgment with a lease, asks the configured judge and records
 * its verdict. A failed judgment is counted on the pair and retried after a capped exponential back-off
 * (its lease runs that long); after `maxAttempts` failures the pair ends `judge_failed` with the last
 * error, and is never sent to a judge again (a person can still label it through the API).
 * A human judge's "pending" keeps the lease until it lapses, so the webhook is not re-sent at once.
 */
import { hasEqualCandidates, type PairStore } from "../store/pairs.ts";
import { ConflictError } from "../store/errors.ts";
import { type Judge, JudgeError } from "../judge/types.ts";
import { pause } from "../util/time.ts";

/** Options of `runJudgeRole`. */
export interface JudgeWorkerOptions {
  store: PairStore;
  judge: Judge;
  owner: string;
  /** Pairs judged at once. */
  concurrency: number;
  /** How long a claim lasts; a human judge's pair is re-sent after this. Also the back-off's cap. */
  leaseMs: number;
  /** Failed judgments of one pair before it ends `judge_failed`; default 5. */
  maxAttempts?: number;
  /** The back-off after the first failure (ms), doubled after each further one up to `leaseMs`; default 1000. */
  backoffMs?: number;
  pollMs: number;
  signal: AbortSignal;
  onVerdict?: (id: string, choice: "a" | "b" | "tie" | "pending") => void;
  /** A failed judgment; `final` when the pair ended `judge_failed` with it. */
  onError?: (id: string, error: Error, final: boolean) => void;
}

/** Runs until `signal` aborts. */
export async function runJudgeRole(o: JudgeWorkerOptions): Promise<void> {
  while (!o.signal.aborted) {
    await o.store.expirePending();
    const pairs = await o.store.claim({
      status: "awaiting_judgment",
      role: "judge",
      owner: o.owner,
      leaseMs: o.leaseMs,
      limit: o.concurrency,
    });
    if (pairs.length === 0) {
      await pause(o.pollMs, o.signal);
      continue;
    }
    await Promise.all(pairs.map(async (claimed) => {
      // A pair stored before equal candidates were refused gets two different ones, or ends identical.
      const pair = hasEqualCandidates(claimed) ? await o.store.repairCandidates(claimed.id) : claimed;
      if (pair === null || pair.status !== "awaiting_judgment") return;
      const [a, b] = pair.candidates;
      try {
        const verdict = await o.judge.judge({
          prompt: pair.messages ?? pair.prompt!,
          a: pair.responses[a]!,
          b: pair.responses[b]!,
          pairId: pair.id,
        }, o.signal);
        if (verdict === "pending") return o.onVerdict?.(pair.id, "pending");
        await o.store.recordVerdict(pair.id, {
          choice: verdict.choice,
          judge: { kind: o.judge.kind, id: verdict.judgeId },
          reason: verdict.reason,
          latencyMs: verdict.latencyMs,
          ...(verdict.agreed === undefined ? {} : { agreed: verdict.agreed }),
          ...(verdict.usage ? { usage: verdict.usage } : {}),
          ...(verdict.votes
            ? { votes: verdict.votes.map((v) => (v.error ? { ...v, error: v.error.slice(0, 2000) } : v)) }
            : {}),
        });
        o.onVerdict?.(pair.id, verdict.choice);
      } catch (err) {
        // Someone else (a human through the API) answered first: nothing to do.
        if (err instanceof ConflictError) return;
        if (!(err instanceof JudgeError)) throw err;
        const failures = (pair.judgeFailures ?? 0) + 1;
        const after = await o.store.recordJudgeFailure(pair.id, {
          error: err.message,
          maxAttempts: o.maxAttempts ?? 5,
          backoffMs: Math.min((o.backoffMs ?? 1000) * 2 ** (failures - 1), o.leaseMs),
          owner: o.owner,
          judgeId: o.judge.id,
        });
        o.onError?.(pair.id, err, after?.status === "judge_failed");
      }
    }));
  }
}
