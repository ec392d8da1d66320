/**
 * GPT-2 (`model_type: gpt2`) in TensorFlow.js, read top to bottom like nanoGPT's model.py.
 *
 * Notation: B batch, T new tokens in this call, P past tokens in the KV cache,
 * S = P + T keys, C = n_embd, H = n_head, D = C / H, F = MLP width, V = vocab.
 * Weights use Hugging Face names and layouts (Conv1D weights are [in, out]).
 * Dropout is never applied: DPO trains with dropout off, as TRL does by default.
 */
import * as tf from "../tf.ts";
import { z } from "zod";
import { ACTIVATIONS, TokenIdSchema, TokenIdsSchema } from "./config.ts";
import {
  activationBackward,
  activationForward,
  attentionSoftmax,
  attentionSoftmaxBackward,
  customOp,
  embed,
  fromHeads,
  layerNorm,
  layerNormBackward,
  layerNormForward,
  linearBackward,
  type LoraSaved,
  mergeHeads,
  splitHeads,
  toHeads,
} from "../kernels/_ops.ts";
import {
  decodeAttention,
  decodeAttentionInPlace,
  decodeEmbed,
  decodeKernelsApply,
  decodeLayerNorm,
  decodeLinear,
} from "../kernels/_decode_kernels.ts";
import { peftName } from "./adapter.ts";
import {
  type Architecture,
  CausalLM,
  type ForwardInput,
  type ForwardOutput,
  type KVCache,
  type LinearModule,
  type WeightLookup,
} from "./causal_lm.ts";

/** GPT-2 `config.json`; unknown keys are kept so that saving round-trips them. */
export const Gpt2ConfigSchema = z.looseObject({
  model_type: z.literal("gpt2"),
  vocab_size: z.number().int().positive(),
  n_positions: z.number().int().positive(),
  n_embd: z.number().int().positive(),
  n_layer: z.number().int().positive(),
  n_head: z.number().int().positive(),
  n_inner: z.number().int().positive().nullish().describe("MLP width; null means 4 * n_embd"),
  activation_function: z.enum(ACTIVATIONS).default("gelu_new"),
  layer_norm_epsilon: z.number().positive().default(1e-5),
  bos_token_id: TokenIdSchema,
  eos_token_id: TokenIdsSchema,
  tie_word_embeddings: z.boolean().default(true),
  scale_attn_weights: z.boolean().default(true),
  scale_attn_by_inverse_layer_idx: z.boolean().default(false),
}).superRefine((c, ctx) => {
  if (c.n_embd % c.n_head !== 0) {
    ctx.addIssue({
      code: "custom",
      path: ["n_head"],
      message: `'n_head' must divide 'n_embd' (${c.n_embd}): current value is ${c.n_head}`,
    });
  }
});

/** A validated GPT-2 configuration. */
export type Gpt2Config = z.infer<typeof Gpt2ConfigSchema>;

/** The MLP width of a GPT-2 configuration. */
export function innerSize(config: Gpt2Config): number {
  return config.n_inner ?? 4 * config.n_embd;
}

/** The canonical tensor names and shapes a GPT-2 checkpoint must hold. */
export function gpt2ParameterShapes(config: Gpt2Config): Map<string, number[]> {
  const C = config.n_embd;
  const F = innerSize(config);
  const shapes = new Map<string, number[]>([
    ["transformer.wte.weight", [config.vocab_size, C]],
    ["transformer.wpe.weight", [config.n_positions, C]],
  ]);
  for (let i = 0; i < config.n_layer; i++) {
    const p = `transformer.h.${i}`;
    shapes.set(`${p}.ln_1.weight`, [C]).set(`${p}.ln_1.bias`, [C]);
    shapes.set(`${p}.attn.c_attn.weight`, [C, 3 * C]).set(`${p}.attn.c_attn.bias`, [3 * C]);
    shapes.set(`${p}.attn.c_proj.weight`, [C, C]).set(`${p}.attn.c_proj.bias`, [C]);
    shapes.set(`${p}.ln_2.weight`, [C]).set(`${p}.ln_2.bias`, [C]);
    shapes.set(`${p}.mlp.c_fc.weight`, [C, F]).set(`${p}.mlp.c_fc.bias`, [F]);
    shapes.set(`${p}.mlp.c_proj.weight`, [F, C]).set(`${p}.mlp.c_proj.bias`, [C]);
  }
  shapes.set("transformer.ln_f.weight", [C]).set("transformer.ln_f.bias", [C]);
  if (!config.tie_word_embeddings) shapes.set("lm_head.weight", [config.vocab_size, C]);
  return shapes;
}

