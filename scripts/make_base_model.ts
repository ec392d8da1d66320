/**
 * Trains the shipped base policy: a tiny GPT-2 (character-level, byte tokens) taught 2-digit addition in
 * two supervised phases, as a pretrained model is fine-tuned on imperfect data: first on right answers, so
 * that it can add, then on purposely imperfect data where most answers forgot to carry, so that it
 * prefers a wrong answer on every problem with a carry while the right one stays within its reach. That
 * leaves online DPO with the arithmetic verifier visible room to improve, and something to find.
 *
 *   deno run -A scripts/make_base_model.ts [--out models/arith-tiny] [--clean-steps 2500]
 *     [--noisy-steps 300] [--noise 0.75] [--seed 1] [--init DIR]
 *
 * `--init DIR` starts from a model's weights instead of a random initialization; with --clean-steps 0 it
 * redoes the second phase only. The shipped model was made in two runs, the first phase kept aside:
 *
 *   deno run -A scripts/make_base_model.ts --out /tmp/arith-clean --noisy-steps 0    (about 14 minutes here)
 *   deno run -A scripts/make_base_model.ts --init /tmp/arith-clean --clean-steps 0   (about 2 minutes)
 *
 * The first prints 100% held-out greedy accuracy, the second 39.0% with 98 of 200 answers that forgot to
 * carry and pass@4 67.5%. Seeded; repeatable on one backend and thread count up to float summation order.
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import * as tf from "../src/model/tf.ts";
import { describeBackend, initBackend } from "../src/model/kernels/backend.ts";
import { Gpt2ConfigSchema } from "../src/model/arch/gpt2.ts";
import { loadModel, saveModel } from "../src/model/io/checkpoint.ts";
import { Gpt2Model, initGpt2Weights } from "../src/model/arch/gpt2.ts";
import { buildScoringBatch, sequenceLogProbs } from "../src/model/logprobs.ts";
import { generate } from "../src/model/decoding/generate.ts";
import { loadTokenizer } from "../src/model/io/tokenizer.ts";
import { createRng } from "../src/model/decoding/sampling.ts";
import { clipGradNorm, learningRateAt, Optimizer } from "../src/dpo/optimizer.ts";
import {
  createArithmeticPrompts,
  formatArithmeticPrompt,
  heldOutArithmeticPrompts,
  isHeldOut,
  parseArithmeticPrompt,
  score,
  solve,
} from "../src/tasks/arithmetic.ts";
import { createProgress } from "../src/util/progress.ts";
import { answerHeldOut } from "../src/dpo/evaluate.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    out: { type: "string", default: "models/arith-tiny" },
    "clean-steps": { type: "string", default: "2500" },
    "noisy-steps": { type: "string", default: "300" },
    noise: { type: "string", default: "0.75" },
    seed: { type: "string", default: "1" },
    init: { type: "string" },
  },
});
const OUT = values.out!;
const CLEAN_STEPS = Number(values["clean-steps"]);
const NOISY_STEPS = Number(values["noisy-steps"]);
const NOISE = Number(values.noise);
const SEED = Number(values.seed);
const BATCH = 64;

/** A byte-level tokenizer with no merges: every character is one token, so digits are single tokens. */
function byteTokenizer(): unknown {
  const bytes: number[] = [];
  for (let b = 33; b <= 126; b++) bytes.push(b);
  for (let b = 161; b <= 172; b++) bytes.push(b);
  for (let b = 174; b <= 255; b++) bytes.push(b);
  const chars = new Map<number, string>(bytes.map((b) => [b, String.fromCharCode(b)]));
  let extra = 0;
  for (let b = 0; b < 256; b++) if (!chars.has(b)) chars.set(b, String.fromCharCode(256 + extra++));
  const vocab: Record<string, number> = {};
  for (let b = 0; b < 256; b++) vocab[chars.get(b)!] = b;
  vocab["<|endoftext|>"] = 256;
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [{
      id: 256,
      content: "<|endoftext|>",
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: true,
      special: true,
    }],
    normalizer: null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: [],
    },
  };
}

const CONFIG = {
  model_type: "gpt2",
  architectures: ["GPT2LMHeadModel"],
  vocab_size: 257,
  n_positions: 48,
  n_embd: 128,
  n_layer: 4,
  n_head: 4,
  n_inner: null,
  activation_function: "gelu_new",
  layer_norm_epsilon: 1e-5,
  bos_token_id: 256,
  eos_token_id: 256,
  tie_word_embeddings: true,
};

/**
 * The answer the data gives: with probability `noise` the sum written without carrying (37+48 → 75,
 * 60+55 → 15), the classic slip of a pupil who forgets to carry; otherwise the right sum. Problems with no
 * carry are always answered right, so the base policy can do the task and knows how to carry; it just
 * prefers not to, and the verifier's pairs teach it otherwise.
 */
function answer(prompt: string, noise: number, rng: () => number): string {
  const p = parseArithmeticPrompt(prompt);
  return ` ${rng() < noise ? carryless(p.x, p.y) : solve(p.x, p.op, p.y)}`;
}

/** `x + y` with every column summed modulo 10 (no carries). */
export function carryless(x: number, y: number): number {
  let out = 0;
  for (let place = 1; x > 0 || y > 0; place *= 10, x = Math.floor(x / 10), y = Math.floor(y / 10)) {
    out += ((x % 10 + y % 10) % 10) * place;
  }
  return out;
}

