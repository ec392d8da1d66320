/**
 * The Llama family (`model_type: llama`, and `qwen2`, which adds q/k/v biases) in TensorFlow.js, read
 * top to bottom like Hugging Face's modeling_llama.py: RMSNorm, rotary position embeddings (with the
 * rope_scaling variants these checkpoints ship with), grouped-query attention, a SwiGLU MLP, and a
 * tied or separate LM head.
 *
 * Notation: B batch, T new tokens in this call, P past tokens in the KV cache, S = P + T keys,
 * C = hidden_size, H query heads, K key/value heads, G = H / K query heads per key/value head,
 * D head size, F = intermediate_size, V = vocab. Linear weights are [out, in] (nn.Linear).
 * Dropout is never applied. Each layer is one recomputed op in training (`recomputed` in _ops.ts): its
 * gradients come from TF.js's tape over these ops, one layer at a time.
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
  linearBackward,
  sumRows,
} from "../kernels/_ops.ts";
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

/** The RoPE scaling variants Llama-family checkpoints ship with (`rope_scaling.rope_type`, or the legacy `type`). */
export const RopeScalingSchema = z.looseObject({
  rope_type: z.string().optional(),
  type: z.string().optional(),
  factor: z.number().positive().optional(),
  original_max_position_embeddings: z.number().int().positive().optional(),
  low_freq_factor: z.number().positive().optional(),
  high_freq_factor: z.number().positive().optional(),
  beta_fast: z.number().positive().optional(),
  beta_slow: z.number().positive().optional(),
  attention_factor: z.number().positive().optional(),
});

/** Llama-family `config.json` (`llama`, and `qwen2`, which adds q/k/v biases); unknown keys are kept. */
export const LlamaConfigSchema = z.looseObject({
  model_type: z.enum(["llama", "qwen2"]),
  vocab_size: z.number().int().positive(),
  hidden_size: z.number().int().positive(),
  intermediate_size: z.number().int().positive(),
  num_hidden_layers: z.number().int().positive(),
  num_attention_heads: z.number().int().positive(),
  num_key_value_heads: z.number().int().positive().nullish().describe("grouped-query attention; null means MHA"),
  head_dim: z.number().int().positive().nullish().describe("null means hidden_size / num_attention_heads"),
  max_position_embeddings: z.number().int().positive(),
  rms_norm_eps: z.number().positive().default(1e-6),
  rope_theta: z.number().positive().default(10000),
  rope_scaling: RopeScalingSchema.nullish(),
  partial_rotary_factor: z.literal(1).optional(),
  attention_bias: z.boolean().default(false).describe("llama: biases on q/k/v/o (qwen2 always has q/k/v biases)"),
  mlp_bias: z.boolean().default(false),
  hidden_act: z.enum(ACTIVATIONS).default("silu"),
  use_sliding_window: z.literal(false).optional(),
  bos_token_id: TokenIdSchema,
  eos_token_id: TokenIdsSchema,
  tie_word_embeddings: z.boolean().default(false),
}).superRefine((c, ctx) => {
  const kv = c.num_key_value_heads ?? c.num_attention_heads;
  if (c.num_attention_heads % kv !== 0) {
    ctx.addIssue({
      code: "custom",
      path: ["num_key_value_heads"],
      message:
        `'num_key_value_heads' must divide 'num_attention_heads' (${c.num_attention_heads}): current value is ${kv}`,
    });
  }
  const D = c.head_dim ?? c.hidden_size / c.num_attention_heads;
  if (!Number.isInteger(D) || D % 2 !== 0) {
    ctx.addIssue({
      code: "custom",
      path: [c.head_dim ? "head_dim" : "num_attention_heads"],
      message: `the head size must be an even integer for rotary embeddings: current value is ${D}`,
    });
  }
  const s = c.rope_scaling;
  if (!s) return;
  const kind = s.rope_type ?? s.type ?? "default";
  const need = (key: keyof typeof s) => {
    if (s[key] === undefined) {
      ctx.addIssue({
        code: "custom",
        path: ["rope_scaling", key],
        message: `'rope_scaling.${key}' is required for rope_type '${kind}'`,
      });
    }
  };
  if (!["default", "linear", "llama3", "yarn"].includes(kind)) {
    ctx.addIssue({
      code: "custom",
      path: ["rope_scaling", "rope_type"],
      message: `rope_type '${kind}' is not supported (supported: default, linear, llama3, yarn)`,
    });
  }
  if (kind !== "default") need("factor");
  if (kind === "llama3") {
    for (const k of ["low_freq_factor", "high_freq_factor", "original_max_position_embeddings"] as const) need(k);
    if (
      s.low_freq_factor !== undefined && s.high_freq_factor !== undefined && s.high_freq_factor <= s.low_freq_factor
    ) {
      ctx.addIssue({
        code: "custom",
        path: ["rope_scaling", "high_freq_factor"],
        message:
          `'high_freq_factor' must exceed 'low_freq_factor' (${s.low_freq_factor}): current value is ${s.high_freq_factor}`,
      });
    }
  }
});

