/**
 * `start`: the embedded default, the whole online loop in one process on local files under `data/`.
 * The server (Hono), the judge loop and the prompt feeder run on the main event loop; the trainer runs
 * in a Web Worker (workers/trainer.ts), so training never stalls a request. Ctrl-C stops every part
 * cleanly; starting again continues from the same KV, checkpoints, trainer state and keys.
 */
import { join } from "node:path";
import { type BackendReport, describeBackend, initBackend } from "../model/kernels/backend.ts";
import { runJudgeRole } from "../roles/judge.ts";
import type { Judge } from "../judge/types.ts";
import { runFeeder } from "../roles/feeder.ts";
import { loadPromptSource } from "../roles/prompts.ts";
import { type RunningServer, startServerRole } from "../roles/serve.ts";
import { GATE_RESET_AFTER } from "../dpo/gate.ts";
import type { TrainerRoleOptions } from "../roles/train.ts";
import { startTrainerWorker, type TrainerWorkerHandle } from "../roles/train_worker.ts";
import { openCheckpoints, openSharedKv } from "../store/open.ts";
import { PairStore } from "../store/pairs.ts";
import { ONLINE_DPO_DEFAULTS } from "../dpo/config.ts";
import { findTask } from "../tasks/registry.ts";
import { fileExists } from "../util/fs.ts";
import { buildJudge, type JudgeChoice } from "./_services.ts";
import { JUDGE_SETTINGS, type JudgeSettingKey } from "../judge/registry.ts";
import { loadOrCreateKeys } from "./_keys.ts";
import {
  DEFAULT_CONFIG_FILE,
  DEFAULT_MODEL,
  dpoSettings,
  readStartConfigFile,
  resolveStartConfig,
  settingsUsage,
  type StartConfig,
  type StartDefaults,
  startFlagSpec,
} from "./_start_config.ts";
import { log, parseCommand } from "./common.ts";
import { banner, ProgressReporter } from "./_start_output.ts";

/**
 * Every training and feeder default of `start`, in one place (the DPO ones by TRL name). Flags, the
 * environment and the config file override them; `--help` lists them.
 */
export const START_DEFAULTS: StartDefaults = {
  // Trainer: rounds of on-policy pairs, the reference refreshed after every round (iterative DPO).
  mode: "rounds",
  round_size: 64,
  round_epochs: 2,
  ref_refresh_rounds: 1,
  publish_every: 4,
  max_staleness: 4,
  kto_batch: 8,
  promotion: "gate",
  gate_prompts: 1000,
  gate_margin: 0.02,
  gate_confidence: 0.95,
  gate_reset_after: GATE_RESET_AFTER,
  keep: 5,
  trainer_poll_ms: 500,
  eval_prompts: 800,
  // Feeder: what the server samples for each prompt.
  feeder: true,
  n: 4,
  // Below 1, a prompt whose samples disagree is more often one whose likeliest answer is wrong, the error greedy
  // answers make: 95% held-out accuracy within 1,000 pairs in 4 of 5 runs, against 1 of 2 at 1.0 (docs/benchmarks.md).
  temperature: 0.7,
  max_new_tokens: 6,
  feeder_concurrency: 2,
  feeder_pause_ms: 0,
  feeder_max_backlog: 128,
  // DPO, where start's differ from the engine's online defaults (the rest: `DpoConfigSchema`).
  loss_type: ["sigmoid", "sft"],
  learning_rate: 1e-4,
  per_device_train_batch_size: 16,
  ...ONLINE_DPO_DEFAULTS,
};

export { DEFAULT_MODEL };

/** Usage text of the command. */
export const START_USAGE = `Usage: deno task start [options]

Runs the whole online DPO loop in one process: the server, the judge, the trainer (in a Web Worker) and a
prompt feeder that keeps asking the server for pairs, on a local KV file under the data directory. The
defaults: the shipped tiny base policy (models/arith-tiny), the built-in arithmetic task and its verifier
judge; every published version is evaluated on held-out prompts (accuracy, win rate against the base).
Prints the URLs and the API key, then progress. Ctrl-C stops cleanly; starting again continues.

Settings come from flags, then the environment, then a config file, then the defaults:
  --config FILE
      JSON object of settings by config key; unknown keys are an error
      (default ${DEFAULT_CONFIG_FILE} in the working directory when it exists; env DPO_CONFIG)
${settingsUsage(START_DEFAULTS)}

Keys (environment only):
  DPO_API_KEYS=k1,k2    API keys; default one made on first start and kept in DATA_DIR/api-key
  DPO_LABEL_KEYS=k1,k2  label keys (dashboard and label page); default one kept in DATA_DIR/label-key
  DPO_WEBHOOK_SECRET    accept feedback signed with this Standard Webhooks secret`;