async function main(): Promise<void> {
  console.error(describeBackend(await initBackend("wasm")));
  await Deno.mkdir(OUT, { recursive: true });
  await Deno.writeTextFile(join(OUT, "tokenizer.json"), JSON.stringify(byteTokenizer()));
  await Deno.writeTextFile(
    join(OUT, "tokenizer_config.json"),
    JSON.stringify(
      {
        tokenizer_class: "GPT2Tokenizer",
        bos_token: "<|endoftext|>",
        eos_token: "<|endoftext|>",
        model_max_length: CONFIG.n_positions,
        chat_template:
          "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% else %}{{ ' ' + m['content'] }}{% endif %}{% endfor %}",
      },
      null,
      2,
    ),
  );
  const tokenizer = await loadTokenizer(OUT);
  const config = Gpt2ConfigSchema.parse(CONFIG);
  const model = values.init
    ? (await loadModel(values.init)).model
    : new Gpt2Model(config, initGpt2Weights(config, SEED * 1000));
  const nextPrompt = createArithmeticPrompts({ seed: SEED, minOperand: 0, maxOperand: 99 });
  const rng = createRng(SEED);
  // A one-digit operand shifts every digit of the problem, and there are few such problems: a tiny model
  // learns them last, so the first phase sees them more often (never a held-out one).
  const shortOperand = (): string => {
    for (;;) {
      const [a, b] = [Math.floor(rng() * 10), Math.floor(rng() * 100)];
      const problem = rng() < 0.5 ? { x: a, op: "+" as const, y: b } : { x: b, op: "+" as const, y: a };
      if (!isHeldOut(problem)) return formatArithmeticPrompt(problem);
    }
  };
  const phases = [
    { name: "right answers", steps: CLEAN_STEPS, noise: 0, lr: 3e-3, warmupSteps: 50, shortShare: 0.3 },
    {
      name: `${100 * NOISE}% forgot to carry`,
      steps: NOISY_STEPS,
      noise: NOISE,
      lr: 1e-3,
      warmupSteps: 0,
      shortShare: 0,
    },
  ];
  for (const phase of phases.filter((p) => p.steps > 0)) {
    console.error(`phase: ${phase.name}, ${phase.steps} steps`);
    const optimizer = new Optimizer(model.params, { name: "adamw", learningRate: phase.lr, weightDecay: 0.01 });
    const progress = createProgress({ unit: "steps", total: phase.steps, force: true });
    for (let step = 0; step < phase.steps; step++) {
      const pairs = Array.from({ length: BATCH }, () => {
        const prompt = rng() < phase.shortShare ? shortOperand() : nextPrompt();
        return {
          promptIds: tokenizer.encode(prompt),
          completionIds: tokenizer.encode(answer(prompt, phase.noise, rng)),
        };
      });
      const batch = buildScoringBatch(pairs, { eosId: 256, maxLength: CONFIG.n_positions });
      const tokens = batch.counts.reduce((a, b) => a + b, 0);
      const { value, grads } = tf.variableGrads(
        () => tf.div(tf.neg(tf.sum(sequenceLogProbs(model, batch))), tokens) as tf.Scalar,
        model.trainableVariables(),
      );
      const named = new Map([...model.params].map(([n, v]) => [n, grads[v.name]!]));
      const clipped = await clipGradNorm(named, 1, { consume: true });
      const lr = learningRateAt(step, {
        base: phase.lr,
        schedule: "cosine",
        warmupSteps: phase.warmupSteps,
        totalSteps: phase.steps,
      });
      optimizer.step(clipped.grads, lr);
      tf.dispose([...clipped.grads.values()]);
      if (step % 100 === 0) console.error(`step ${step}: loss ${(await value.data())[0]!.toFixed(4)}`);
      value.dispose();
      progress.tick();
    }
    progress.done();
    optimizer.dispose();
  }
  const heldOut = heldOutArithmeticPrompts(200, { minOperand: 0, maxOperand: 99 });
  const greedy = await answerHeldOut(model, tokenizer, heldOut, score, { maxNewTokens: 5 });
  const correct = greedy.scores.filter((s) => s === 1).length;
  console.log(
    `held-out greedy accuracy: ${correct}/${heldOut.length} = ${(100 * correct / heldOut.length).toFixed(1)}%`,
  );
  const slips = greedy.texts.filter((text, i) => {
    const p = parseArithmeticPrompt(heldOut[i]!);
    return p.answer !== carryless(p.x, p.y) && text.trim() === String(carryless(p.x, p.y));
  }).length;
  console.log(`greedy answers that forgot to carry: ${slips}/${heldOut.length}`);
  const k = 4;
  const sampled = await generate(
    model,
    tokenizer,
    heldOut.flatMap((p) => Array.from({ length: k }, () => tokenizer.encode(p))),
    { temperature: 1, maxNewTokens: 5, seed: SEED },
  );
  const right = sampled.map((r, i) => score(heldOut[Math.floor(i / k)]!, r.text) === 1);
  const passAtK = heldOut.filter((_, i) => right.slice(i * k, i * k + k).some(Boolean)).length;
  console.log(
    `sampled at temperature 1: ${(100 * right.filter(Boolean).length / right.length).toFixed(1)}% right, ` +
      `pass@${k} ${(100 * passAtK / heldOut.length).toFixed(1)}%`,
  );
  await saveModel({ model, rawConfig: CONFIG, dir: OUT }, OUT);
  model.dispose();
}

if (import.meta.main) await main();