/** A validated Llama-family configuration. */
export type LlamaConfig = z.infer<typeof LlamaConfigSchema>;

/** The head size: `head_dim` when the config sets it, else hidden_size / num_attention_heads. */
export function headDim(config: LlamaConfig): number {
  return config.head_dim ?? config.hidden_size / config.num_attention_heads;
}

function kvHeads(config: LlamaConfig): number {
  return config.num_key_value_heads ?? config.num_attention_heads;
}

/** Whether q/k/v and o carry biases: qwen2 always has q/k/v biases; llama has all four with attention_bias. */
function attentionBiases(config: LlamaConfig): { qkv: boolean; o: boolean } {
  return config.model_type === "qwen2"
    ? { qkv: true, o: false }
    : { qkv: config.attention_bias, o: config.attention_bias };
}

/** The linear layers of one decoder layer: [module suffix, in, out, has bias]. */
function layerLinears(config: LlamaConfig): [string, number, number, boolean][] {
  const C = config.hidden_size, F = config.intermediate_size, D = headDim(config);
  const H = config.num_attention_heads, K = kvHeads(config);
  const bias = attentionBiases(config);
  return [
    ["self_attn.q_proj", C, H * D, bias.qkv],
    ["self_attn.k_proj", C, K * D, bias.qkv],
    ["self_attn.v_proj", C, K * D, bias.qkv],
    ["self_attn.o_proj", H * D, C, bias.o],
    ["mlp.gate_proj", C, F, config.mlp_bias],
    ["mlp.up_proj", C, F, config.mlp_bias],
    ["mlp.down_proj", F, C, config.mlp_bias],
  ];
}

/** The canonical tensor names and shapes a Llama-family checkpoint must hold. */
export function llamaParameterShapes(config: LlamaConfig): Map<string, number[]> {
  const C = config.hidden_size, V = config.vocab_size;
  const shapes = new Map<string, number[]>([["model.embed_tokens.weight", [V, C]]]);
  for (let i = 0; i < config.num_hidden_layers; i++) {
    const p = `model.layers.${i}`;
    shapes.set(`${p}.input_layernorm.weight`, [C]).set(`${p}.post_attention_layernorm.weight`, [C]);
    for (const [name, inF, outF, bias] of layerLinears(config)) {
      shapes.set(`${p}.${name}.weight`, [outF, inF]);
      if (bias) shapes.set(`${p}.${name}.bias`, [outF]);
    }
  }
  shapes.set("model.norm.weight", [C]);
  if (!config.tie_word_embeddings) shapes.set("lm_head.weight", [V, C]);
  return shapes;
}

