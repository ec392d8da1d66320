/** The architectures by `model_type`: one place that maps a config to its weights' shapes and its model class. */
import type * as tf from "./tf.ts";
import type { ModelConfig } from "./config.ts";
import type { CausalLM } from "./causal_lm.ts";
import { Gpt2Model, gpt2ParameterShapes, initGpt2Weights } from "./gpt2.ts";
import { initLlamaWeights, LlamaModel, llamaParameterShapes } from "./llama.ts";

/** The tensor names and shapes a checkpoint of this config must hold. */
export function parameterShapes(config: ModelConfig): Map<string, number[]> {
  return config.model_type === "gpt2" ? gpt2ParameterShapes(config) : llamaParameterShapes(config);
}

/** The architecture's own initialization, seeded. */
export function initWeights(config: ModelConfig, seed: number): Map<string, tf.Tensor> {
  return config.model_type === "gpt2" ? initGpt2Weights(config, seed) : initLlamaWeights(config, seed);
}

/** A model of the config's architecture over `weights` (taken over). */
export function createModel(config: ModelConfig, weights: Map<string, tf.Tensor>, trainable = true): CausalLM {
  return config.model_type === "gpt2"
    ? new Gpt2Model(config, weights, trainable)
    : new LlamaModel(config, weights, trainable);
}

/** One line for logs: architecture, depth, width, vocabulary, context, and the adapter if any. */
export function describeModel(model: CausalLM): string {
  const c = model.config;
  const [layers, width] = c.model_type === "gpt2" ? [c.n_layer, c.n_embd] : [c.num_hidden_layers, c.hidden_size];
  const lora = model.adapter ? `, LoRA r=${model.adapter.config.r} on ${model.adapter.modules().length} layers` : "";
  return `${c.model_type}, ${layers} layers, ${width} wide, ${c.vocab_size} tokens, context ${model.contextLength}${lora}`;
}
