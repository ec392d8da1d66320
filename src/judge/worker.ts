/**
 * The judge role: claims pairs awaiting judgment with a lease, asks the configured judge and records
 * its verdict. A failed judgment records nothing: the lease lapses and the pair is tried again.
 * A human judge's "pending" keeps the lease until it lapses, so the webhook is not re-sent at once.
 */
import type { PairStore } from "../store/pairs.ts";
import { ConflictError } from "../store/errors.ts";
import { type Judge, JudgeError } from "./types.ts";
import { pause } from "../util/time.ts";

/** Options of `runJudgeWorker`. */
export interface JudgeWorkerOptions {
  store: PairStore;
  judge: Judge;
  owner: string;
  /** Pairs judged at once. */
  concurrency: number;
  /** How long a claim lasts; a human judge's pair is re-sent after this. */
  leaseMs: number;
  pollMs: number;
  signal: AbortSignal;
  onVerdict?: (id: string, choice: "a" | "b" | "tie" | "pending") => void;
  onError?: (id: string, error: Error) => void;
}

/** Runs until `signal` aborts. */
export async function runJudgeWorker(o: JudgeWorkerOptions): Promise<void> {
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
    await Promise.all(pairs.map(async (pair) => {
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
        });
        o.onVerdict?.(pair.id, verdict.choice);
      } catch (err) {
        // Someone else (a human through the API) answered first: nothing to do.
        if (err instanceof ConflictError) return;
        if (!(err instanceof JudgeError)) throw err;
        // The lease is left to lapse: that is the back-off before the pair is tried again.
        o.onError?.(pair.id, err);
      }
    }));
  }
}