/** A block's weights in the order the block op takes them (after its input x). */
const BLOCK_WEIGHTS = [
  "ln_1.weight",
  "ln_1.bias",
  "attn.c_attn.weight",
  "attn.c_attn.bias",
  "attn.c_proj.weight",
  "attn.c_proj.bias",
  "ln_2.weight",
  "ln_2.bias",
  "mlp.c_fc.weight",
  "mlp.c_fc.bias",
  "mlp.c_proj.weight",
  "mlp.c_proj.bias",
] as const;

type BlockWeights = Record<typeof BLOCK_WEIGHTS[number], tf.Tensor>;

function namedWeights(list: tf.Tensor[]): BlockWeights {
  const named = {} as BlockWeights;
  BLOCK_WEIGHTS.forEach((name, j) => named[name] = list[j]!);
  return named;
}

/** GPT-2's initialization, seeded: N(0, 0.02) matrices and embeddings, LayerNorm at identity, zero biases. */
export function initGpt2Weights(config: Gpt2Config, seed: number): Map<string, tf.Tensor> {
  const weights = new Map<string, tf.Tensor>();
  for (const [name, shape] of gpt2ParameterShapes(config)) {
    const norm = /ln_\d|ln_f/.test(name);
    weights.set(
      name,
      norm && name.endsWith("weight")
        ? tf.ones(shape)
        : name.endsWith("bias")
        ? tf.zeros(shape)
        : tf.randomNormal(shape, 0, 0.02, "float32", seed + weights.size),
    );
  }
  return weights;
}

/** A GPT-2 language model: its config and its weights as TF.js variables. */
export class Gpt2Model extends CausalLM {
  readonly config: Gpt2Config;
  readonly defaultLoraTargets = ["c_attn"];

  /** Takes ownership of `weights` (shapes already checked by the loader). */
  constructor(config: Gpt2Config, weights: Map<string, tf.Tensor>, trainable = true) {
    super(weights, trainable);
    this.config = config;
  }

  get contextLength(): number {
    return this.config.n_positions;
  }

  linearModules(): Map<string, LinearModule> {
    const C = this.config.n_embd;
    const F = innerSize(this.config);
    const modules = new Map<string, LinearModule>();
    for (let i = 0; i < this.config.n_layer; i++) {
      const p = `transformer.h.${i}`;
      modules.set(`${p}.attn.c_attn`, { inFeatures: C, outFeatures: 3 * C, fanInFanOut: true });
      modules.set(`${p}.attn.c_proj`, { inFeatures: C, outFeatures: C, fanInFanOut: true });
      modules.set(`${p}.mlp.c_fc`, { inFeatures: C, outFeatures: F, fanInFanOut: true });
      modules.set(`${p}.mlp.c_proj`, { inFeatures: F, outFeatures: C, fanInFanOut: true });
    }
    return modules;
  }

  /**
   * The transformer: embeddings, blocks, final LayerNorm. Synchronous; call inside `tf.tidy`.
   * Without a cache or an active adapter each block is one op with a hand-written gradient (training
   * and scoring); otherwise blocks are composed ops (TF.js differentiates the adapter's matrices) and
   * also return their keys and values (generation). A decoding step (one new token per row, after a
   * cache) runs on the wasm backend's decoding kernels when they apply.
   */
  forward(input: ForwardInput, withCache = false): ForwardOutput {
    const [B, T] = input.ids.shape;
    const C = this.config.n_embd;
    if (input.cache && T === 1 && this.decodesInPlace()) return this.decodeStep(input, input.cache);
    const tok = embed(this.p("transformer.wte.weight"), tf.reshape(input.ids, [-1])); // [B*T, C]
    const pos = embed(this.p("transformer.wpe.weight"), tf.reshape(input.positions, [-1])); // [B*T, C]
    let x = tf.reshape(tf.add(tok, pos), [B, T, C]) as tf.Tensor3D; // [B, T, C]
    const keys: tf.Tensor4D[] = [];
    const values: tf.Tensor4D[] = [];
    const training = !withCache && !input.cache;
    for (let i = 0; i < this.config.n_layer; i++) {
      // Training and scoring: each block one op with the hand-written blockBackward. Generation, and
      // training with the adapter's dropout (which that op does not differentiate): composed ops.
      if (training && this.layerOpsApply()) {
        x = this.trainableBlock(i, x, input.bias);
        continue;
      }
      const lora = (module: string, rows: tf.Tensor2D) =>
        this.loraUpdate(this.weight, `transformer.h.${i}.${module}`, rows);
      const past = input.cache ? usedKeys(input.cache, i) : undefined;
      const out = blockForward(this.config, i, this.blockWeights(i), x, input.bias, past, lora);
      x = out.out;
      keys.push(out.k);
      values.push(out.v);
    }
    const ln = "transformer.ln_f";
    const hidden = layerNorm(x, this.p(`${ln}.weight`), this.p(`${ln}.bias`), this.config.layer_norm_epsilon);
    return withCache ? { hidden, cache: { keys, values } } : { hidden };
  }

