/**
 * The learning benchmark: held-out accuracy of the shipped base policy against the number of judged
 * pairs, for the same pair budget, in three settings:
 *
 *   online   online DPO: every round samples pairs from the current policy, the verifier judges them,
 *            the trainer trains on them and then copies the policy into the reference (iterative DPO)
 *   frozen   the same, with the reference frozen at the base policy
 *   offline  offline DPO: every pair is sampled from the base policy up front; the same training
 *   lora     online, training a LoRA adapter (all linear layers, r 16, 5x the learning rate) on the
 *            frozen base, which stays the reference
 *   thumbs   online, but feedback arrives only as thumbs up/down on single answers, as a chat app's users
 *            give it: one answer sampled per prompt, the checker's verdict on it a thumbs (right: up), KTO
 *            steps on them, the reference refreshed every round; its x axis counts thumbs, one judgment
 *            each, so it sits next to the pair arms at the same number of judgments
 *
 * It drives the engine the server, judge and trainer use (batched generation, the arithmetic verifier,
 * DpoTrainer, the held-out evaluation stored with every published version), in one process, without
 * HTTP or KV in between, so that the figures measure learning, not plumbing.
 *
 *   deno task bench:learning [--pairs 1000] [--arms online,frozen,offline,lora,thumbs] [--plot docs/learning.svg]
 *
 * Prints a progress line per round, a table of accuracy against judged pairs, the wall time of each
 * setting (without the evaluations), and writes the plot as SVG.
 */
import { scriptArgs } from "./_args.ts";
import { fileURLToPath } from "node:url";
import { describeBackend, initBackend } from "../src/model/kernels/backend.ts";
import { type LoadedModel, loadModel } from "../src/model/io/checkpoint.ts";
import { generate } from "../src/model/decoding/generate.ts";
import { createRng } from "../src/model/decoding/sampling.ts";
import { createTrainer } from "../src/dpo/checkpoint.ts";
import { parseDpoConfig } from "../src/dpo/config.ts";
import type { KtoExample, PreferencePair } from "../src/dpo/trainer.ts";
import { answerHeldOut, type Answers } from "../src/dpo/evaluate.ts";
import { createArithmeticPrompts, heldOutArithmeticPrompts, score } from "../src/tasks/arithmetic.ts";
import { pickCandidates } from "../src/judge/candidates.ts";
import { writeAtomic } from "../src/util/fs.ts";

const { values } = scriptArgs(import.meta.url, {
  model: { type: "string", default: fileURLToPath(new URL("../models/arith-tiny", import.meta.url)) },
  pairs: { type: "string", default: "1000" },
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
  arms: { type: "string", default: "online,frozen,offline,lora" },
  seed: { type: "string", default: "1" },
  backend: { type: "string", default: "wasm" },
  plot: { type: "string", default: "docs/learning.svg" },
});

const BUDGET = Number(values.pairs);
const ROUND = Number(values.round);
const EPOCHS = Number(values.epochs);
const N = Number(values.n);
const TEMPERATURE = Number(values.temperature);
const BATCH = Number(values["batch-size"]);
const SEED = Number(values.seed);
const MAX_NEW_TOKENS = 6;
type Arm = "online" | "frozen" | "offline" | "lora" | "thumbs";
const ARMS = values.arms!.split(",") as Arm[];
for (const [name, v] of Object.entries({ pairs: BUDGET, round: ROUND, epochs: EPOCHS, n: N, "batch-size": BATCH })) {
  if (!(Number.isInteger(v) && v > 0)) throw new Error(`Cannot run: --${name} must be a positive integer, got ${v}`);
}
if (N < 2) throw new Error(`Cannot run: --n must be at least 2 (a pair needs two answers), got ${N}`);
const unknown = ARMS.filter((a) => !["online", "frozen", "offline", "lora", "thumbs"].includes(a));
if (unknown.length > 0) {
  throw new Error(`Cannot run: --arms takes online, frozen, offline, lora, thumbs; got ${unknown.join(", ")}`);
}

