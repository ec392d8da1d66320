/**
 * What every model configuration (`config.json` in Hugging Face layout) shares. Each architecture's
 * file holds its own zod schema; `registry.ts` picks one by `model_type`.
 */
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

/** One of the activations above. */
export type Activation = (typeof ACTIVATIONS)[number];

/** A config's single token id (`bos_token_id`). */
export const TokenIdSchema = z.number().int().nonnegative().nullish();

/** A config's token id or ids (`eos_token_id` may list several). */
export const TokenIdsSchema = z.union([z.number().int().nonnegative(), z.array(z.number().int().nonnegative())])
  .nullish();

/** The keys every architecture's config has. */
export interface BaseModelConfig {
  model_type: string;
  vocab_size: number;
  bos_token_id?: number | null;
  eos_token_id?: number | number[] | null;
  tie_word_embeddings: boolean;
}

/** The first end-of-sequence id named in the config, if any. */
export function configEosId(config: BaseModelConfig): number | undefined {
  const e = config.eos_token_id;
  return Array.isArray(e) ? e[0] : e ?? undefined;
}
