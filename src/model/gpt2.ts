/**
 * GPT-2 (`model_type: gpt2`) in TensorFlow.js, read top to bottom like nanoGPT's model.py.
 *
 * Notation: B batch, T new tokens in this call, P past tokens in the KV cache,
 * S = P + T keys, C = n_embd, H = n_head, D = C / H, F = MLP width, V = vocab.
 * Weights use Hugging Face names and layouts (Conv1D weights are [in, out]).
 * Dropout is never applied: DPO trains with dropout off, as TRL does by default.
 */
import * as tf from "./tf.ts";
import { type Gpt2Config, innerSize } from "./config.ts";
import { customOp, geluExact, geluTanh, layerNorm } from "./_ops.ts";

/** Keys and values of every layer for the tokens seen so far: [B, H, P, D] each. */
export type KVCache = {
  keys: tf.Tensor4D[];
  values: tf.Tensor4D[];
};

/** The inputs of one forward call, built by `src/model/batch.ts`. */
export interface ForwardInput {
  /** [B, T] token ids (int32). */
  ids: tf.Tensor2D;
  /** [B, T] position ids (int32): left padding shifts them so real tokens start at 0. */
  positions: tf.Tensor2D;
  /** [B, 1, T, S] additive attention bias: 0 where a query may attend a key, a large negative value elsewhere. */
  bias: tf.Tensor4D;
  /** Past keys and values to attend to and extend; absent for a fresh sequence. */
  cache?: KVCache;
}

/** The outputs of one forward call. */
export interface ForwardOutput {
  /** [B, T, C] final hidden states (after ln_f). */
  hidden: tf.Tensor3D;
  /** The cache extended with this call's keys and values, when `withCache` was asked for. */
  cache?: KVCache;
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

/** A GPT-2 language model: its config and its weights as TF.js variables. */
export class Gpt2Model {
  readonly config: Gpt2Config;
  /** Weights by canonical Hugging Face name. */
  readonly params: Map<string, tf.Variable>;

  /** Takes ownership of `weights` (shapes already checked by the loader). */
  constructor(config: Gpt2Config, weights: Map<string, tf.Tensor>, trainable = true) {
    this.config = config;
    this.params = new Map();
    for (const [name, t] of weights) {
      this.params.set(name, tf.variable(t, trainable, undefined, "float32"));
      t.dispose();
    }
  }

  /** The variables a gradient is taken with respect to. */
  trainableVariables(): tf.Variable[] {
    return [...this.params.values()];
  }

  /** Frees every weight. */
  dispose(): void {
    for (const v of this.params.values()) v.dispose();
    this.params.clear();
  }

  private p(name: string): tf.Variable {
    const v = this.params.get(name);
    if (!v) throw new Error(`Cannot run the model: weight '${name}' is missing`);
    return v;
  }

  /** The transformer: embeddings, blocks, final LayerNorm. Synchronous; call inside `tf.tidy`. */
  forward(input: ForwardInput, withCache = false): ForwardOutput {
    const [B, T] = input.ids.shape;
    const C = this.config.n_embd;
    const tok = embed(this.p("transformer.wte.weight"), tf.reshape(input.ids, [-1])); // [B*T, C]
    const pos = embed(this.p("transformer.wpe.weight"), tf.reshape(input.positions, [-1])); // [B*T, C]
    let x = tf.reshape(tf.add(tok, pos), [B, T, C]) as tf.Tensor3D; // [B, T, C]
    const keys: tf.Tensor4D[] = [];
    const values: tf.Tensor4D[] = [];
    for (let i = 0; i < this.config.n_layer; i++) {
      const past = input.cache ? { k: input.cache.keys[i]!, v: input.cache.values[i]! } : undefined;
      const attn = this.attention(i, this.layerNorm(x, `transformer.h.${i}.ln_1`), input.bias, past);
      x = tf.add(x, attn.out); // [B, T, C]
      x = tf.add(x, this.mlp(i, this.layerNorm(x, `transformer.h.${i}.ln_2`))); // [B, T, C]
      keys.push(attn.k);
      values.push(attn.v);
    }
    const hidden = this.layerNorm(x, "transformer.ln_f");
    return withCache ? { hidden, cache: { keys, values } } : { hidden };
  }

