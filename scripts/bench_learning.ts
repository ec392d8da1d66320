/**
 * The learning benchmark: held-out accuracy of the shipped base policy against the number of judgments, over
 * several seeds, at fixed budgets, in these settings (arms):
 *
 *   online         online DPO: every round samples pairs from the current policy, the verifier judges them,
 *                  the trainer trains on them and then copies the policy into the reference (iterative DPO)
 *   frozen         the same, with the reference frozen at the base policy
 *   offline        offline DPO: every pair is sampled from the base policy up front; the same training
 *   lora           online, training a LoRA adapter (all linear layers, r 16, 5x the learning rate) on the
 *                  frozen base, which stays the reference
 *   thumbs         online, but feedback arrives only as thumbs up/down on single answers, as a chat app's users
 *                  give it: one answer sampled per prompt, the checker's verdict on it a thumbs (right: up), KTO
 *                  steps on them, the reference refreshed every round; a thumbs is one judgment
 *   gate           online with the promotion gate (src/dpo/gate.ts) as the trainer role runs it: pairs are
 *                  sampled from the served version, and after every round the trained policy replaces the
 *                  served one only when the gate passes it on gate prompts of their own (held-out prompts kept
 *                  apart from the reported ones); the accuracy reported is the served version's
 *   noisy-sigmoid  online, with the verifier's verdict flipped on --noise of the labeled pairs (seeded), the
 *                  usual losses
 *   noisy-robust   the same flipped verdicts, trained with robust DPO (loss_type robust in place of sigmoid,
 *                  label_smoothing = the flip rate)
 *
 * and, run only when named in --arms, the levers against the swings between successive versions:
 *
 *   isqrt          online with the learning rate decayed as 1/sqrt(step) (lr_scheduler_type inverse_sqrt, its
 *                  timescale --lr-timescale optimizer steps of warmup)
 *   cosine         online with a cosine decay to 0 over the planned run (--pairs judgments; the optimizer steps
 *                  it will take extrapolated from those taken so far)
 *   ema            online, sampling, evaluating (and publishing) an exponential moving average of the weights
 *                  (decay --ema-decay per optimizer step), training the weights themselves
 *   ema-isqrt      both
 *   gate-isqrt     the gate arm with the 1/sqrt decay
 *   gate-ema       the gate arm with the moving average as the candidate (and the served version sampled from)
 *   gate-ema-isqrt the same with the 1/sqrt decay
 *   adaptive-beta  online with β adapted after every step toward a KL target (--kl-target nats of the step's
 *                  objective/kl; the adaptive KL controller of Ziegler et al., 2019)
 *
 * A judgment is one judged pair (a prompt's best sampled answer against its worst; a tie, not trained, when
 * all score the same) or one thumbs. Rounds hold --round prompts; the round that reaches a budget is cut short
 * so that every evaluation lands on the budget exactly. The policy is evaluated (greedy, --eval-prompts
 * held-out prompts) at judgment 0 and at each budget only. Every arm runs on the same seeds (the seed sets the
 * prompt stream, the sampling, the shuffling, the LoRA init and the flips), so arms are paired.
 *
 *   deno task bench:learning [--seeds 5 | --seeds 1,2,3 | --seed 3] [--arms online,frozen,...]
 *     [--pairs 2000] [--budgets 250,500,1000,2000] [--task add2|add199|add3] [--out docs/learning]
 *     [--plot docs/learning.svg] [--per-round] [--ema-decay 0.95] [--lr-timescale 8]
 *     [--kl-target 0.5]
 *
 * --seeds N runs seeds 1..N; a comma list runs those; --seed S runs seed S alone. --out P writes P.json and
 * P.csv (one row per arm, seed and budget); --out '' and --plot '' write nothing. --task add2 is the built-in
 * task (operands 0-99, what the base was trained on); add199 (operands 0-199) and add3 (100-999) ask the same
 * base for larger sums, so that the policy must drift further.
 * Prints the estimated total time first, a progress line per round (rate and ETA), then tables of mean ± 95%
 * interval (Student t over seeds) per arm and budget, ties and judge calls, and paired differences between arms.
 * --per-round evaluates every version (after every round) as well, stores each run's trace in the JSON
 * (`traces`) and adds a table of swings: the largest drop of a version below the best before it (and the
 * same after the first version at 90% or more), the sd of successive differences, and when 95% was reached.
 */
