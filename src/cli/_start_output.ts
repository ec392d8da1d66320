/** What `start` prints on stdout: the banner once it runs, then progress lines. */
import type { Judge } from "../judge/types.ts";
import type { RunningServer } from "../roles/serve.ts";
import type { TrainerEvent } from "../roles/train.ts";
import type { PairStore } from "../store/pairs.ts";
import { findTask } from "../tasks/registry.ts";
import type { StartConfig } from "./_start_config.ts";

/** How often a progress line may be printed. */
const PROGRESS_MS = 5000;

/** What the banner shows besides the settings. */
export interface BannerFacts {
  url: string;
  apiKey: string;
  dashboard: string;
  labelPage: string;
  backend: string;
  judge: Judge | undefined;
  prompts: string;
  servedVersion: number;
}

/** What `start` prints once it runs: where to look, the key, and what runs with which settings. */
export function banner(cfg: StartConfig, f: BannerFacts): string {
  const trainer = cfg.mode === "rounds"
    ? `rounds of ${cfg.round_size} pairs × ${cfg.round_epochs} epoch(s), ` +
      (cfg.ref_refresh_rounds > 0 ? `reference refreshed every ${cfg.ref_refresh_rounds} round(s)` : "reference frozen")
    : `a step per ${cfg.per_device_train_batch_size} pairs, publishing every ${cfg.publish_every} steps`;
  const evaluation = findTask(cfg.task) && cfg.eval_prompts > 0
    ? `every version evaluated on ${cfg.eval_prompts} held-out prompts`
    : "no held-out evaluation";
  const parts = [
    "server",
    f.judge ? `judge (${cfg.judge_concurrency} at once)` : "no automatic judge (human: label page or feedback API)",
    `trainer in a Web Worker (${trainer}; batch ${cfg.per_device_train_batch_size}, beta ${cfg.beta}, lr ${cfg.learning_rate}${
      cfg.use_peft
        ? `, LoRA r ${cfg.lora_r} on ${[cfg.lora_target_modules ?? "the default layers"].flat().join(",")}`
        : ""
    })`,
    cfg.feeder
      ? `prompt feeder (${cfg.feeder_concurrency} in flight, n ${cfg.n}, temperature ${cfg.temperature}, ${cfg.max_new_tokens} new tokens)`
      : "no prompt feeder",
  ];
  const row = (name: string, value: string) => `  ${name.padEnd(11)} ${value}`;
  return [
    "dpo-deno start: the online DPO loop in one process",
    row("dashboard", f.dashboard),
    row("label page", f.labelPage),
    row("API", `${f.url}/v1 (Authorization: Bearer <API key>)`),
    row("API key", f.apiKey),
    row("KV", `${cfg.kv} (checkpoints ${cfg.checkpoints})`),
    row("model", `${cfg.model} (serving policy v${f.servedVersion})`),
    row("backend", f.backend),
    row("judge", f.judge ? `${f.judge.id} (${f.judge.kind})` : "human"),
    row("task", `${f.prompts}; ${evaluation}`),
    row("running", parts.join(", ")),
    "Ctrl-C stops (a second Ctrl-C forces).",
  ].join("\n");
}

/** Progress lines on stdout: at most one every few seconds, and only when something moved. */
export class ProgressReporter {
  server?: RunningServer;
  #store: PairStore;
  #timer?: ReturnType<typeof setInterval>;
  #last = "";
  #step = 0;
  #version = 0;
  #baseAccuracy: number | null = null;
  #eval?: { version: number; accuracy: number; win: number };

  constructor(store: PairStore) {
    this.#store = store;
  }

  /** Keeps what the trainer reported, for the next line. */
  onTrainer(e: TrainerEvent): void {
    if (e.type === "ready") {
      this.#step = e.step;
      this.#version = e.policy_version;
      this.#baseAccuracy = e.base_accuracy;
    } else if (e.type === "step") this.#step = e.metrics.step;
    else if (e.type === "publish") {
      this.#version = e.version;
      if (e.eval) this.#eval = { version: e.version, accuracy: e.eval.accuracy, win: e.eval.win_rate_vs_base };
    }
  }

  /** Prints a line every few seconds from now on. */
  start(): void {
    this.#timer = setInterval(() => void this.#print().catch(() => {}), PROGRESS_MS);
  }

  /** Stops printing. */
  stop(): void {
    clearInterval(this.#timer);
  }

  async #print(): Promise<void> {
    const c = await this.#store.counts();
    const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
    const accuracy = this.#eval
      ? `held-out accuracy ${pct(this.#eval.accuracy)} at v${this.#eval.version}` +
        (this.#baseAccuracy === null ? "" : ` (base ${pct(this.#baseAccuracy)})`) +
        `, win rate vs base ${this.#eval.win.toFixed(2)}`
      : this.#baseAccuracy === null
      ? ""
      : `held-out accuracy of the base ${pct(this.#baseAccuracy)}`;
    const line = [
      `pairs: ${c.awaiting_judgment} awaiting judgment, ${c.labeled} labeled, ${c.trained} trained, ${c.tie} ties`,
      `trainer: step ${this.#step}, published v${this.#version}, serving v${this.server?.policy?.version ?? 0}`,
      accuracy,
    ].filter((s) => s).join(" | ");
    if (line === this.#last) return;
    this.#last = line;
    console.log(line);
  }
}