  /** On the wasm backend's decoding kernels, without an active adapter (its updates are composed ops). */
  override decodesInPlace(): boolean {
    return !this.adapter?.enabled && decodeKernelsApply();
  }

  /**
   * One decoding step, one new token per row, on the decoding kernels: about 15 ops a block instead of
   * about 65, which is what a step of a small model costs (see _decode_kernels.ts). Rows travel as
   * [1, B, C], the shape those kernels take. A cache with room is written in place and returned with one
   * more key in use; otherwise a cache one key longer is returned. No gradient.
   */
  private decodeStep(input: ForwardInput, cache: KVCache): ForwardOutput {
    const [B] = input.ids.shape;
    const config = this.config;
    const C = config.n_embd;
    const eps = config.layer_norm_epsilon;
    const [wte, wpe] = [this.p("transformer.wte.weight"), this.p("transformer.wpe.weight")];
    let x = decodeEmbed(wte, wpe, input.ids, input.positions); // [1, B, C]
    const keys: tf.Tensor4D[] = [];
    const values: tf.Tensor4D[] = [];
    for (let i = 0; i < config.n_layer; i++) {
      const w = this.blockWeights(i);
      const past = { k: cache.keys[i]!, v: cache.values[i]! };
      const ln1 = decodeLayerNorm(x, w["ln_1.weight"], w["ln_1.bias"], eps); // [1, B, C]
      const qkv = decodeLinear(ln1, w["attn.c_attn.weight"], w["attn.c_attn.bias"]); // [1, B, 3C]
      const scale = attentionScale(config, i);
      let merged: tf.Tensor3D; // [1, B, C]
      if (cache.length !== undefined) merged = decodeAttentionInPlace(qkv, past, input.bias, scale);
      else {
        const attn = decodeAttention(qkv, past, input.bias, scale); // keys and values [B, H, S, D]
        merged = attn.merged;
        keys.push(attn.k);
        values.push(attn.v);
      }
      const x1 = tf.add(x, decodeLinear(merged, w["attn.c_proj.weight"], w["attn.c_proj.bias"])); // [1, B, C]
      const ln2 = decodeLayerNorm(x1 as tf.Tensor3D, w["ln_2.weight"], w["ln_2.bias"], eps); // [1, B, C]
      const pre = decodeLinear(ln2, w["mlp.c_fc.weight"], w["mlp.c_fc.bias"]); // [1, B, F]
      const act = activationForward(config.activation_function, pre).y as tf.Tensor3D; // [1, B, F]
      x = tf.add(x1, decodeLinear(act, w["mlp.c_proj.weight"], w["mlp.c_proj.bias"])) as tf.Tensor3D; // [1, B, C]
    }
    const ln = "transformer.ln_f";
    const hidden = tf.reshape(decodeLayerNorm(x, this.p(`${ln}.weight`), this.p(`${ln}.bias`), eps), [B, 1, C]);
    const next = cache.length !== undefined ? { ...cache, length: cache.length + 1 } : { keys, values };
    return { hidden: hidden as tf.Tensor3D, cache: next };
  }

  /** Next-token logits through the (tied) LM head. */
  logits(hidden: tf.Tensor2D): tf.Tensor2D {
    const head = this.config.tie_word_embeddings ? "transformer.wte.weight" : "lm_head.weight";
    return tf.matMul(hidden, this.p(head), false, true); // [N, V]
  }