import { scriptArgs } from "./_args.ts";
import { fileURLToPath } from "node:url";
import { relative } from "node:path";
import { describeBackend, initBackend } from "../src/model/kernels/backend.ts";
import { type LoadedModel, loadModel } from "../src/model/io/checkpoint.ts";
import { generate } from "../src/model/decoding/generate.ts";
import { createRng } from "../src/model/decoding/sampling.ts";
import * as tf from "../src/model/tf.ts";
import { createTrainer } from "../src/dpo/checkpoint.ts";
import { type DpoConfig, parseDpoConfig } from "../src/dpo/config.ts";
import { decideGate, GateBar } from "../src/dpo/gate.ts";
import { DpoTrainer, type KtoExample, type PreferencePair } from "../src/dpo/trainer.ts";
import { answerHeldOut } from "../src/dpo/evaluate.ts";
import {
  type ArithmeticTaskOptions,
  createArithmeticPrompts,
  heldOutArithmeticPrompts,
  score,
} from "../src/tasks/arithmetic.ts";
import { pickCandidates } from "../src/judge/candidates.ts";
import { writeAtomic } from "../src/util/fs.ts";
import {
  type Arm,
  ARMS,
  DEFAULT_ARMS,
  plot,
  type Results,
  resultsFromFile,
  type Row,
  summarize,
  tables,
  toCsv,
  type Trace,
} from "./_learning_report.ts";

/** The tasks: operand ranges of the arithmetic task (additions). */
const TASKS: Record<string, Pick<ArithmeticTaskOptions, "minOperand" | "maxOperand">> = {
  add2: { minOperand: 0, maxOperand: 99 },
  add199: { minOperand: 0, maxOperand: 199 },
  add3: { minOperand: 100, maxOperand: 999 },
};

/**
 * Seconds of sampling and training per 1,000 judgments, per arm, measured on the 2-core development machine
 * (wasm backend) in the run the README reports: the estimate printed before a run, scaled by how long the base
 * evaluation took here against REFERENCE_EVAL_S_PER_PROMPT there.
 */
const SECONDS_PER_1000: Record<Arm, number> = {
  online: 22.5,
  frozen: 22.5,
  offline: 26,
  lora: 24,
  thumbs: 30,
  gate: 31.5,
  "noisy-sigmoid": 26.5,
  "noisy-robust": 23,
  isqrt: 22.5,
  cosine: 22.5,
  ema: 23,
  "ema-isqrt": 23,
  "gate-isqrt": 31.5,
  "gate-ema": 32,
  "gate-ema-isqrt": 32,
  "adaptive-beta": 22.5,
};
/** Seconds per held-out prompt of the base evaluation on that machine. */
const REFERENCE_EVAL_S_PER_PROMPT = 0.64 / 200;

const { values } = scriptArgs(import.meta.url, {
  model: { type: "string", default: fileURLToPath(new URL("../models/arith-tiny", import.meta.url)) },
  task: { type: "string", default: "add2" },
  pairs: { type: "string", default: "2000" },
  budgets: { type: "string", default: "250,500,1000,2000" },
  round: { type: "string", default: "64" },
  epochs: { type: "string", default: "2" },
  n: { type: "string", default: "4" },
  temperature: { type: "string", default: "1" },
  "batch-size": { type: "string", default: "16" },
  "learning-rate": { type: "string", default: "1e-4" },
  beta: { type: "string", default: "0.1" },
  "loss-type": { type: "string", default: "sigmoid,sft" },
  "loss-weights": { type: "string", default: "1,1" },
  optimizer: { type: "string", default: "adamw" },
  "eval-prompts": { type: "string", default: "200" },
  arms: { type: "string", default: DEFAULT_ARMS.join(",") },
  seeds: { type: "string", default: "5" },
  seed: { type: "string" },
  noise: { type: "string", default: "0.2" },
  "gate-prompts": { type: "string", default: "300" },
  "gate-margin": { type: "string", default: "0.02" },
  "gate-confidence": { type: "string", default: "0.95" },
  backend: { type: "string", default: "wasm" },
  out: { type: "string", default: "docs/learning" },
  plot: { type: "string", default: "docs/learning.svg" },
  from: { type: "string" },
  "per-round": { type: "boolean", default: false },
  "ema-decay": { type: "string", default: "0.95" },
  "kl-target": { type: "string", default: "0.5" },
  "lr-timescale": { type: "string", default: "8" },
});