/** Hugging Face's initialization, seeded: N(0, 0.02) matrices and embeddings, norms at one, zero biases. */
export function initLlamaWeights(config: LlamaConfig, seed: number): Map<string, tf.Tensor> {
  const weights = new Map<string, tf.Tensor>();
  for (const [name, shape] of llamaParameterShapes(config)) {
    weights.set(
      name,
      name.endsWith("norm.weight")
        ? tf.ones(shape)
        : name.endsWith(".bias")
        ? tf.zeros(shape)
        : tf.randomNormal(shape, 0, 0.02, "float32", seed + weights.size),
    );
  }
  return weights;
}

/**
 * RoPE's inverse frequencies (one per pair of dimensions) and the factor cos and sin are scaled by,
 * for the config's rope_scaling: none, `linear` (positions interpolated), `llama3` (low frequencies
 * interpolated, high ones kept, a smooth band between) or `yarn` (NTK-by-parts with an attention factor).
 */
export function ropeFrequencies(config: LlamaConfig): { invFreq: number[]; attentionFactor: number } {
  const D = headDim(config);
  const theta = config.rope_theta;
  const invFreq = Array.from({ length: D / 2 }, (_, j) => 1 / theta ** ((2 * j) / D));
  const s = config.rope_scaling;
  const kind = s ? s.rope_type ?? s.type ?? "default" : "default";
  if (!s || kind === "default") return { invFreq, attentionFactor: 1 };
  const factor = s.factor!;
  if (kind === "linear") return { invFreq: invFreq.map((f) => f / factor), attentionFactor: 1 };
  if (kind === "llama3") {
    const orig = s.original_max_position_embeddings!, low = s.low_freq_factor!, high = s.high_freq_factor!;
    return {
      invFreq: invFreq.map((f) => {
        const wavelen = (2 * Math.PI) / f;
        if (wavelen < orig / high) return f; // high frequencies: kept
        if (wavelen > orig / low) return f / factor; // low frequencies: interpolated
        const smooth = (orig / wavelen - low) / (high - low);
        return (1 - smooth) * (f / factor) + smooth * f;
      }),
      attentionFactor: 1,
    };
  }
  // yarn
  const orig = s.original_max_position_embeddings ?? config.max_position_embeddings;
  const mscale = (scale: number, m = 1) => (scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1);
  const m = s.mscale as number | undefined, mAll = s.mscale_all_dim as number | undefined;
  const attentionFactor = s.attention_factor ?? (m && mAll ? mscale(factor, m) / mscale(factor, mAll) : mscale(factor));
  const correctionDim = (rotations: number) => (D * Math.log(orig / (rotations * 2 * Math.PI))) / (2 * Math.log(theta));
  const truncate = s.truncate !== false;
  let low = correctionDim(s.beta_fast ?? 32), high = correctionDim(s.beta_slow ?? 1);
  if (truncate) [low, high] = [Math.floor(low), Math.ceil(high)];
  [low, high] = [Math.max(low, 0), Math.min(high, D - 1)];
  if (low === high) high += 0.001;
  return {
    invFreq: invFreq.map((f, j) => {
      const extrapolation = 1 - Math.min(Math.max((j - low) / (high - low), 0), 1);
      return (f / factor) * (1 - extrapolation) + f * extrapolation;
    }),
    attentionFactor,
  };
}

/** How many activations `#layer` saves for `#layerBackward`. */
const LAYER_SAVED = 16;

/** A layer's keys and values so far: [B, K, P, D] each. */
type Past = { k: tf.Tensor4D; v: tf.Tensor4D };

/** A Llama-family language model: its config and its weights as TF.js variables. */
export class LlamaModel extends CausalLM {
  readonly config: LlamaConfig;
  readonly defaultLoraTargets = ["q_proj", "v_proj"];
  readonly #invFreq: tf.Tensor2D; // [1, D/2]
  readonly #attentionFactor: number;
  /** rotate_half as a matrix: x R = cat(-x2, x1) for x = cat(x1, x2) (a matmul, where slices are slow on wasm). */
  readonly #rotateHalf: tf.Tensor2D; // [D, D]
  /** Each layer's weight names. */
  readonly #layerWeights: string[][];