  private blockWeights(layer: number): BlockWeights {
    return namedWeights(BLOCK_WEIGHTS.map((n) => this.p(`transformer.h.${layer}.${n}`)));
  }

  /**
   * One block as one op: TF.js records a single node and keeps only what `blockBackward` needs, and only
   * the block's trainable weights (an adapter's included) are inputs that get gradients.
   */
  private trainableBlock(layer: number, x: tf.Tensor3D, bias: tf.Tensor4D): tf.Tensor3D {
    const config = this.config;
    const prefix = `transformer.h.${layer}`;
    const { names, read } = this.layerInputs(prefix, BLOCK_WEIGHTS.map((n) => `${prefix}.${n}`));
    const weightsOf = (w: WeightLookup) => namedWeights(BLOCK_WEIGHTS.map((n) => w(`${prefix}.${n}`)));
    const adapter = this.adapter?.enabled ? this.adapter : undefined;
    let adapted: string[] = []; // the modules whose x A^T the forward saved, in order
    const op = customOp(([xi, ...ws]) => {
      const w = read(ws);
      const lows = new Map<string, tf.Tensor2D>();
      const lora: LoraHook = (module, rows) =>
        this.loraUpdate(w, `${prefix}.${module}`, rows, (low) => lows.set(module, low));
      const out = blockForward(config, layer, weightsOf(w), xi as tf.Tensor3D, bias, undefined, lora);
      adapted = [...lows.keys()];
      return { value: out.out, saved: [...out.saved, ...lows.values(), ...ws] };
    }, (dy, saved) => {
      const w = read(saved.slice(SAVED_COUNT + adapted.length));
      const lora = new Map(adapted.map((module, j) => {
        const full = `${prefix}.${module}`;
        const low = saved[SAVED_COUNT + j] as tf.Tensor2D;
        return [module, { a: w(peftName(full, "A")), b: w(peftName(full, "B")), low, scale: adapter!.scale }];
      }));
      const trainable = new Set(names);
      const g = blockBackward(config, layer, weightsOf(w), dy as tf.Tensor3D, saved.slice(0, SAVED_COUNT), {
        want: (name) => trainable.has(`${prefix}.${name}`),
        lora,
      });
      const grads = new Map([...g.grads].map(([name, t]) => [`${prefix}.${name}`, t]));
      for (const [module, d] of g.lora) {
        grads.set(peftName(`${prefix}.${module}`, "A"), d.dA).set(peftName(`${prefix}.${module}`, "B"), d.dB);
      }
      return [g.dx, ...names.map((name) => grads.get(name)!)];
    });
    return op(x, ...names.map(this.weight)) as tf.Tensor3D;
  }
}

/** Layer `layer`'s keys and values [B, H, P, D] in use: a cache with room (`length`) has more positions. */
function usedKeys(cache: KVCache, layer: number): { k: tf.Tensor4D; v: tf.Tensor4D } {
  const [k, v] = [cache.keys[layer]!, cache.values[layer]!];
  if (cache.length === undefined || cache.length === k.shape[2]) return { k, v };
  const used = (t: tf.Tensor4D) => tf.slice(t, [0, 0, 0, 0], [-1, -1, cache.length!, -1]) as tf.Tensor4D;
  return { k: used(k), v: used(v) };
}

/** How many activations `blockForward` saves for `blockBackward`. */
const SAVED_COUNT = 10;

/** A LoRA update for a block's module (`attn.c_attn`) on rows [N, in], or null. */
type LoraHook = (module: string, rows: tf.Tensor2D) => tf.Tensor2D | null;

/**
 * y = x W + b for x [B, T, in], W [in, out] (Conv1D): [B*T, out]. One fused kernel (no tape: see
 * blockBackward), plus the adapter's update for `module` when a LoRA hook is given.
 */
function linear(x: tf.Tensor, w: tf.Tensor, b: tf.Tensor, lora?: LoraHook, module?: string): tf.Tensor2D {
  const rows = tf.reshape(x, [-1, w.shape[0]!]) as tf.Tensor2D;
  const y = tf.fused.matMul({ a: rows, b: w as tf.Tensor2D, bias: b }) as tf.Tensor2D;
  const delta = lora?.(module!, rows);
  return delta ? tf.add(y, delta) : y;
}