/** Stops with the rule and the value, as the usage errors of `_args.ts` do, without a stack trace. */
function fail(message: string): never {
  console.error(`error: ${message.startsWith("Cannot") ? message : `Cannot run the learning benchmark: ${message}`}`);
  Deno.exit(2);
}

const positiveInt = (name: string, text: string | undefined): number => {
  const v = Number(text);
  if (!(Number.isInteger(v) && v > 0)) fail(`--${name} must be a positive integer: current value is '${text}'`);
  return v;
};

const PAIRS = positiveInt("pairs", values.pairs);
const BUDGETS = [
  ...new Set([...values.budgets!.split(",").filter(Boolean).map((b) => positiveInt("budgets", b)), PAIRS]),
].filter((b) => b <= PAIRS).sort((a, b) => a - b);
const ROUND = positiveInt("round", values.round);
const EPOCHS = positiveInt("epochs", values.epochs);
const N = positiveInt("n", values.n);
const BATCH = positiveInt("batch-size", values["batch-size"]);
const EVAL_PROMPTS = positiveInt("eval-prompts", values["eval-prompts"]);
const GATE_PROMPTS = positiveInt("gate-prompts", values["gate-prompts"]);
const TEMPERATURE = Number(values.temperature);
const NOISE = Number(values.noise);
const GATE = { margin: Number(values["gate-margin"]), confidence: Number(values["gate-confidence"]) };
const MAX_NEW_TOKENS = 6;
const PER_ROUND = values["per-round"]!;
const EMA_DECAY = Number(values["ema-decay"]);
const LR_TIMESCALE = positiveInt("lr-timescale", values["lr-timescale"]);
const KL_TARGET = Number(values["kl-target"]);
if (!(KL_TARGET > 0)) fail(`--kl-target must be a positive number: current value is '${values["kl-target"]}'`);
if (!(EMA_DECAY > 0 && EMA_DECAY < 1)) fail(`--ema-decay must be in (0, 1): current value is '${values["ema-decay"]}'`);
if (N < 2) fail(`--n must be at least 2 (a pair needs two answers): current value is ${N}`);
if (!(NOISE >= 0 && NOISE < 0.5)) fail(`--noise must be in [0, 0.5): current value is '${values.noise}'`);
if (!(GATE.margin >= 0 && GATE.margin <= 1)) fail(`--gate-margin must be in [0, 1]: current value is ${GATE.margin}`);
if (!(GATE.confidence > 0.5 && GATE.confidence < 1)) {
  fail(`--gate-confidence must be in (0.5, 1): current value is ${GATE.confidence}`);
}
const TASK = TASKS[values.task!] ??
  fail(`--task takes ${Object.keys(TASKS).join(", ")}: current value is '${values.task}'`);
const ARM_LIST = values.arms!.split(",").filter(Boolean) as Arm[];
const unknown = ARM_LIST.filter((a) => !ARMS.includes(a));
if (unknown.length > 0 || ARM_LIST.length === 0) {
  fail(`--arms takes ${ARMS.join(", ")}: current value is '${values.arms}'`);
}
const SEEDS = values.seed !== undefined
  ? [positiveInt("seed", values.seed)]
  : values.seeds!.includes(",")
  ? values.seeds!.split(",").filter(Boolean).map((s) => positiveInt("seeds", s))
  : Array.from({ length: positiveInt("seeds", values.seeds) }, (_, i) => i + 1);