const config = parseDpoConfig({
  beta: Number(values.beta),
  loss_type: values["loss-type"]!.split(","),
  loss_weights: values["loss-weights"]?.split(",").map(Number),
  optimizer: values.optimizer,
  learning_rate: Number(values["learning-rate"]),
  lr_scheduler_type: "constant",
  per_device_train_batch_size: BATCH,
  seed: SEED,
}, "the benchmark's settings");

/** The lora arm's adapter (the reference is the frozen base), at 5x the learning rate, as LoRA is usually run. */
const LORA = {
  use_peft: true,
  lora_r: 16,
  lora_alpha: 32,
  lora_target_modules: "all-linear",
  learning_rate: 5 * config.learning_rate,
} as const;

/** One round's judged pairs: the labeled ones as token ids, and how many were ties. */
interface Round {
  pairs: PreferencePair[];
  ties: number;
}

/**
 * Samples `N` answers to each of `prompts` from `model`, and makes each prompt one pair judged by the
 * verifier: its best answer against its worst, a tie when they score the same.
 */
async function sampleRound(policy: LoadedModel, prompts: string[], seed: number): Promise<Round> {
  const { model, tokenizer } = policy;
  const ids = prompts.map((p) => tokenizer.encode(p));
  const out = await generate(model, tokenizer, ids.flatMap((p) => Array(N).fill(p)), {
    temperature: TEMPERATURE,
    maxNewTokens: MAX_NEW_TOKENS,
    seed,
  });
  const round: Round = { pairs: [], ties: 0 };
  prompts.forEach((prompt, i) => {
    const answers = out.slice(i * N, (i + 1) * N).map((g) => g.text);
    const scores = answers.map((text) => score(prompt, text));
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

/** One point of a learning curve. */
interface Point {
  pairs: number;
  accuracy: number;
  seconds: number;
}

const heldOut = heldOutArithmeticPrompts(Number(values["eval-prompts"]), { minOperand: 0, maxOperand: 99 });
const evaluate = (m: LoadedModel): Promise<Answers> =>
  answerHeldOut(m.model, m.tokenizer, heldOut, score, { maxNewTokens: MAX_NEW_TOKENS });
/** Prompts of round `r`: the last round takes what is left of the budget. */
const roundSize = (r: number) => Math.min(ROUND, BUDGET - r * ROUND);
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);

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

/** The thumbs arm: online KTO on single answers' thumbs, a judgment per thumbs. */
async function runThumbsArm(baseAccuracy: number): Promise<Point[]> {
  const policy = await loadModel(values.model!);
  const reference = await loadModel(values.model!, { trainable: false });
  const trainer = createTrainer(policy, reference, config);
  const nextPrompt = createArithmeticPrompts({ seed: SEED, minOperand: 0, maxOperand: 99 });
  const shuffle = createRng(SEED);
  const rounds = Math.ceil(BUDGET / ROUND);
  const points: Point[] = [{ pairs: 0, accuracy: baseAccuracy, seconds: 0 }];
  let judged = 0, seconds = 0;
  for (let r = 0; r < rounds; r++) {
    const t0 = performance.now();
    const thumbs = await sampleThumbs(policy, Array.from({ length: roundSize(r) }, nextPrompt), SEED * 1000 + r);
    judged += thumbs.length;
    const losses: number[] = [];
    for (let e = 0; e < EPOCHS; e++) {
      const order = thumbs.map((t) => ({ t, k: shuffle() })).sort((a, b) => a.k - b.k).map((x) => x.t);
      for (let i = 0; i + 1 < order.length; i += BATCH) {
        losses.push((await trainer.ktoStep(order.slice(i, i + BATCH), Number.MAX_SAFE_INTEGER)).loss);
      }
    }
    trainer.refreshReference(1);
    seconds += (performance.now() - t0) / 1000;
    const { scores } = await evaluate(policy);
    points.push({ pairs: judged, accuracy: mean(scores), seconds });
    const up = thumbs.filter((t) => t.desirable).length;
    console.error(
      `thumbs  round ${r + 1}/${rounds}: ${judged} thumbs (${up} up), loss ${mean(losses).toFixed(3)}, ` +
        `held-out accuracy ${(100 * mean(scores)).toFixed(1)}%, ${seconds.toFixed(0)} s training`,
    );
  }
  trainer.optimizer.dispose();
  policy.model.dispose();
  reference.model.dispose();
  return points;
}

async function runArm(arm: Arm, baseAccuracy: number): Promise<Point[]> {
  if (arm === "thumbs") return await runThumbsArm(baseAccuracy);
  const policy = await loadModel(values.model!);
  const lora = arm === "lora";
  const reference = lora ? null : await loadModel(values.model!, { trainable: false });
  const trainer = createTrainer(policy, reference, lora ? { ...config, ...LORA } : config);
  const nextPrompt = createArithmeticPrompts({ seed: SEED, minOperand: 0, maxOperand: 99 });
  const shuffle = createRng(SEED);
  const rounds = Math.ceil(BUDGET / ROUND);
  const points: Point[] = [{ pairs: 0, accuracy: baseAccuracy, seconds: 0 }];
  // Offline: every pair comes from the base policy, sampled before any training.
  const offline: Round[] = [];
  let seconds = 0;
  const began = performance.now();
  if (arm === "offline") {
    for (let r = 0; r < rounds; r++) {
      offline.push(await sampleRound(policy, Array.from({ length: roundSize(r) }, nextPrompt), SEED * 1000 + r));
    }
    seconds += (performance.now() - began) / 1000;
  }
  let judged = 0;
  for (let r = 0; r < rounds; r++) {
    const t0 = performance.now();
    const round = arm === "offline"
      ? offline[r]!
      : await sampleRound(policy, Array.from({ length: roundSize(r) }, nextPrompt), SEED * 1000 + r);
    judged += round.pairs.length + round.ties;
    const losses: number[] = [];
    for (let e = 0; e < EPOCHS; e++) {
      const order = round.pairs.map((p) => ({ p, k: shuffle() })).sort((a, b) => a.k - b.k).map((x) => x.p);
      for (let i = 0; i < order.length; i += BATCH) {
        losses.push((await trainer.trainStep(order.slice(i, i + BATCH), Number.MAX_SAFE_INTEGER)).loss);
      }
    }
    trainer.forgetReference(round.pairs);
    if (arm === "online") trainer.refreshReference(1);
    seconds += (performance.now() - t0) / 1000;
    const { scores } = await evaluate(policy);
    points.push({ pairs: judged, accuracy: mean(scores), seconds });
    const eta = (seconds / (r + 1)) * (rounds - r - 1);
    console.error(
      `${arm.padEnd(7)} round ${r + 1}/${rounds}: ${judged} judged pairs (${round.ties} ties), ` +
        `loss ${mean(losses).toFixed(3)}, held-out accuracy ${(100 * mean(scores)).toFixed(1)}%, ` +
        `${seconds.toFixed(0)} s training, ETA ${eta.toFixed(0)} s`,
    );
  }
  trainer.optimizer.dispose();
  policy.model.dispose();
  reference?.model.dispose();
  return points;
}

/** Accuracy against judged pairs, one line per setting, as a small self-contained SVG. */
function plotSvg(curves: Map<Arm, Point[]>, title: string): string {
  const W = 640, H = 360, L = 56, R = 110, T = 36, B = 44;
  const maxX = Math.max(...[...curves.values()].flatMap((c) => c.map((p) => p.pairs)), 1);
  const x = (v: number) => L + (v / maxX) * (W - L - R);
  const y = (v: number) => T + (1 - v) * (H - T - B);
  const colors: Record<Arm, string> = {
    online: "#1f77b4",
    frozen: "#ff7f0e",
    offline: "#7f7f7f",
    lora: "#d62728",
    thumbs: "#9467bd",
  };
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">${title}</text>`,
  ];
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    parts.push(
      `<line x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}" stroke="#ddd"/>`,
      `<text x="${L - 6}" y="${y(v) + 4}" text-anchor="end">${Math.round(v * 100)}%</text>`,
    );
  }
  parts.push(
    `<line x1="${L}" x2="${W - R}" y1="${y(0.95)}" y2="${y(0.95)}" stroke="#2ca02c" stroke-dasharray="4 3"/>`,
    `<text x="${W - R + 8}" y="${y(0.95) + 4}" fill="#2ca02c">95% target</text>`,
  );
  for (let i = 0; i <= 4; i++) {
    const v = Math.round((maxX * i) / 4);
    parts.push(`<text x="${x(v)}" y="${H - B + 16}" text-anchor="middle">${v}</text>`);
  }
  parts.push(
    `<text x="${(L + W - R) / 2}" y="${H - 8}" text-anchor="middle">judgments (pairs, or thumbs)</text>`,
    `<text x="14" y="${(T + H - B) / 2}" text-anchor="middle" transform="rotate(-90 14 ${(T + H - B) / 2})">` +
      `held-out accuracy</text>`,
  );
  [...curves].forEach(([arm, points], i) => {
    const d = points.map((p, j) => `${j === 0 ? "M" : "L"}${x(p.pairs).toFixed(1)},${y(p.accuracy).toFixed(1)}`);
    parts.push(
      `<path d="${d.join(" ")}" fill="none" stroke="${colors[arm]}" stroke-width="2"/>`,
      `<text x="${W - R + 8}" y="${y(0.5) + i * 18}" fill="${colors[arm]}">${arm}</text>`,
    );
  });
  parts.push("</svg>");
  return parts.join("\n") + "\n";
}