/** Runs the command until SIGINT/SIGTERM. */
export async function runStart(args: string[]): Promise<void> {
  const values = parseCommand(args, startFlagSpec());
  if (values.help) return void console.log(START_USAGE);
  const cfg = resolveStartConfig({
    flags: values,
    env: (name) => Deno.env.get(name),
    file: await configFile(values.config as string | undefined),
    defaults: START_DEFAULTS,
  });
  const apiKeys = await loadOrCreateKeys({
    env: Deno.env.get("DPO_API_KEYS"),
    envName: "DPO_API_KEYS",
    dataDir: cfg.data_dir,
    file: "api-key",
    prefix: "dpo-",
  });
  const labelKeys = await loadOrCreateKeys({
    env: Deno.env.get("DPO_LABEL_KEYS"),
    envName: "DPO_LABEL_KEYS",
    dataDir: cfg.data_dir,
    file: "label-key",
    prefix: "label-",
  });
  const judge = cfg.judge === "human" ? undefined : await buildJudge(judgeChoice(cfg));
  const prompts = await loadPromptSource(cfg.task, crypto.getRandomValues(new Uint32Array(1))[0]!);
  const backend = await initBackend(cfg.backend);
  log(describeBackend(backend));
  const kv = await openSharedKv(cfg.kv);
  const store = new PairStore(kv);

  // Ctrl-C (or SIGTERM) once: a clean stop; twice: out at once.
  let requestStop!: () => void;
  const stopRequested = new Promise<void>((resolve) => requestStop = resolve);
  let signals = 0;
  const onSignal = () => {
    if (++signals > 1) {
      log("stopping now (second signal)");
      Deno.exit(130);
    }
    log("stopping: feeder, judge, then the trainer after its current step (Ctrl-C again to force)");
    requestStop();
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);

  const feederStop = new AbortController();
  const judgeStop = new AbortController();
  const serverStop = new AbortController();
  const progress = new ProgressReporter(store);
  let trainer: TrainerWorkerHandle | undefined;
  let server: RunningServer | undefined;
  const running: Promise<unknown>[] = [];
  try {
    // The worker gets the backend `auto` settled on here, so that it neither probes again nor picks another.
    trainer = startTrainerWorker(trainerOptions(cfg, backend.backend), (e) => {
      if (e.type === "log") log(`trainer: ${e.message}`);
      progress.onTrainer(e);
    });
    const feederKey = `feeder-${crypto.randomUUID().replaceAll("-", "")}`;
    server = await startServerRole({
      kv,
      store,
      checkpoints: openCheckpoints(kv, cfg.checkpoints),
      model: cfg.model,
      host: cfg.host,
      port: cfg.port,
      pollMs: cfg.serve_poll_ms,
      cacheDir: join(cfg.data_dir, "cache"),
      app: {
        apiKeys: [...apiKeys.keys, feederKey],
        unlimitedKeys: [feederKey],
        labelKeys: labelKeys.keys,
        score: judge?.score?.bind(judge),
        webhookSecret: Deno.env.get("DPO_WEBHOOK_SECRET"),
        limits: { requestsPerMinute: cfg.rate_limit },
      },
      signal: serverStop.signal,
      log: (m) => log(`server: ${m}`),
    });
    progress.server = server;
    const { url } = server;
    if (judge) running.push(runJudge(store, judge, cfg, judgeStop.signal));
    if (cfg.feeder) {
      running.push(runFeeder({
        url,
        apiKey: feederKey,
        nextPrompt: prompts.next,
        n: cfg.n,
        temperature: cfg.temperature,
        maxNewTokens: cfg.max_new_tokens,
        concurrency: cfg.feeder_concurrency,
        pauseMs: cfg.feeder_pause_ms,
        maxBacklog: cfg.feeder_max_backlog,
        signal: feederStop.signal,
        onError: (m) => log(`feeder: ${m}`),
      }));
    }
    const label = labelKeys.keys[0]!;
    console.log(banner(cfg, {
      url,
      apiKey: apiKeys.source === "DPO_API_KEYS"
        ? "(from DPO_API_KEYS)"
        : `${apiKeys.keys[0]} (kept in ${apiKeys.source})`,
      dashboard: `${url}/#key=${label}`,
      labelPage: `${url}/label#key=${label}`,
      backend: `${backend.backend} (${backend.detail})`,
      judge,
      prompts: prompts.description,
      servedVersion: server.policy?.version ?? 0,
    }));
    progress.start();
    // Runs until a signal, or until a part fails (the trainer's fatal error, the server's pointer polling).
    await Promise.race([stopRequested, trainer.done, server.finished, ...running]);
  } finally {
    progress.stop();
    feederStop.abort();
    judgeStop.abort();
    await Promise.allSettled(running);
    await trainer?.stop();
    serverStop.abort();
    await server?.finished.catch((err) => log(`server: ${(err as Error).message}`));
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    kv.close();
  }
  await trainer.done; // a trainer that failed makes the command fail, after the clean stop above
  log("stopped");
}

