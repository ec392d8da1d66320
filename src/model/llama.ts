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
import * as tf from "./tf.ts";
import type { LlamaConfig } from "./config.ts";
import { activationForward, embed } from "./_ops.ts";
import {
  CausalLM,
  type ForwardInput,
  type ForwardOutput,
  type KVCache,
  type LinearModule,
  type WeightLookup,
} from "./causal_lm.ts";

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

/** A layer's keys and values so far: [B, K, P, D] each. */
type Past = { k: tf.Tensor4D; v: tf.Tensor4D };

/** A Llama-family language model: its config and its weights as TF.js variables. */
export class LlamaModel extends CausalLM {
  readonly config: LlamaConfig;
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
    const training = !withCache && !input.cache && this.canRecompute();
    for (let i = 0; i < c.num_hidden_layers; i++) {
      const p = `model.layers.${i}`;
      const layer = (xi: tf.Tensor2D, w: WeightLookup, [cos, sin, mask]: tf.Tensor[], past?: Past) => {
        const h = rmsNorm(xi, w(`${p}.input_layernorm.weight`), c.rms_norm_eps); // [B*T, C]
        const attn = this.#attention(p, h, w, { B, T, rotary: { cos: cos!, sin: sin! }, bias: mask!, past });
        const x1 = tf.add(xi, attn.out) as tf.Tensor2D; // [B*T, C]
        const h2 = rmsNorm(x1, w(`${p}.post_attention_layernorm.weight`), c.rms_norm_eps); // [B*T, C]
        return { out: tf.add(x1, this.#mlp(p, h2, w)) as tf.Tensor2D, k: attn.k, v: attn.v }; // [B*T, C]
      };
      // Training and scoring: each layer one op, recomputed in the backward pass, so that its
      // intermediates do not pile up until the pass ends. Generation: composed, returning the cache.
      const constants = [rotary.cos, rotary.sin, bias];
      if (training) {
        x = this.checkpointed(x, p, this.#layerWeights[i]!, constants, (xi, w, cs) => layer(xi, w, cs).out);
      } else {
        const past = input.cache ? { k: input.cache.keys[i]!, v: input.cache.values[i]! } : undefined;
        const out = layer(x, this.weight, constants, past);
        x = out.out;
        keys.push(out.k);
        values.push(out.v);
      }
    }
    const C = c.hidden_size;
    const hidden = tf.reshape(rmsNorm(x, this.p("model.norm.weight"), c.rms_norm_eps), [B, T, C]) as tf.Tensor3D;
    const cache: KVCache = { keys, values };
    return withCache ? { hidden, cache } : { hidden };
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

  /** y = x W^T + b for rows x [N, in]: [N, out], plus the adapter's update when one is active. */
  #linear(w: WeightLookup, module: string, x: tf.Tensor2D): tf.Tensor2D {
    const y = tf.fused.matMul({
      a: x,
      b: w(`${module}.weight`) as tf.Tensor2D,
      transposeB: true,
      bias: this.params.has(`${module}.bias`) ? w(`${module}.bias`) : undefined,
    }) as tf.Tensor2D;
    const delta = this.loraUpdate(w, module, x);
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
    },
  ) {
    const { B, T } = o;
    const H = this.config.num_attention_heads, K = kvHeads(this.config), D = headDim(this.config);
    const G = H / K;
    const heads = (t: tf.Tensor, n: number) => tf.transpose(tf.reshape(t, [B, T, n, D]), [0, 2, 1, 3]) as tf.Tensor4D;
    const q = this.#rope(heads(this.#linear(w, `${prefix}.self_attn.q_proj`, h), H), o.rotary); // [B, H, T, D]
    const kNew = this.#rope(heads(this.#linear(w, `${prefix}.self_attn.k_proj`, h), K), o.rotary); // [B, K, T, D]
    const vNew = heads(this.#linear(w, `${prefix}.self_attn.v_proj`, h), K); // [B, K, T, D]
    const k = o.past ? tf.concat([o.past.k, kNew], 2) as tf.Tensor4D : kNew; // [B, K, S, D]
    const v = o.past ? tf.concat([o.past.v, vNew], 2) as tf.Tensor4D : vNew; // [B, K, S, D]
    const grouped = tf.reshape(q, [B, K, G * T, D]); // [B, K, G*T, D]
    const scores = tf.add(tf.mul(tf.matMul(grouped, k, false, true), 1 / Math.sqrt(D)), o.bias); // [B, K, G*T, S]
    const context = tf.reshape(tf.matMul(tf.softmax(scores), v), [B, H, T, D]); // [B, H, T, D]
    const merged = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [B * T, H * D]) as tf.Tensor2D; // [B*T, H*D]
    return { out: this.#linear(w, `${prefix}.self_attn.o_proj`, merged), k, v }; // [B*T, C]
  }

  /** SwiGLU: down(act(gate(x)) * up(x)). */
  #mlp(prefix: string, x: tf.Tensor2D, w: WeightLookup): tf.Tensor2D {
    const gate = activationForward(this.config.hidden_act, this.#linear(w, `${prefix}.mlp.gate_proj`, x)).y; // [N, F]
    const up = this.#linear(w, `${prefix}.mlp.up_proj`, x); // [N, F]
    return this.#linear(w, `${prefix}.mlp.down_proj`, tf.mul(gate, up) as tf.Tensor2D); // [N, C]
  }
}

/** RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * weight. */
function rmsNorm(x: tf.Tensor2D, weight: tf.Tensor, eps: number): tf.Tensor2D {
  const rstd = tf.rsqrt(tf.add(tf.mean(tf.square(x), -1, true), eps)); // [N, 1]
  return tf.mul(tf.mul(x, rstd), weight) as tf.Tensor2D;
}
