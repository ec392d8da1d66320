/** Counters for `GET /metrics`, rendered in the Prometheus text exposition format. */
import type { JudgeUsage } from "../store/judge_usage.ts";
import type { TrainerStatus } from "../store/trainer_status.ts";

/** What the registry reads from the store at scrape time. */
export interface ScrapeState {
  pairs: Record<string, number>;
  feedback: { desirable: number; undesirable: number };
  /** The version this instance serves; absent on a feedback-only instance. */
  policyVersion?: number;
  /** Every automated judge's running totals (shared KV), by judge id. */
  judges: Record<string, JudgeUsage>;
  /** Promotion gate decisions so far, by outcome (shared KV). */
  gate: { promoted: number; refused: number };
  /** The trainer's last status record (shared KV), if a trainer ever ran. */
  trainer?: TrainerStatus | null;
  /** The serving version's decoding loop, when batching is on. */
  decoding?: { steps: number; rowSteps: number; running: number; waiting: number };
}

/** In-process counters of one server instance. */
export class Metrics {
  #requests = new Map<string, number>();
  #verdicts = new Map<string, number>();
  #tokens = 0;

  /** Counts a finished request by route pattern and status. */
  countRequest(route: string, status: number): void {
    const key = `route="${escape(route)}",status="${status}"`;
    this.#requests.set(key, (this.#requests.get(key) ?? 0) + 1);
  }

  /** Counts a human or webhook verdict received through the API. */
  countVerdict(choice: string): void {
    this.#verdicts.set(choice, (this.#verdicts.get(choice) ?? 0) + 1);
  }

  /** Counts generated tokens. */
  countTokens(n: number): void {
    this.#tokens += n;
  }

  /** The exposition text. */
  render(state: ScrapeState): string {
    const lines: string[] = [];
    const family = (name: string, type: string, help: string, samples: [string, number][]) => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      for (const [labels, value] of samples) lines.push(`${name}${labels ? `{${labels}}` : ""} ${value}`);
    };
    family(
      "dpo_pairs",
      "gauge",
      "Preference pairs by status (shared KV).",
      Object.entries(state.pairs).map(([s, n]) => [`status="${s}"`, n]),
    );
    family("dpo_completion_feedback", "gauge", "Chat completions with thumbs up/down (shared KV).", [
      ['label="desirable"', state.feedback.desirable],
      ['label="undesirable"', state.feedback.undesirable],
    ]);
    if (state.policyVersion !== undefined) {
      family("dpo_policy_version", "gauge", "Policy version this instance serves.", [["", state.policyVersion]]);
    }
    family("dpo_http_requests_total", "counter", "HTTP requests by route and status (this instance).", [
      ...this.#requests,
    ]);
    family("dpo_verdicts_total", "counter", "Verdicts received through the feedback API (this instance).", [
      ...[...this.#verdicts].map(([c, n]) => [`choice="${c}"`, n] as [string, number]),
    ]);
    const judges = Object.entries(state.judges);
    const perJudge = (name: string, help: string, value: (u: JudgeUsage) => number) =>
      family(name, "counter", `${help} (shared KV).`, judges.map(([id, u]) => [`judge="${escape(id)}"`, value(u)]));
    perJudge("dpo_judge_calls_total", "Judgments asked of each automated judge, failures included", (u) => u.calls);
    perJudge("dpo_judge_failures_total", "Judgments that failed, by judge", (u) => u.failures);
    perJudge("dpo_judge_latency_seconds_total", "Summed latency of each judge's verdicts", (u) => u.latency_ms / 1000);
    perJudge("dpo_judge_requests_total", "HTTP requests each LLM judge made, retries included", (u) => u.requests);
    family(
      "dpo_judge_tokens_total",
      "counter",
      "Tokens each LLM judge's endpoint reported (shared KV).",
      judges.flatMap(([id, u]) =>
        [
          [`judge="${escape(id)}",type="prompt"`, u.prompt_tokens],
          [`judge="${escape(id)}",type="completion"`, u.completion_tokens],
        ] as [string, number][]
      ),
    );
    perJudge("dpo_judge_votes_total", "Votes a, b or tie each ensemble member cast", (u) => u.votes);
    perJudge("dpo_judge_votes_agreed_total", "Of those, votes equal to the ensemble's verdict", (u) => u.votes_agreed);
    family("dpo_gate_decisions_total", "counter", "Promotion gate decisions on trained policies (shared KV).", [
      ['outcome="promoted"', state.gate.promoted],
      ['outcome="refused"', state.gate.refused],
    ]);
    const t = state.trainer;
    if (t) {
      // The trainer run's own counts: a restarted trainer starts them again at 0, a reset to Prometheus.
      family("dpo_trainer_leases_lost_total", "counter", "Train leases found lost on renewal (current trainer run).", [
        ["", t.leases_lost ?? 0],
      ]);
      family("dpo_trainer_retired_total", "counter", "Pairs ended stale or rejected (current trainer run).", [
        ["", t.retired ?? 0],
      ]);
      family("dpo_trainer_step", "gauge", "Optimizer steps the trainer has taken.", [["", t.step]]);
    }
    family("dpo_generated_tokens_total", "counter", "Tokens generated (this instance).", [["", this.#tokens]]);
    const d = state.decoding;
    if (d) {
      // Counters of the serving version's loop: a swap starts them again at 0, which Prometheus reads as a reset.
      family("dpo_decode_steps_total", "counter", "Batched decoding steps of the serving version.", [["", d.steps]]);
      family("dpo_decode_row_steps_total", "counter", "Rows summed over those steps (rows per step = ratio).", [
        ["", d.rowSteps],
      ]);
      family("dpo_decode_running_rows", "gauge", "Rows decoding now.", [["", d.running]]);
      family("dpo_decode_waiting_requests", "gauge", "Generation requests waiting for room in the batch.", [
        ["", d.waiting],
      ]);
    }
    return lines.join("\n") + "\n";
  }
}

function escape(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}