/** The config file: --config, else DPO_CONFIG, else dpo.config.json when it exists. */
async function configFile(flag: string | undefined) {
  const path = flag ?? (Deno.env.get("DPO_CONFIG") || undefined) ??
    ((await fileExists(DEFAULT_CONFIG_FILE)) ? DEFAULT_CONFIG_FILE : undefined);
  return path === undefined ? undefined : { path, values: await readStartConfigFile(path) };
}

function judgeChoice(cfg: StartConfig): JudgeChoice {
  const settings = Object.fromEntries(
    Object.keys(JUDGE_SETTINGS).flatMap((key) =>
      cfg[key as JudgeSettingKey] === undefined ? [] : [[key, cfg[key as JudgeSettingKey]]]
    ),
  );
  // The settings come from flags, a shared environment and a config file: one for a judge not named waits unused.
  return { judge: cfg.judge, settings, ensembleRule: cfg.ensemble_rule, ignoreStrays: true };
}

function trainerOptions(cfg: StartConfig, backend: BackendReport["backend"]): TrainerRoleOptions {
  return {
    kv: cfg.kv,
    checkpoints: cfg.checkpoints,
    model: cfg.model,
    stateDir: join(cfg.data_dir, "trainer"),
    mode: cfg.mode,
    roundSize: cfg.round_size,
    roundEpochs: cfg.round_epochs,
    publishEvery: cfg.publish_every,
    refRefreshRounds: cfg.ref_refresh_rounds,
    maxStaleness: cfg.max_staleness,
    ktoBatch: cfg.kto_batch,
    keep: cfg.keep,
    owner: `start-${Deno.hostname()}`,
    leaseMs: 300_000,
    pollMs: cfg.trainer_poll_ms,
    backend,
    dpo: dpoSettings(cfg),
    gate: cfg.promotion === "gate" && findTask(cfg.task) && cfg.eval_prompts > 0
      ? {
        prompts: cfg.gate_prompts,
        margin: cfg.gate_margin,
        confidence: cfg.gate_confidence,
        resetAfter: cfg.gate_reset_after,
      }
      : undefined,
    eval: findTask(cfg.task) && cfg.eval_prompts > 0 ? { task: cfg.task, prompts: cfg.eval_prompts } : undefined,
  };
}

function runJudge(store: PairStore, judge: Judge, cfg: StartConfig, signal: AbortSignal): Promise<void> {
  return runJudgeRole({
    store,
    judge,
    owner: `start-judge-${Deno.pid}`,
    concurrency: cfg.judge_concurrency,
    maxAttempts: cfg.judge_max_attempts,
    leaseMs: 60_000,
    pollMs: 200,
    signal,
    onError: (id, err, final) =>
      log(`judge: ${id}: failed${final ? " for the last time: judge_failed" : ", will retry"} (${err.message})`),
  });
}
