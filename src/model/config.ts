/** The model configuration (`config.json` in Hugging Face layout), validated with zod. */
import { z } from "zod";

/** Activations GPT-2 checkpoints name in `activation_function` (HF's ACT2FN keys). */
export const ACTIVATIONS = [
  "gelu_new",
  "gelu_pytorch_tanh",
  "gelu_fast",
  "gelu",
  "relu",
  "silu",
  "swish",
  "quick_gelu",
] as const;

/** Model types this project can load. */
export const SUPPORTED_MODEL_TYPES = ["gpt2", "llama", "qwen2"] as const;

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
  bos_token_id: z.number().int().nonnegative().nullish(),
  eos_token_id: z.union([z.number().int().nonnegative(), z.array(z.number().int().nonnegative())]).nullish(),
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
  bos_token_id: z.number().int().nonnegative().nullish(),
  eos_token_id: z.union([z.number().int().nonnegative(), z.array(z.number().int().nonnegative())]).nullish(),
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

/** Any configuration this project can load. */
export type ModelConfig = Gpt2Config | LlamaConfig;

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
  if (!(SUPPORTED_MODEL_TYPES as readonly unknown[]).includes(modelType)) {
    fail(`model_type ${JSON.stringify(modelType)} is not supported (supported: ${SUPPORTED_MODEL_TYPES.join(", ")})`);
  }
  const parsed = (modelType === "gpt2" ? Gpt2ConfigSchema : LlamaConfigSchema).safeParse(raw);
  if (!parsed.success) {
    fail(parsed.error.issues.map((i) => `'${i.path.join(".")}': ${i.message}`).join("; "));
  }
  return parsed.data!;
}

/** The MLP width of a configuration. */
export function innerSize(config: Gpt2Config): number {
  return config.n_inner ?? 4 * config.n_embd;
}

/** The longest sequence a configuration's positions allow. */
export function contextLength(config: ModelConfig): number {
  return config.model_type === "gpt2" ? config.n_positions : config.max_position_embeddings;
}

/** The first end-of-sequence id named in the config, if any. */
export function configEosId(config: ModelConfig): number | undefined {
  const e = config.eos_token_id;
  return Array.isArray(e) ? e[0] : e ?? undefined;
}