/** The DPO settings every arm starts from (the seed is set per run). */
const RAW_CONFIG = {
  beta: Number(values.beta),
  loss_type: values["loss-type"]!.split(","),
  loss_weights: values["loss-weights"]?.split(",").map(Number),
  optimizer: values.optimizer,
  learning_rate: Number(values["learning-rate"]),
  lr_scheduler_type: "constant",
  per_device_train_batch_size: BATCH,
};
const BASE_CONFIG = parseDpoConfig(RAW_CONFIG, "the benchmark's settings");
if (ARM_LIST.includes("noisy-robust") && !BASE_CONFIG.loss_type.includes("sigmoid")) {
  fail(`the noisy-robust arm replaces 'sigmoid' in --loss-type by 'robust': current value is '${values["loss-type"]}'`);
}

/** What an arm changes of online training. */
interface Traits {
  /** Pairs sampled from a served version that the gate promotes candidates into. */
  gated: boolean;
  /** Sample, evaluate and promote the moving average of the weights. */
  ema: boolean;
  schedule: "constant" | "inverse_sqrt" | "cosine";
}

function traitsOf(arm: Arm): Traits {
  return {
    gated: arm === "gate" || arm.startsWith("gate-"),
    ema: arm.includes("ema"),
    schedule: arm.endsWith("isqrt") ? "inverse_sqrt" : arm === "cosine" ? "cosine" : "constant",
  };
}

/** The DPO settings of one arm and seed. */
function armConfig(arm: Arm, seed: number): DpoConfig {
  const { schedule } = traitsOf(arm);
  if (schedule === "inverse_sqrt") {
    return parseDpoConfig({ ...RAW_CONFIG, seed, lr_scheduler_type: schedule, warmup_steps: LR_TIMESCALE }, arm);
  }
  if (schedule === "cosine") return parseDpoConfig({ ...RAW_CONFIG, seed, lr_scheduler_type: schedule }, arm);
  if (arm === "lora") {
    // The adapter (the reference is the frozen base), at 5x the learning rate, as LoRA is usually run.
    return parseDpoConfig({
      ...RAW_CONFIG,
      seed,
      use_peft: true,
      lora_r: 16,
      lora_alpha: 32,
      lora_target_modules: "all-linear",
      learning_rate: 5 * BASE_CONFIG.learning_rate,
    }, "the lora arm's settings");
  }
  if (arm === "noisy-robust") {
    // Robust DPO told the true flip rate: an unbiased estimate of the clean loss (Chowdhury et al., 2024).
    return parseDpoConfig({
      ...RAW_CONFIG,
      seed,
      loss_type: BASE_CONFIG.loss_type.map((t) => (t === "sigmoid" ? "robust" : t)),
      label_smoothing: NOISE,
    }, "the noisy-robust arm's settings");
  }
  return parseDpoConfig({ ...RAW_CONFIG, seed }, "the benchmark's settings");
}

/** Prompts per round: rounds of ROUND, the one that reaches a budget cut short to land on it exactly. */
function roundSizes(): number[] {
  const sizes: number[] = [];
  let done = 0;
  for (const budget of BUDGETS) {
    while (done < budget) {
      const size = Math.min(ROUND, budget - done);
      sizes.push(size);
      done += size;
    }
  }
  return sizes;
}
const SIZES = roundSizes();

// The evaluation's prompts come first in the held-out split, the gate's follow: never the same ones.
const ANY_GATE = ARM_LIST.some((a) => traitsOf(a).gated);
const HELD_OUT = heldOutArithmeticPrompts(EVAL_PROMPTS + (ANY_GATE ? GATE_PROMPTS : 0), TASK);
const EVAL_SET = HELD_OUT.slice(0, EVAL_PROMPTS);
const GATE_SET = HELD_OUT.slice(EVAL_PROMPTS);
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
const answer = async (m: LoadedModel, prompts: string[]): Promise<number[]> =>
  (await answerHeldOut(m.model, m.tokenizer, prompts, score, { maxNewTokens: MAX_NEW_TOKENS })).scores;

