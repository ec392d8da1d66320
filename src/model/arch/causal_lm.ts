/**
 * What every architecture shares: the forward contract the scorer, the decoder and the trainer use,
 * weights as TF.js variables under their Hugging Face names, and an optional LoRA adapter on the
 * linear layers (with it, only the adapter trains; disabled, the model is its frozen base).
 */
import * as tf from "../tf.ts";
import type { z } from "zod";
import type { BaseModelConfig } from "./config.ts";
import { type LoraAdapter, peftName } from "./adapter.ts";

/** Keys and values of every layer for the tokens seen so far: [B, KV heads, P, D] each. */
export type KVCache = {
  keys: tf.Tensor4D[];
  values: tf.Tensor4D[];
  /**
   * Set when the tensors have room for more keys ([B, KV heads, capacity, D]): the P positions in use. A
   * step then writes its keys and values in place and returns the same tensors, P + 1 in use (only
   * where `CausalLM.decodesInPlace()` says so).
   */
  length?: number;
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
  /** [B, T, C] final hidden states (after the final norm). */
  hidden: tf.Tensor3D;
  /** The cache extended with this call's keys and values, when `withCache` was asked for. */
  cache?: KVCache;
}

/** A linear layer LoRA can adapt, by module name (`model.layers.0.self_attn.q_proj`). */
export interface LinearModule {
  inFeatures: number;
  outFeatures: number;
  /** The weight is stored [in, out] (GPT-2's Conv1D, PEFT's `fan_in_fan_out`) rather than [out, in] (nn.Linear). */
  fanInFanOut: boolean;
}

/** A weight by name as a layer reads it: the model's own, or its stand-in inside a recomputed op. */
export type WeightLookup = (name: string) => tf.Tensor;

/** A causal language model: its config, its weights, and an optional LoRA adapter. */
export abstract class CausalLM {
  abstract readonly config: BaseModelConfig;
  /** What PEFT adapts when `target_modules` is not given (its per-architecture default). */
  abstract readonly defaultLoraTargets: readonly string[];
  /** Weights by canonical Hugging Face name. */
  readonly params: Map<string, tf.Variable>;
  /** Attached by `attachAdapter` (lora.ts); while attached and enabled it adds its low-rank updates. */
  adapter?: LoraAdapter;

  /** Takes ownership of `weights` (shapes already checked by the loader). */
  constructor(weights: Map<string, tf.Tensor>, trainable: boolean) {
    this.params = new Map();
    for (const [name, t] of weights) {
      this.params.set(name, tf.variable(t, trainable, undefined, "float32"));
      t.dispose();
    }
  }

  /** The longest sequence the model's positions allow. */
  abstract get contextLength(): number;

  /** The linear layers, by module name, with their sizes and weight layout. */
  abstract linearModules(): Map<string, LinearModule>;

  /**
   * The transformer up to the final norm. Synchronous; call inside `tf.tidy`. With `withCache` it
   * also returns every layer's keys and values (generation).
   */
  abstract forward(input: ForwardInput, withCache?: boolean): ForwardOutput;

  /**
   * Whether a decoding step (one new token per row) accepts a cache with room (`KVCache.length`) and
   * writes into it in place, instead of returning a new, longer cache.
   */
  decodesInPlace(): boolean {
    return false;
  }

  /** Next-token logits for hidden states: [N, C] -> [N, V]. */
  abstract logits(hidden: tf.Tensor2D): tf.Tensor2D;

  /** What a gradient is taken with respect to, by name: the adapter's weights when one is attached. */
  trainableParams(): Map<string, tf.Variable> {
    return this.adapter?.params ?? this.params;
  }

  /** The variables a gradient is taken with respect to. */
  trainableVariables(): tf.Variable[] {
    return [...this.trainableParams().values()];
  }

  /** Frees every weight, the adapter's included. */
  dispose(): void {
    for (const v of this.params.values()) v.dispose();
    this.params.clear();
    this.adapter?.dispose();
    this.adapter = undefined;
  }

  protected p(name: string): tf.Variable {
    const v = this.params.get(name);
    if (!v) throw new Error(`Cannot run the model: weight '${name}' is missing`);
    return v;
  }

  /** A base weight or an adapter matrix (PEFT name) by name. */
  protected weight: WeightLookup = (name) => this.params.get(name) ?? this.adapter?.params.get(name) ?? this.p(name);

  /**
   * The adapter's update for `module` on rows x [N, in], reading A and B through `w`; null where it adds
   * none. `keep` receives x A^T for a hand-written backward pass (see `LoraAdapter.update`).
   */
  protected loraUpdate(
    w: WeightLookup,
    module: string,
    x: tf.Tensor2D,
    keep?: (low: tf.Tensor2D) => void,
  ): tf.Tensor2D | null {
    const adapter = this.adapter;
    if (!adapter?.enabled || !adapter.adapts(module)) return null;
    return adapter.update(x, w(peftName(module, "A")), w(peftName(module, "B")), keep);
  }

  /**
   * Whether training layers run as single ops with hand-written gradients: not while the adapter draws
   * dropout masks (those ops do not differentiate dropout; composed ops do, through TF.js's tape).
   */
  protected layerOpsApply(): boolean {
    return !this.adapter?.dropoutActive;
  }

  /**
   * What a layer op takes as inputs: of the base weights `names` and the adapter's matrices under
   * `prefix`, those that train (frozen ones are read from the model, and get no gradient); `read`
   * turns the op's copies of them into the lookup its layer uses.
   */
  protected layerInputs(prefix: string, names: string[]) {
    const adapted = this.adapter?.enabled
      ? [...this.adapter.params.keys()].filter((n) => n.startsWith(`base_model.model.${prefix}.`))
      : [];
    const trainable = [...names, ...adapted].filter((n) => (this.weight(n) as tf.Variable).trainable);
    const slot = new Map(trainable.map((n, i) => [n, i]));
    const read = (xs: tf.Tensor[]): WeightLookup => (name) => xs[slot.get(name) ?? -1] ?? this.weight(name);
    return { names: trainable, read };
  }
}

/**
 * An architecture as the registry (`registry.ts`) knows it: the `model_type` values it loads, its
 * config's schema, its weights' names and shapes, its initialization, and its model class.
 */
export interface Architecture<C extends BaseModelConfig> {
  readonly modelTypes: readonly string[];
  /** Validates `config.json`; unknown keys are kept so that saving round-trips them. */
  readonly configSchema: z.ZodType<C>;
  /** The tensor names and shapes a checkpoint of this config must hold. */
  parameterShapes(config: C): Map<string, number[]>;
  /** The architecture's own initialization, seeded. */
  initWeights(config: C, seed: number): Map<string, tf.Tensor>;
  /** A model over `weights` (taken over). */
  create(config: C, weights: Map<string, tf.Tensor>, trainable: boolean): CausalLM;
  /** Depth and width, for logs. */
  size(config: C): { layers: number; width: number };
}
