/**
 * The architectures by `model_type`. Adding one is one file that exports an `Architecture` (its config
 * schema, weights and model class; see gpt2.ts) and its two lines here.
 */
import type * as tf from "../tf.ts";
import type { Architecture, CausalLM } from "./causal_lm.ts";
import { gpt2, type Gpt2Config } from "./gpt2.ts";
import { llama, type LlamaConfig } from "./llama.ts";

/** Any configuration this project can load. */
export type ModelConfig = Gpt2Config | LlamaConfig;

const ARCHITECTURES: readonly Architecture<ModelConfig>[] = [gpt2, llama] as Architecture<ModelConfig>[];

/** Model types this project can load. */
export const SUPPORTED_MODEL_TYPES: readonly string[] = ARCHITECTURES.flatMap((a) => a.modelTypes);

function architectureOf(config: ModelConfig): Architecture<ModelConfig> {
  const found = ARCHITECTURES.find((a) => a.modelTypes.includes(config.model_type));
  if (!found) throw new Error(`model_type '${config.model_type}' is not supported`);
  return found;
}

/** Parses `config.json` text; errors name the file and every problem found. */
export function parseModelConfig(text: string, path: string): ModelConfig {
  const fail = (problem: string): never => {
    throw new Error(`Cannot load model config '${path}': ${problem}`);
  };
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    fail(`the file is not valid JSON (${(err as Error).message})`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) fail("the file is not a JSON object");
  const modelType = (raw as Record<string, unknown>).model_type;
  const architecture = ARCHITECTURES.find((a) => a.modelTypes.includes(modelType as string));
  if (!architecture) {
    fail(`model_type ${JSON.stringify(modelType)} is not supported (supported: ${SUPPORTED_MODEL_TYPES.join(", ")})`);
  }
  const parsed = architecture!.configSchema.safeParse(raw);
  if (!parsed.success) {
    fail(parsed.error.issues.map((i) => `'${i.path.join(".")}': ${i.message}`).join("; "));
  }
  return parsed.data!;
}

/** The tensor names and shapes a checkpoint of this config must hold. */
export function parameterShapes(config: ModelConfig): Map<string, number[]> {
  return architectureOf(config).parameterShapes(config);
}

/** The architecture's own initialization, seeded. */
export function initWeights(config: ModelConfig, seed: number): Map<string, tf.Tensor> {
  return architectureOf(config).initWeights(config, seed);
}

/** A model of the config's architecture over `weights` (taken over). */
export function createModel(config: ModelConfig, weights: Map<string, tf.Tensor>, trainable = true): CausalLM {
  return architectureOf(config).create(config, weights, trainable);
}

/** One line for logs: architecture, depth, width, vocabulary, context, and the adapter if any. */
export function describeModel(model: CausalLM): string {
  const c = model.config as ModelConfig;
  const { layers, width } = architectureOf(c).size(c);
  const lora = model.adapter ? `, LoRA r=${model.adapter.config.r} on ${model.adapter.modules().length} layers` : "";
  return `${c.model_type}, ${layers} layers, ${width} wide, ${c.vocab_size} tokens, context ${model.contextLength}${lora}`;
}
