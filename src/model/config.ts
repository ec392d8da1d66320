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
export const SUPPORTED_MODEL_TYPES = ["gpt2"] as const;

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

/** Parses `config.json` text; errors name the file and every problem found. */
export function parseModelConfig(text: string, path: string): Gpt2Config {
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
  const parsed = Gpt2ConfigSchema.safeParse(raw);
  if (!parsed.success) {
    fail(parsed.error.issues.map((i) => `'${i.path.join(".")}': ${i.message}`).join("; "));
  }
  return parsed.data!;
}

/** The MLP width of a configuration. */
export function innerSize(config: Gpt2Config): number {
  return config.n_inner ?? 4 * config.n_embd;
}

/** The first end-of-sequence id named in the config, if any. */
export function configEosId(config: Gpt2Config): number | undefined {
  const e = config.eos_token_id;
  return Array.isArray(e) ? e[0] : e ?? undefined;
}