/** The state a run reports at each budget. */
type Counters = Omit<Row, "task" | "arm" | "seed" | "judgments" | "accuracy" | "seconds">;

/** One round's judged pairs: the labeled ones as token ids, and how many were ties. */
interface Round {
  pairs: PreferencePair[];
  ties: number;
  judgeCalls: number;
}

/**
 * Samples `N` answers to each of `prompts` from `policy`, and makes each prompt one pair judged by the
 * verifier: its best answer against its worst, a tie when they all score the same.
 */
async function sampleRound(policy: LoadedModel, prompts: string[], seed: number): Promise<Round> {
  const { model, tokenizer } = policy;
  const ids = prompts.map((p) => tokenizer.encode(p));
  const out = await generate(model, tokenizer, ids.flatMap((p) => Array(N).fill(p)), {
    temperature: TEMPERATURE,
    maxNewTokens: MAX_NEW_TOKENS,
    seed,
  });
  const round: Round = { pairs: [], ties: 0, judgeCalls: 0 };
  prompts.forEach((prompt, i) => {
    const answers = out.slice(i * N, (i + 1) * N).map((g) => g.text);
    const scores = answers.map((text) => score(prompt, text));
    round.judgeCalls += answers.length;
    // All scored the same (right or wrong alike): nothing to prefer, a tie as the verifier judge gives.
    const picked = Math.max(...scores) > Math.min(...scores) ? pickCandidates(answers, scores) : null;
    if (!picked) return void round.ties++;
    round.pairs.push({
      promptIds: ids[i]!,
      chosenIds: tokenizer.encode(answers[picked[0]]!),
      rejectedIds: tokenizer.encode(answers[picked[1]]!),
    });
  });
  return round;
}

/** One answer sampled per prompt, and the checker's verdict on it as a thumbs: KTO examples. */
async function sampleThumbs(policy: LoadedModel, prompts: string[], seed: number): Promise<KtoExample[]> {
  const { model, tokenizer } = policy;
  const ids = prompts.map((p) => tokenizer.encode(p));
  const out = await generate(model, tokenizer, ids, { temperature: TEMPERATURE, maxNewTokens: MAX_NEW_TOKENS, seed });
  return out.map((g, i) => ({
    promptIds: ids[i]!,
    completionIds: tokenizer.encode(g.text),
    desirable: score(prompts[i]!, g.text) === 1,
  }));
}

/** `items` shuffled by `random` (a seeded permutation: the same seed trains in the same order). */
function shuffled<T>(items: T[], random: () => number): T[] {
  return items.map((t) => ({ t, k: random() })).sort((a, b) => a.k - b.k).map((x) => x.t);
}

/** Copies the policy's weights into the served model: a promotion. */
function copyWeights(from: LoadedModel, to: LoadedModel): void {
  tf.tidy(() => {
    for (const [name, v] of to.model.params) v.assign(from.model.params.get(name)!);
  });
}

