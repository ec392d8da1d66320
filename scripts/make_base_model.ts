/**
 * Trains the shipped base policy: a tiny GPT-2 (character-level, byte tokens) taught 2-digit addition by
 * supervised fine-tuning on purposely imperfect data (a share of the answers are wrong), so that online
 * DPO with the arithmetic verifier has visible room to improve.
 *
 *   deno run -A scripts/make_base_model.ts [--out models/arith-tiny] [--steps 1500] [--noise 0.4] [--seed 1]
 *
 * Deterministic for a seed on one backend (wasm). Prints the held-out accuracy of greedy answers.
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import * as tf from "../src/model/tf.ts";
import { describeBackend, initBackend } from "../src/model/backend.ts";
import { Gpt2ConfigSchema } from "../src/model/config.ts";
import { saveModel } from "../src/model/checkpoint.ts";
import { Gpt2Model, initGpt2Weights } from "../src/model/gpt2.ts";
import { buildScoringBatch, sequenceLogProbs } from "../src/model/logprobs.ts";
import { generate } from "../src/model/generate.ts";
import { loadTokenizer } from "../src/model/tokenizer.ts";
import { createRng } from "../src/model/sampling.ts";
import { clipGradNorm, learningRateAt, Optimizer } from "../src/dpo/optimizer.ts";
import {
  createArithmeticPrompts,
  heldOutArithmeticPrompts,
  parseArithmeticPrompt,
  score,
  solve,
} from "../src/judge/arithmetic.ts";
import { createProgress } from "../src/util/progress.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    out: { type: "string", default: "models/arith-tiny" },
    steps: { type: "string", default: "1500" },
    noise: { type: "string", default: "0.4" },
    seed: { type: "string", default: "1" },
  },
});
const OUT = values.out!;
const STEPS = Number(values.steps);
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

/** The answer the data gives: right, or (with probability `noise`) off by 1 to 10. */
function answer(prompt: string, rng: () => number): string {
  const p = parseArithmeticPrompt(prompt);
  const right = solve(p.x, p.op, p.y);
  if (rng() >= NOISE) return ` ${right}`;
  const off = 1 + Math.floor(rng() * 10);
  return ` ${right + (rng() < 0.5 ? -off : off)}`;
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
  const model = new Gpt2Model(config, initGpt2Weights(config, SEED * 1000));
  const optimizer = new Optimizer(model.params, { name: "adamw", learningRate: 3e-3, weightDecay: 0.01 });
  const nextPrompt = createArithmeticPrompts({ seed: SEED, minOperand: 0, maxOperand: 99 });
  const rng = createRng(SEED);
  const progress = createProgress({ unit: "steps", total: STEPS, force: true });
  for (let step = 0; step < STEPS; step++) {
    const pairs = Array.from({ length: BATCH }, () => {
      const prompt = nextPrompt();
      return { promptIds: tokenizer.encode(prompt), completionIds: tokenizer.encode(answer(prompt, rng)) };
    });
    const batch = buildScoringBatch(pairs, { eosId: 256, maxLength: CONFIG.n_positions });
    const tokens = batch.counts.reduce((a, b) => a + b, 0);
    const { value, grads } = tf.variableGrads(
      () => tf.div(tf.neg(tf.sum(sequenceLogProbs(model, batch))), tokens) as tf.Scalar,
      model.trainableVariables(),
    );
    const named = new Map([...model.params].map(([n, v]) => [n, grads[v.name]!]));
    const clipped = await clipGradNorm(named, 1, { consume: true });
    const lr = learningRateAt(step, { base: 3e-3, schedule: "cosine", warmupSteps: 50, totalSteps: STEPS });
    optimizer.step(clipped.grads, lr);
    tf.dispose([...clipped.grads.values()]);
    if (step % 100 === 0) console.error(`step ${step}: loss ${(await value.data())[0]!.toFixed(4)}`);
    value.dispose();
    progress.tick();
  }
  progress.done();
  const heldOut = heldOutArithmeticPrompts(200, { minOperand: 0, maxOperand: 99 });
  const results = await generate(model, tokenizer, heldOut.map((p) => tokenizer.encode(p)), {
    temperature: 0,
    maxNewTokens: 5,
  });
  const correct = results.filter((r, i) => score(heldOut[i]!, r.text) === 1).length;
  console.log(
    `held-out greedy accuracy: ${correct}/${heldOut.length} = ${(100 * correct / heldOut.length).toFixed(1)}%`,
  );
  await saveModel({ model, rawConfig: CONFIG, dir: OUT }, OUT);
  optimizer.dispose();
  model.dispose();
}

if (import.meta.main) await main();