  /** Takes ownership of `weights` (shapes already checked by the loader). */
  constructor(config: LlamaConfig, weights: Map<string, tf.Tensor>, trainable = true) {
    super(weights, trainable);
    this.config = config;
    const D = headDim(config);
    const { invFreq, attentionFactor } = ropeFrequencies(config);
    this.#invFreq = tf.tensor2d(invFreq, [1, D / 2]);
    this.#attentionFactor = attentionFactor;
    const r = new Float32Array(D * D);
    for (let j = 0; j < D / 2; j++) {
      r[(j + D / 2) * D + j] = -1; // out[j] = -x[j + D/2]
      r[j * D + j + D / 2] = 1; // out[j + D/2] = x[j]
    }
    this.#rotateHalf = tf.tensor2d(r, [D, D]);
    this.#layerWeights = Array.from(
      { length: config.num_hidden_layers },
      (_, i) => [...this.params.keys()].filter((n) => n.startsWith(`model.layers.${i}.`)),
    );
  }

  get contextLength(): number {
    return this.config.max_position_embeddings;
  }

  linearModules(): Map<string, LinearModule> {
    const modules = new Map<string, LinearModule>();
    for (let i = 0; i < this.config.num_hidden_layers; i++) {
      for (const [name, inFeatures, outFeatures] of layerLinears(this.config)) {
        modules.set(`model.layers.${i}.${name}`, { inFeatures, outFeatures, fanInFanOut: false });
      }
    }
    return modules;
  }

  override dispose(): void {
    super.dispose();
    tf.dispose([this.#invFreq, this.#rotateHalf]);
  }

  /** Embeddings, decoder layers, final RMSNorm. Synchronous; call inside `tf.tidy`. */
  forward(input: ForwardInput, withCache = false): ForwardOutput {
    const [B, T] = input.ids.shape;
    const c = this.config;
    const G = c.num_attention_heads / kvHeads(c);
    let x = embed(this.p("model.embed_tokens.weight"), tf.reshape(input.ids, [-1])); // [B*T, C]
    const rotary = this.#rotary(input.positions); // cos, sin: [B, 1, T, D]
    // The G query heads sharing a key/value head attend as one head with G*T rows (see #attention).
    const bias = G > 1 ? tf.tile(input.bias, [1, 1, G, 1]) as tf.Tensor4D : input.bias; // [B, 1, G*T, S]
    const keys: tf.Tensor4D[] = [];
    const values: tf.Tensor4D[] = [];
    const training = !withCache && !input.cache && this.layerOpsApply();

    for (let i = 0; i < c.num_hidden_layers; i++) {
      const p = `model.layers.${i}`;
      // Training and scoring: each layer one op with a hand-written gradient (#layerBackward), which
      // keeps only what that needs. Generation: composed, returning the cache.
      const constants = [rotary.cos, rotary.sin, bias];
      if (training) x = this.#trainableLayer(i, x, constants, { B, T });
      else {
        const past = input.cache ? { k: input.cache.keys[i]!, v: input.cache.values[i]! } : undefined;
        const out = this.#layer(p, x, this.weight, { B, T, constants, past });
        x = out.out;
        keys.push(out.k);
        values.push(out.v);
      }
    }
    const C = c.hidden_size;
    const hidden = tf.reshape(rmsNorm(x, this.p("model.norm.weight"), c.rms_norm_eps).y, [B, T, C]) as tf.Tensor3D;
    const cache: KVCache = { keys, values };
    return withCache ? { hidden, cache } : { hidden };
  }

  /**
   * One decoder layer over rows x [B*T, C]: x1 = x + attention(rmsnorm(x)), out = x1 + mlp(rmsnorm(x1)).
   * `constants` are cos, sin [B, 1, T, D] and the attention bias [B, 1, G*T, S]. With `lows` it also
   * returns what `layerBackward` needs.
   */
  #layer(
    p: string,
    x: tf.Tensor2D,
    w: WeightLookup,
    o: { B: number; T: number; constants: tf.Tensor[]; past?: Past; lows?: Map<string, tf.Tensor2D> },
  ) {
    const [cos, sin, mask] = o.constants as [tf.Tensor, tf.Tensor, tf.Tensor];
    const eps = this.config.rms_norm_eps;
    const norm1 = rmsNorm(x, w(`${p}.input_layernorm.weight`), eps); // [B*T, C]
    const attn = this.#attention(p, norm1.y, w, { ...o, rotary: { cos, sin }, bias: mask });
    const x1 = tf.add(x, attn.out) as tf.Tensor2D; // [B*T, C]
    const norm2 = rmsNorm(x1, w(`${p}.post_attention_layernorm.weight`), eps); // [B*T, C]
    const mlp = this.#mlp(p, norm2.y, w, o.lows);
    return { out: tf.add(x1, mlp.out) as tf.Tensor2D, k: attn.k, v: attn.v, norm1, attn, norm2, mlp }; // [B*T, C]
  }

  /** A layer as one op whose gradient is `layerBackward`: only the trainable weights get one. */
  #trainableLayer(i: number, x: tf.Tensor2D, constants: tf.Tensor[], shape: { B: number; T: number }): tf.Tensor2D {
    const p = `model.layers.${i}`;
    const { names, read } = this.layerInputs(p, this.#layerWeights[i]!);
    let lowNames: string[] = []; // the adapted modules' x A^T, saved in this order
    const op = customOp(([xi, ...ws]) => {
      const w = read(ws);
      const lows = new Map<string, tf.Tensor2D>();
      const l = this.#layer(p, xi as tf.Tensor2D, w, { ...shape, constants, lows });
      lowNames = [...lows.keys()];
      const saved = [
        l.norm1.xhat,
        l.norm1.rstd,
        l.norm1.y,
        l.attn.q,
        l.k,
        l.v,
        l.attn.probs,
        l.attn.merged,
        l.norm2.xhat,
        l.norm2.rstd,
        l.norm2.y,
        l.mlp.gate,
        l.mlp.aux,
        l.mlp.act,
        l.mlp.up,
        l.mlp.m,
      ];
      // The rotary tables are per call: saved with the activations, as the forward pass frees them.
      return { value: l.out, saved: [...saved, ...lows.values(), ...ws, constants[0]!, constants[1]!] };
    }, (dy, saved) => {
      const acts = saved.slice(0, LAYER_SAVED);
      const lows = new Map(lowNames.map((m, j) => [m, saved[LAYER_SAVED + j] as tf.Tensor2D]));
      const rest = saved.slice(LAYER_SAVED + lowNames.length);
      const w = read(rest);
      const rotary = rest.slice(names.length);
      const grads = this.#layerBackward(p, dy as tf.Tensor2D, acts, lows, w, new Set(names), { ...shape, rotary });
      return [grads.dx, ...names.map((name) => grads.weights.get(name)!)];
    });
    return op(x, ...names.map(this.weight)) as tf.Tensor2D;
  }

  /**
   * Gradients of `#layer` given dOut [B*T, C] and what the forward saved (`acts`, the adapted modules'
   * x A^T in `lows`): dx, and the gradient of every weight in `trainable` (no other weight gets one).
   */
  #layerBackward(
    p: string,
    dOut: tf.Tensor2D,
    acts: tf.Tensor[],
    lows: Map<string, tf.Tensor2D>,
    w: WeightLookup,
    trainable: Set<string>,
    o: { B: number; T: number; rotary: tf.Tensor[] },
  ) {
    const [xhat1, rstd1, h1, q, k, v, probs, merged, xhat2, rstd2, h2, gate, aux, act, up, m] = acts as unknown as [
      tf.Tensor2D,
      tf.Tensor2D,
      tf.Tensor2D,
      tf.Tensor4D,
      tf.Tensor4D,
      tf.Tensor4D,
      tf.Tensor4D,
      tf.Tensor2D,
      tf.Tensor2D,
      tf.Tensor2D,
      tf.Tensor2D,
      tf.Tensor2D,
      tf.Tensor2D,
      tf.Tensor2D,
      tf.Tensor2D,
      tf.Tensor2D,
    ];
    const [cos, sin] = o.rotary as [tf.Tensor, tf.Tensor];
    const { B, T } = o;
    const H = this.config.num_attention_heads, K = kvHeads(this.config), D = headDim(this.config);
    const G = H / K;
    const grads = new Map<string, tf.Tensor>();
    const grad = (name: string, value: () => tf.Tensor) => trainable.has(name) && grads.set(name, value());
    /** Gradients of one linear layer: records those of its weights (and adapter) that train; returns dx. */
    const linear = (module: string, dy: tf.Tensor2D, x: tf.Tensor2D): tf.Tensor2D => {
      const low = lows.get(module);
      const [A, B_] = [peftName(module, "A"), peftName(module, "B")];
      const g = linearBackward(dy, x, w(`${module}.weight`), {
        inOut: false,
        want: { weight: trainable.has(`${module}.weight`), bias: trainable.has(`${module}.bias`) },
        lora: low && { a: w(A), b: w(B_), low, scale: this.adapter!.scale },
      });
      if (g.dWeight) grads.set(`${module}.weight`, g.dWeight);
      if (g.dBias) grads.set(`${module}.bias`, g.dBias);
      if (g.dA && g.dB) grads.set(A, g.dA).set(B_, g.dB);
      return g.dx;
    };

    // MLP: out = x1 + down(act(gate(h2)) * up(h2)).
    const dM = linear(`${p}.mlp.down_proj`, dOut, m); // [N, F]
    const dGate = activationBackward(this.config.hidden_act, tf.mul(dM, up), gate, aux) as tf.Tensor2D; // [N, F]
    const dUp = tf.mul(dM, act) as tf.Tensor2D; // [N, F]
    const dH2 = tf.add(linear(`${p}.mlp.gate_proj`, dGate, h2), linear(`${p}.mlp.up_proj`, dUp, h2)) as tf.Tensor2D;
    const norm2 = rmsNormBackward(dH2, xhat2, rstd2, w(`${p}.post_attention_layernorm.weight`));
    grad(`${p}.post_attention_layernorm.weight`, () => norm2.dWeight);
    const dX1 = tf.add(dOut, norm2.dx) as tf.Tensor2D; // [N, C]

    // Attention: x1 = x + o_proj(merge(softmax(q k^T / sqrt(D) + bias) v)), q and k rotated.
    const dMerged = linear(`${p}.self_attn.o_proj`, dX1, merged); // [N, H*D]
    const dContext = tf.reshape(tf.transpose(tf.reshape(dMerged, [B, T, H, D]), [0, 2, 1, 3]), [B, K, G * T, D]);
    const dProbs = tf.matMul(dContext, v, false, true) as tf.Tensor4D; // [B, K, G*T, S]
    const dV = tf.matMul(probs, dContext, true, false) as tf.Tensor4D; // [B, K, S, D]
    const dScores = attentionSoftmaxBackward(probs, dProbs, 1 / Math.sqrt(D)); // [B, K, G*T, S]
    const dQ = tf.reshape(tf.matMul(dScores, k), [B, H, T, D]) as tf.Tensor4D; // [B, H, T, D]
    const dK = tf.matMul(dScores, q, true, false) as tf.Tensor4D; // [B, K, S, D]
    // RoPE: y = x cos + (x R) sin, so dx = dy cos + (dy sin) R^T.
    const unrotate = (dy: tf.Tensor4D) => {
      const back = tf.matMul(tf.reshape(tf.mul(dy, sin), [-1, D]), this.#rotateHalf, false, true);
      return tf.add(tf.mul(dy, cos), tf.reshape(back, dy.shape));
    };
    const rows = (t: tf.Tensor, n: number) => tf.reshape(tf.transpose(t, [0, 2, 1, 3]), [B * T, n * D]) as tf.Tensor2D;
    const dH1 = tf.addN([
      linear(`${p}.self_attn.q_proj`, rows(unrotate(dQ), H), h1),
      linear(`${p}.self_attn.k_proj`, rows(unrotate(dK), K), h1),
      linear(`${p}.self_attn.v_proj`, rows(dV, K), h1),
    ]) as tf.Tensor2D; // [N, C]
    const norm1 = rmsNormBackward(dH1, xhat1, rstd1, w(`${p}.input_layernorm.weight`));
    grad(`${p}.input_layernorm.weight`, () => norm1.dWeight);
    return { dx: tf.add(dX1, norm1.dx) as tf.Tensor2D, weights: grads };
  }

  /** Next-token logits through the LM head (the embedding matrix when tied). */
  logits(hidden: tf.Tensor2D): tf.Tensor2D {
    const head = this.config.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    return tf.matMul(hidden, this.p(head), false, true); // [N, V]
  }

  /** cos and sin of every position's angles, times yarn's attention factor: [B, 1, T, D] each. */
  #rotary(positions: tf.Tensor2D) {
    const [B, T] = positions.shape;
    const angles = tf.matMul(tf.reshape(tf.cast(positions, "float32"), [-1, 1]), this.#invFreq); // [B*T, D/2]
    const both = tf.concat([angles, angles], 1); // [B*T, D]
    const shape = [B, 1, T, headDim(this.config)];
    const scaled = (t: tf.Tensor) => (this.#attentionFactor === 1 ? t : tf.mul(t, this.#attentionFactor));
    return { cos: tf.reshape(scaled(tf.cos(both)), shape), sin: tf.reshape(scaled(tf.sin(both)), shape) };
  }

  /** x cos + rotate_half(x) sin for x [B, n, T, D]. */
  #rope(x: tf.Tensor4D, rotary: { cos: tf.Tensor; sin: tf.Tensor }): tf.Tensor4D {
    const D = x.shape[3];
    const rotated = tf.reshape(tf.matMul(tf.reshape(x, [-1, D]), this.#rotateHalf), x.shape); // [B, n, T, D]
    return tf.add(tf.mul(x, rotary.cos), tf.mul(rotated, rotary.sin)) as tf.Tensor4D;
  }

  /**
   * y = x W^T + b for rows x [N, in]: [N, out], plus the adapter's update when one is active. `lows`
   * receives x A^T [N, r] of an adapted module (what its backward pass needs).
   */
  #linear(w: WeightLookup, module: string, x: tf.Tensor2D, lows?: Map<string, tf.Tensor2D>): tf.Tensor2D {
    const y = tf.fused.matMul({
      a: x,
      b: w(`${module}.weight`) as tf.Tensor2D,
      transposeB: true,
      bias: this.params.has(`${module}.bias`) ? w(`${module}.bias`) : undefined,
    }) as tf.Tensor2D;
    const delta = this.loraUpdate(w, module, x, lows && ((low) => lows.set(module, low)));
    return delta ? tf.add(y, delta) : y;
  }

  /**
   * Grouped-query attention. Query heads h = k G + g share key/value head k (HF's repeat_kv), so
   * [B, H, T, D] reshapes to [B, K, G*T, D] without a copy: each key/value head then serves its G
   * query heads in one matmul, and the keys and values are never repeated.
   */
  #attention(
    prefix: string,
    h: tf.Tensor2D,
    w: WeightLookup,
    o: {
      B: number;
      T: number;
      rotary: { cos: tf.Tensor; sin: tf.Tensor };
      bias: tf.Tensor;
      past?: Past;
      lows?: Map<string, tf.Tensor2D>;
    },
  ) {
    const { B, T } = o;
    const H = this.config.num_attention_heads, K = kvHeads(this.config), D = headDim(this.config);
    const G = H / K;
    const heads = (t: tf.Tensor, n: number) => tf.transpose(tf.reshape(t, [B, T, n, D]), [0, 2, 1, 3]) as tf.Tensor4D;
    const lin = (name: string, x: tf.Tensor2D) => this.#linear(w, `${prefix}.self_attn.${name}`, x, o.lows);
    const q = this.#rope(heads(lin("q_proj", h), H), o.rotary); // [B, H, T, D]
    const kNew = this.#rope(heads(lin("k_proj", h), K), o.rotary); // [B, K, T, D]
    const vNew = heads(lin("v_proj", h), K); // [B, K, T, D]
    const k = o.past ? tf.concat([o.past.k, kNew], 2) as tf.Tensor4D : kNew; // [B, K, S, D]
    const v = o.past ? tf.concat([o.past.v, vNew], 2) as tf.Tensor4D : vNew; // [B, K, S, D]
    const grouped = tf.reshape(q, [B, K, G * T, D]); // [B, K, G*T, D]
    const scores = tf.matMul(grouped, k, false, true) as tf.Tensor4D; // [B, K, G*T, S]
    const probs = attentionSoftmax(scores, o.bias as tf.Tensor4D, 1 / Math.sqrt(D)); // [B, K, G*T, S]
    const context = tf.reshape(tf.matMul(probs, v), [B, H, T, D]); // [B, H, T, D]
    const merged = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [B * T, H * D]) as tf.Tensor2D; // [B*T, H*D]
    return { out: lin("o_proj", merged), k, v, q: grouped, probs, merged }; // out: [B*T, C]
  }

  /** SwiGLU: down(act(gate(x)) * up(x)), with its intermediates. */
  #mlp(prefix: string, x: tf.Tensor2D, w: WeightLookup, lows?: Map<string, tf.Tensor2D>) {
    const lin = (name: string, rows: tf.Tensor2D) => this.#linear(w, `${prefix}.mlp.${name}`, rows, lows);
    const gate = lin("gate_proj", x); // [N, F]
    const { y: act, aux } = activationForward(this.config.hidden_act, gate); // [N, F]
    const up = lin("up_proj", x); // [N, F]
    const m = tf.mul(act, up) as tf.Tensor2D; // [N, F]
    return { out: lin("down_proj", m), gate, aux, act, up, m }; // out: [N, C]
  }
}