/** Progress over the whole benchmark: a line per round with the run's rate and the benchmark's ETA. */
class Progress {
  #done = 0;
  #started = performance.now();
  constructor(readonly total: number) {}
  /** Reports `judgments` more done by `arm` (weighted by the arm's cost) and prints `line` with the ETA. */
  tick(arm: Arm, judgments: number, line: string): void {
    this.#done += judgments * SECONDS_PER_1000[arm];
    const elapsed = (performance.now() - this.#started) / 1000;
    const eta = (elapsed / this.#done) * (this.total - this.#done);
    console.error(`${line}; elapsed ${minutes(elapsed)}, ETA ${minutes(eta)}`);
  }
}

function minutes(seconds: number): string {
  return seconds < 90 ? `${seconds.toFixed(0)} s` : `${(seconds / 60).toFixed(1)} min`;
}

/** Runs one arm on one seed; returns a row at each budget, and the trace of every round with --per-round. */
async function runArm(arm: Arm, seed: number, run: string, progress: Progress): Promise<{ rows: Row[]; trace: Trace }> {
  const thumbsArm = arm === "thumbs", lora = arm === "lora";
  const { gated, ema, schedule } = traitsOf(arm);
  const noisy = arm === "noisy-sigmoid" || arm === "noisy-robust";
  const policy = await loadModel(values.model!);
  const reference = lora ? null : await loadModel(values.model!, { trainable: false });
  const served = gated ? await loadModel(values.model!, { trainable: false }) : null;
  const trainer = ema || arm === "adaptive-beta"
    ? new DpoTrainer({
      policy: policy.model,
      reference: reference!.model,
      config: armConfig(arm, seed),
      eosId: policy.tokenizer.eosTokenId,
      bosId: policy.tokenizer.bosTokenId,
      emaDecay: ema ? EMA_DECAY : 0,
      klTarget: arm === "adaptive-beta" ? KL_TARGET : 0,
    })
    : createTrainer(policy, reference, armConfig(arm, seed));
  // What is sampled from, evaluated and promoted: the served version, or the policy (its average, with EMA).
  const asPublished = <T>(fn: () => Promise<T>): Promise<T> => trainer.withEmaWeights(fn);
  // Cosine: the optimizer steps of the whole run, extrapolated from those so far (a guess before the first).
  let totalSteps = Number.MAX_SAFE_INTEGER;
  const nextPrompt = createArithmeticPrompts({ seed, ...TASK });
  const shuffle = createRng(seed);
  const flip = createRng(seed + 0x5eed);
  const rows: Row[] = [];
  const c: Counters = {
    ties: thumbsArm ? null : 0,
    trained: 0,
    flipped: 0,
    judge_calls: 0,
    gate_calls: 0,
    promotions: 0,
    refusals: 0,
  };
  let seconds = 0, judged = 0;
  const began = performance.now();
  // Offline: every pair comes from the base policy, sampled before any training.
  const offline: Round[] = [];
  if (arm === "offline") {
    for (const [r, size] of SIZES.entries()) {
      offline.push(await sampleRound(policy, Array.from({ length: size }, nextPrompt), seed * 1000 + r));
    }
  }
  const trace: Trace = { arm, seed, judgments: [], accuracy: [] };
  if (PER_ROUND) {
    trace.judgments.push(0);
    trace.accuracy.push(mean(await answer(served ?? policy, EVAL_SET)));
  }
  const bar = new GateBar(0, gated ? await answer(served!, GATE_SET) : []);
  c.gate_calls += bar.scores.length;
  seconds += (performance.now() - began) / 1000;
  for (const [r, size] of SIZES.entries()) {
    const t0 = performance.now();
    const losses: number[] = [];
    const kls: number[] = [];
    let note: string;
    if (schedule === "cosine") {
      totalSteps = judged === 0
        ? Math.ceil((PAIRS * 0.5 / BATCH) * EPOCHS)
        : Math.max(trainer.step + 1, Math.round((trainer.step * PAIRS) / judged));
    }
    if (thumbsArm) {
      const thumbs = await sampleThumbs(policy, Array.from({ length: size }, nextPrompt), seed * 1000 + r);
      c.judge_calls += thumbs.length;
      c.trained += thumbs.length;
      for (let e = 0; e < EPOCHS; e++) {
        const order = shuffled(thumbs, shuffle);
        // A KTO step needs two thumbs at least (its KL reference point pairs each with another).
        for (let i = 0; i + 1 < order.length; i += BATCH) {
          losses.push((await trainer.ktoStep(order.slice(i, i + BATCH), totalSteps)).loss);
        }
      }
      trainer.refreshReference(1);
      note = `${thumbs.filter((t) => t.desirable).length} up`;
    } else {
      const prompts = arm === "offline" ? [] : Array.from({ length: size }, nextPrompt);
      const round = arm === "offline"
        ? offline[r]!
        : await asPublished(() => sampleRound(served ?? policy, prompts, seed * 1000 + r));
      if (noisy) {
        for (const p of round.pairs) {
          if (flip() >= NOISE) continue;
          [p.chosenIds, p.rejectedIds] = [p.rejectedIds, p.chosenIds];
          c.flipped++;
        }
      }
      c.ties! += round.ties;
      c.trained += round.pairs.length;
      c.judge_calls += round.judgeCalls;
      for (let e = 0; e < EPOCHS; e++) {
        const order = shuffled(round.pairs, shuffle);
        for (let i = 0; i < order.length; i += BATCH) {
          const m = await trainer.trainStep(order.slice(i, i + BATCH), totalSteps);
          losses.push(m.loss);
          kls.push(m["objective/kl"]);
        }
      }
      trainer.forgetReference(round.pairs);
      if (arm !== "frozen" && arm !== "offline" && !lora) trainer.refreshReference(1);
      note = `${round.ties} ties, kl ${kls.length ? mean(kls).toFixed(3) : "-"}, β ${trainer.beta.toFixed(3)}`;
      if (gated) {
        // The trainer role's gate: the candidate against the best served version on the gate's own prompts.
        const candidate = await asPublished(() => answer(policy, GATE_SET));
        c.gate_calls += candidate.length;
        const decision = decideGate(candidate, bar.scores, GATE);
        if (decision.promoted) {
          await asPublished(() => Promise.resolve(copyWeights(policy, served!)));
          bar.promoted(c.promotions + 1, candidate);
          c.promotions++;
        } else c.refusals++;
        note +=
          `, gate ${decision.promoted ? "promoted" : "refused"} (${(100 * decision.candidate_accuracy).toFixed(1)}%` +
          ` against ${(100 * decision.served_accuracy).toFixed(1)}%)`;
      }
    }
    judged += size;
    seconds += (performance.now() - t0) / 1000;
    const budget = BUDGETS.includes(judged);
    let accuracy = "";
    if (budget || PER_ROUND) {
      const scores = served ? await answer(served, EVAL_SET) : await asPublished(() => answer(policy, EVAL_SET));
      if (budget) {
        rows.push({ task: values.task!, arm, seed, judgments: judged, accuracy: mean(scores), seconds, ...c });
      }
      if (PER_ROUND) {
        trace.judgments.push(judged);
        trace.accuracy.push(mean(scores));
      }
      accuracy = `, held-out accuracy ${(100 * mean(scores)).toFixed(1)}%`;
    }
    const loss = losses.length > 0 ? mean(losses).toFixed(3) : "- (no step)";
    progress.tick(
      arm,
      size,
      `${run} ${arm} seed ${seed}: ${judged}/${PAIRS} judgments (${note}), loss ${loss}${accuracy}, ` +
        `${(judged / seconds).toFixed(1)} judgments/s`,
    );
  }
  trainer.optimizer.dispose();
  trainer.disposeEma();
  policy.model.dispose();
  reference?.model.dispose();
  served?.model.dispose();
  return { rows, trace };
}

async function writeText(path: string, text: string): Promise<void> {
  await Deno.mkdir(path.split("/").slice(0, -1).join("/") || ".", { recursive: true });
  await writeAtomic(path, new TextEncoder().encode(text));
}

/** Prints the tables and writes the plot (and, after a run, the results files). */
async function report(results: Results, files: { json?: object; wall: number; command: string }): Promise<void> {
  const summary = summarize(results);
  console.log(`\n${tables(results, summary)}\n\nwall time ${minutes(files.wall)}; ${files.command}`);
  if (values.out && files.json) {
    await writeText(
      `${values.out}.json`,
      JSON.stringify({ ...files.json, summary, rows: results.rows, traces: results.traces }, null, 2) + "\n",
    );
    await writeText(`${values.out}.csv`, toCsv(results.rows));
    console.log(`results: ${values.out}.json, ${values.out}.csv`);
  }
  if (values.plot) {
    await writeText(values.plot, plot(results, summary));
    console.log(`plot: ${values.plot}`);
  }
}

async function main(): Promise<void> {
  if (values.from) {
    // Report a results file again (its tables and the plot) without training anything.
    let file;
    try {
      file = resultsFromFile(await Deno.readTextFile(values.from), values.from);
    } catch (err) {
      fail((err as Error).message);
    }
    return await report(file.results, { wall: file.wallSeconds, command: file.command });
  }
  const backend = describeBackend(await initBackend(values.backend as "wasm"));
  console.error(backend);
  const base = await loadModel(values.model!, { trainable: false });
  const t0 = performance.now();
  const baseAccuracy = mean(await answer(base, EVAL_SET));
  const evalSeconds = (performance.now() - t0) / 1000;
  base.model.dispose();
  console.error(
    `base policy: ${(100 * baseAccuracy).toFixed(1)}% held-out accuracy on ${EVAL_SET.length} prompts ` +
      `(${values.task}), evaluated in ${evalSeconds.toFixed(2)} s`,
  );
  const runs = ARM_LIST.length * SEEDS.length;
  const total = SEEDS.length * ARM_LIST.reduce((a, arm) => a + PAIRS * SECONDS_PER_1000[arm], 0);
  // Cost units are seconds per 1,000 judgments x judgments; the estimate adds the evaluations at each budget.
  const estimate = (total / 1000) * Math.max(0.25, evalSeconds / EVAL_SET.length / REFERENCE_EVAL_S_PER_PROMPT) +
    runs * BUDGETS.length * evalSeconds;
  console.error(
    `${runs} runs (${ARM_LIST.join(", ")} x seeds ${SEEDS.join(",")}), ${SIZES.length} rounds of up to ${ROUND} ` +
      `prompts each, evaluated at ${BUDGETS.join(", ")} judgments; estimated total ${minutes(estimate)}`,
  );
  const progress = new Progress(total);
  const rows: Row[] = [];
  const traces: Trace[] = [];
  const began = performance.now();
  let k = 0;
  // Seed-major order: a run stopped early still has every arm on its first seeds, paired.
  for (const seed of SEEDS) {
    for (const arm of ARM_LIST) {
      const run = await runArm(arm, seed, `[${++k}/${runs}]`, progress);
      rows.push(...run.rows);
      if (PER_ROUND) traces.push(run.trace);
    }
  }
  const wall = (performance.now() - began) / 1000;
  const quote = (a: string) => (/^[\w.,:/=+-]+$/.test(a) ? a : `'${a.replaceAll("'", "'\\''")}'`);
  const command = ["deno task bench:learning", ...Deno.args.map(quote)].join(" ");
  const results: Results = {
    task: values.task!,
    arms: ARM_LIST,
    seeds: SEEDS,
    budgets: BUDGETS,
    rounds: SIZES.length,
    evalPrompts: EVAL_SET.length,
    noise: NOISE,
    baseAccuracy,
    rows,
    traces,
  };
  const json = {
    benchmark: "bench:learning",
    command,
    date: new Date().toISOString(),
    wall_seconds: Math.round(wall),
    machine: {
      cpus: navigator.hardwareConcurrency,
      os: Deno.build.os,
      arch: Deno.build.arch,
      deno: Deno.version.deno,
      backend: backend.replace(/^backend: /, ""),
    },
    settings: {
      task: values.task,
      operands: TASK,
      model: relative(Deno.cwd(), values.model!) || ".",
      arms: ARM_LIST,
      seeds: SEEDS,
      budgets: BUDGETS,
      round_sizes: SIZES,
      samples_per_prompt: N,
      temperature: TEMPERATURE,
      epochs: EPOCHS,
      eval_prompts: EVAL_SET.length,
      gate: ANY_GATE ? { prompts: GATE_SET.length, ...GATE } : null,
      per_round: PER_ROUND,
      ema_decay: ARM_LIST.some((a) => traitsOf(a).ema) ? EMA_DECAY : null,
      lr_timescale: ARM_LIST.some((a) => traitsOf(a).schedule === "inverse_sqrt") ? LR_TIMESCALE : null,
      kl_target: ARM_LIST.includes("adaptive-beta") ? KL_TARGET : null,
      noise: NOISE,
      dpo: BASE_CONFIG,
    },
    base_accuracy: baseAccuracy,
  };
  await report(results, { json, wall, command });
}

if (import.meta.main) await main();