/** Attention score scale: 1/sqrt(D), and 1/(layer+1) with scale_attn_by_inverse_layer_idx. */
function attentionScale(config: Gpt2Config, layer: number): number {
  const D = config.n_embd / config.n_head;
  return (config.scale_attn_weights ? 1 / Math.sqrt(D) : 1) /
    (config.scale_attn_by_inverse_layer_idx ? layer + 1 : 1);
}

/**
 * One transformer block, pre-LayerNorm:
 *   x1  = x + c_proj(attention(ln_1(x)))
 *   out = x1 + mlp.c_proj(act(mlp.c_fc(ln_2(x1))))
 * Returns the keys and values (with the past prepended) and the activations the backward pass needs.
 */
function blockForward(
  config: Gpt2Config,
  layer: number,
  w: BlockWeights,
  x: tf.Tensor3D,
  bias: tf.Tensor4D,
  past?: { k: tf.Tensor4D; v: tf.Tensor4D },
  lora?: LoraHook,
) {
  const [B, T, C] = x.shape;
  const H = config.n_head;
  const eps = config.layer_norm_epsilon;
  // Attention.
  const ln1 = layerNormForward(x, w["ln_1.weight"], w["ln_1.bias"], eps); // [B, T, C]
  const qkv = linear(ln1.y, w["attn.c_attn.weight"], w["attn.c_attn.bias"], lora, "attn.c_attn"); // [B*T, 3C]
  const [q, kNew, vNew] = splitHeads(qkv, B, T, H) as [tf.Tensor4D, tf.Tensor4D, tf.Tensor4D]; // [B, H, T, D]
  const k = past ? tf.concat([past.k, kNew], 2) : kNew; // [B, H, S, D]
  const v = past ? tf.concat([past.v, vNew], 2) : vNew; // [B, H, S, D]
  const probs = attentionSoftmax(tf.matMul(q, k, false, true), bias, attentionScale(config, layer)); // [B, H, T, S]
  const merged = fromHeads(tf.matMul(probs, v) as tf.Tensor4D); // [B*T, C]
  const attnOut = linear(merged, w["attn.c_proj.weight"], w["attn.c_proj.bias"], lora, "attn.c_proj"); // [B*T, C]
  const x1 = tf.add(x, tf.reshape(attnOut, [B, T, C])); // [B, T, C]
  // MLP.
  const ln2 = layerNormForward(x1, w["ln_2.weight"], w["ln_2.bias"], eps); // [B, T, C]
  const pre = linear(ln2.y, w["mlp.c_fc.weight"], w["mlp.c_fc.bias"], lora, "mlp.c_fc"); // [B*T, F]
  const act = activationForward(config.activation_function, pre); // [B*T, F]
  const mlpOut = linear(act.y, w["mlp.c_proj.weight"], w["mlp.c_proj.bias"], lora, "mlp.c_proj"); // [B*T, C]
  const out = tf.add(x1, tf.reshape(mlpOut, [B, T, C])) as tf.Tensor3D; // [B, T, C]
  // The LayerNorms' outputs and the activation's are not kept: the backward pass recomputes them (two
  // elementwise ops and one activation kernel), which keeps about 40% less per block.
  const saved = [ln1.xhat, ln1.rstd, q, k, v, probs, merged, ln2.xhat, ln2.rstd, pre];
  return { out, k, v, saved: saved as tf.Tensor[] };
}

/**
 * Gradients of `blockForward` given dOut [B, T, C]: dx, the block weights' that `want` names (by
 * BLOCK_WEIGHTS name), and each adapted module's dA and dB (`lora`, by module name).
 */