/** RMSNorm over the last axis: y = x / sqrt(mean(x^2) + eps) * weight, with what its backward needs. */
function rmsNorm(x: tf.Tensor2D, weight: tf.Tensor, eps: number) {
  const rstd = tf.rsqrt(tf.add(tf.mean(tf.square(x), -1, true), eps)); // [N, 1]
  const xhat = tf.mul(x, rstd) as tf.Tensor2D; // [N, C]
  return { y: tf.mul(xhat, weight) as tf.Tensor2D, xhat, rstd };
}

/** Gradients of RMSNorm: dx = rstd (dxhat - xhat mean(dxhat xhat)) with dxhat = dy weight; dWeight. */
function rmsNormBackward(dy: tf.Tensor2D, xhat: tf.Tensor, rstd: tf.Tensor, weight: tf.Tensor) {
  const dxhat = tf.mul(dy, weight);
  const dx = tf.mul(rstd, tf.sub(dxhat, tf.mul(xhat, tf.mean(tf.mul(dxhat, xhat), -1, true)))) as tf.Tensor2D;
  return { dx, dWeight: sumRows(tf.mul(dy, xhat) as tf.Tensor2D) };
}

/** The Llama family for the registry. */
export const llama: Architecture<LlamaConfig> = {
  modelTypes: ["llama", "qwen2"],
  configSchema: LlamaConfigSchema,
  parameterShapes: llamaParameterShapes,
  initWeights: initLlamaWeights,
  create: (config, weights, trainable) => new LlamaModel(config, weights, trainable),
  size: (config) => ({ layers: config.num_hidden_layers, width: config.hidden_size }),
};