  /** Next-token logits for hidden states: [N, C] -> [N, V], through the (tied) LM head. */
  logits(hidden: tf.Tensor2D): tf.Tensor2D {
    const head = this.config.tie_word_embeddings ? "transformer.wte.weight" : "lm_head.weight";
    return tf.matMul(hidden, this.p(head), false, true); // [N, V]
  }

  private layerNorm<R extends tf.Rank>(x: tf.Tensor<R>, prefix: string): tf.Tensor<R> {
    return layerNorm(x, this.p(`${prefix}.weight`), this.p(`${prefix}.bias`), this.config.layer_norm_epsilon);
  }

  /** Conv1D: y = x W + b with W stored [in, out]. */
  private conv1d(x: tf.Tensor3D, prefix: string): tf.Tensor3D {
    const [B, T, inDim] = x.shape;
    const w = this.p(`${prefix}.weight`);
    const y = tf.add(tf.matMul(tf.reshape(x, [B * T, inDim]), w), this.p(`${prefix}.bias`)); // [B*T, out]
    return tf.reshape(y, [B, T, w.shape[1]!]);
  }

  private attention(
    layer: number,
    x: tf.Tensor3D,
    bias: tf.Tensor4D,
    past?: { k: tf.Tensor4D; v: tf.Tensor4D },
  ): { out: tf.Tensor3D; k: tf.Tensor4D; v: tf.Tensor4D } {
    const [B, T, C] = x.shape;
    const H = this.config.n_head;
    const D = C / H;
    const prefix = `transformer.h.${layer}.attn`;
    const qkv = this.conv1d(x, `${prefix}.c_attn`); // [B, T, 3C]
    const heads = (t: tf.Tensor) => tf.transpose(tf.reshape(t, [B, T, H, D]), [0, 2, 1, 3]) as tf.Tensor4D;
    const [q, kNew, vNew] = tf.split(qkv, 3, 2).map(heads) as [tf.Tensor4D, tf.Tensor4D, tf.Tensor4D]; // [B, H, T, D]
    const k = past ? tf.concat([past.k, kNew], 2) : kNew; // [B, H, S, D]
    const v = past ? tf.concat([past.v, vNew], 2) : vNew; // [B, H, S, D]
    let scale = this.config.scale_attn_weights ? 1 / Math.sqrt(D) : 1;
    if (this.config.scale_attn_by_inverse_layer_idx) scale /= layer + 1;
    const scores = tf.add(tf.mul(tf.matMul(q, k, false, true), scale), bias); // [B, H, T, S]
    const y = tf.matMul(tf.softmax(scores), v); // [B, H, T, D]
    const merged = tf.reshape(tf.transpose(y, [0, 2, 1, 3]), [B, T, C]) as tf.Tensor3D; // [B, T, C]
    return { out: this.conv1d(merged, `${prefix}.c_proj`), k, v };
  }

  private mlp(layer: number, x: tf.Tensor3D): tf.Tensor3D {
    const prefix = `transformer.h.${layer}.mlp`;
    const h = activation(this.config.activation_function, this.conv1d(x, `${prefix}.c_fc`)); // [B, T, F]
    return this.conv1d(h, `${prefix}.c_proj`); // [B, T, C]
  }
}

/**
 * Row lookup `table[ids]` whose gradient is built straight from the rows' gradients
 * (UnsortedSegmentSum). tf.gather's own gradient adds an identity transpose of the
 * whole [V, C] table, which on wasm costs more than the lookup's matmul-sized peers.
 */
function embed(table: tf.Tensor2D | tf.Variable, ids: tf.Tensor1D): tf.Tensor2D {
  const rows = table.shape[0]!;
  const op = customOp(
    ([t]) => ({ value: tf.gather(t!, ids), saved: [ids] }),
    (dy, [saved]) => [tf.unsortedSegmentSum(dy, saved as tf.Tensor1D, rows)],
  );
  return op(table) as tf.Tensor2D;
}

/** The activations of Hugging Face's ACT2FN that GPT-2 checkpoints use. */
export function activation<T extends tf.Tensor>(name: Gpt2Config["activation_function"], x: T): T {
  switch (name) {
    case "gelu_new":
    case "gelu_pytorch_tanh":
    case "gelu_fast":
      return geluTanh(x);
    case "gelu":
      return geluExact(x);
    case "relu":
      return tf.relu(x);
    case "silu":
    case "swish":
      return tf.mul(x, tf.sigmoid(x));
    case "quick_gelu":
      return tf.mul(x, tf.sigmoid(tf.mul(x, 1.702)));
  }
}