function blockBackward(
  config: Gpt2Config,
  layer: number,
  w: BlockWeights,
  dOut: tf.Tensor3D,
  saved: tf.Tensor[],
  o: { want: (name: string) => boolean; lora: Map<string, LoraSaved> },
) {
  const [ln1Xhat, ln1Rstd, q, k, v, probs, merged, ln2Xhat, ln2Rstd, pre] = saved as [
    tf.Tensor3D,
    tf.Tensor3D,
    tf.Tensor4D,
    tf.Tensor4D,
    tf.Tensor4D,
    tf.Tensor4D,
    tf.Tensor2D,
    tf.Tensor3D,
    tf.Tensor3D,
    tf.Tensor2D,
  ];
  const ln1Y = tf.add(tf.mul(ln1Xhat, w["ln_1.weight"]), w["ln_1.bias"]) as tf.Tensor3D;
  const ln2Y = tf.add(tf.mul(ln2Xhat, w["ln_2.weight"]), w["ln_2.bias"]) as tf.Tensor3D;
  const { y: actY, aux } = activationForward(config.activation_function, pre);
  const [B, T, C] = dOut.shape;
  const H = config.n_head;
  const rows = (t: tf.Tensor) => tf.reshape(t, [B * T, -1]) as tf.Tensor2D;
  const grads = new Map<string, tf.Tensor>();
  const lora = new Map<string, { dA: tf.Tensor; dB: tf.Tensor }>();
  /** Gradients of a Conv1D y = x W + b (+ LoRA): records those that train, returns dx [B*T, in]. */
  const linear = (module: string, dy: tf.Tensor2D, x: tf.Tensor2D): tf.Tensor2D => {
    const [weight, bias] = [`${module}.weight`, `${module}.bias`];
    const g = linearBackward(dy, x, w[weight as keyof BlockWeights], {
      inOut: true,
      want: { weight: o.want(weight), bias: o.want(bias) },
      lora: o.lora.get(module),
    });
    if (g.dWeight) grads.set(weight, g.dWeight);
    if (g.dBias) grads.set(bias, g.dBias);
    if (g.dA && g.dB) lora.set(module, { dA: g.dA, dB: g.dB });
    return g.dx;
  };
  const norm = (name: string, g: { dWeight: tf.Tensor; dBias: tf.Tensor }) => {
    if (o.want(`${name}.weight`)) grads.set(`${name}.weight`, g.dWeight);
    if (o.want(`${name}.bias`)) grads.set(`${name}.bias`, g.dBias);
  };

  // MLP: out = x1 + c_proj(act(c_fc(ln_2(x1)))).
  const dAct = linear("mlp.c_proj", rows(dOut), actY as tf.Tensor2D); // [B*T, F]
  const dPre = activationBackward(config.activation_function, dAct, pre, aux) as tf.Tensor2D; // [B*T, F]
  const dLn2Y = linear("mlp.c_fc", dPre, rows(ln2Y)); // [B*T, C]
  const ln2 = layerNormBackward(tf.reshape(dLn2Y, [B, T, C]), ln2Xhat, ln2Rstd, w["ln_2.weight"]);
  norm("ln_2", ln2);
  const dX1 = tf.add(dOut, ln2.dx); // [B, T, C]

  // Attention: x1 = x + c_proj(merge(softmax(q k^T * scale + bias) v)).
  const dMerged = linear("attn.c_proj", rows(dX1), merged); // [B*T, C]
  const dY = toHeads(dMerged, B, T, H); // [B, H, T, D]
  const dProbs = tf.matMul(dY, v, false, true) as tf.Tensor4D; // [B, H, T, S]
  const dV = tf.matMul(probs, dY, true, false) as tf.Tensor4D; // [B, H, S, D]
  const dScores = attentionSoftmaxBackward(probs, dProbs, attentionScale(config, layer)); // [B, H, T, S]
  const dQ = tf.matMul(dScores, k) as tf.Tensor4D; // [B, H, T, D]
  const dK = tf.matMul(dScores, q, true, false) as tf.Tensor4D; // [B, H, S, D]
  const dQkv = mergeHeads(dQ, dK, dV); // [B*T, 3C]
  const dLn1Y = linear("attn.c_attn", dQkv, rows(ln1Y)); // [B*T, C]
  const ln1 = layerNormBackward(tf.reshape(dLn1Y, [B, T, C]), ln1Xhat, ln1Rstd, w["ln_1.weight"]);
  norm("ln_1", ln1);
  return { dx: tf.add(dX1, ln1.dx) as tf.Tensor3D, grads, lora };
}

/** GPT-2 for the registry. */
export const gpt2: Architecture<Gpt2Config> = {
  modelTypes: ["gpt2"],
  configSchema: Gpt2ConfigSchema,
  parameterShapes: gpt2ParameterShapes,
  initWeights: initGpt2Weights,
  create: (config, weights, trainable) => new Gpt2Model(config, weights, trainable),
  size: (config) => ({ layers: config.n_layer, width: config.n_embd }),
};