async function main(): Promise<void> {
  console.error(describeBackend(await initBackend(values.backend as "wasm")));
  const base = await loadModel(values.model!, { trainable: false });
  const baseAnswers = await evaluate(base);
  base.model.dispose();
  const baseAccuracy = mean(baseAnswers.scores);
  console.error(`base policy: ${(100 * baseAccuracy).toFixed(1)}% held-out accuracy on ${heldOut.length} prompts`);
  const curves = new Map<Arm, Point[]>();
  for (const arm of ARMS) curves.set(arm, await runArm(arm, baseAccuracy));

  console.log(
    `\nheld-out accuracy (${heldOut.length} prompts, greedy) against judged pairs; ` +
      `rounds of ${ROUND} prompts x ${N} samples, ${EPOCHS} epochs, batch ${BATCH}, ` +
      `lr ${config.learning_rate}, beta ${config.beta}, ${config.loss_type.join("+")}`,
  );
  const first = [...curves.values()][0]!;
  console.log(`| judgments | ${ARMS.join(" | ")} |\n|---:|${ARMS.map(() => "---:").join("|")}|`);
  first.forEach((p, i) => {
    const cells = ARMS.map((a) => `${(100 * curves.get(a)![i]!.accuracy).toFixed(1)}%`);
    console.log(`| ${p.pairs} | ${cells.join(" | ")} |`);
  });
  for (const arm of ARMS) {
    const points = curves.get(arm)!;
    const hit = points.find((p) => p.accuracy >= 0.95);
    const last = points.at(-1)!;
    const unit = arm === "thumbs" ? "thumbs" : "pairs";
    console.log(
      `${arm}: ${(100 * last.accuracy).toFixed(1)}% after ${last.pairs} ${unit} in ${last.seconds.toFixed(0)} s` +
        (hit ? `; 95% reached at ${hit.pairs} ${unit}, ${hit.seconds.toFixed(0)} s` : "; 95% not reached"),
    );
  }
  if (values.plot) {
    await Deno.mkdir(values.plot.split("/").slice(0, -1).join("/") || ".", { recursive: true });
    const title = `Learning from ${BUDGET} judged pairs (base ${(100 * baseAccuracy).toFixed(0)}%)`;
    await writeAtomic(values.plot, new TextEncoder().encode(plotSvg(curves, title)));
    console.log(`plot: ${values.plot}`);
  }
}

if (import.meta.main) await main();
