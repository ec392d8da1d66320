/**
 * A LoRA adapter as a model holds it: PEFT's adapter config, its tensor names, and the low-rank update
 * it adds to a linear layer. Loading, saving, targeting and merging are in `lora.ts`.
 */
import * as tf from "../tf.ts";
import { z } from "zod";

/** `adapter_config.json` as PEFT writes it for LoRA; keys this project does not use are kept for saving. */
export const LoraConfigSchema = z.looseObject({
  peft_type: z.literal("LORA").default("LORA"),
  task_type: z.string().nullish(),
  r: z.number().int().positive().default(8),
  lora_alpha: z.number().positive().default(8),
  lora_dropout: z.number().min(0).lt(1).default(0),
  target_modules: z.union([z.string(), z.array(z.string()).min(1)]).nullish().describe(
    "module names (a name matches itself or a dotted suffix), a regex matched in full, or 'all-linear'",
  ),
  bias: z.literal("none").default("none"),
  fan_in_fan_out: z.boolean().default(false),
  use_rslora: z.boolean().default(false).describe("scale by lora_alpha / sqrt(r) instead of lora_alpha / r"),
  use_dora: z.literal(false).optional(),
  modules_to_save: z.null().optional(),
  layers_to_transform: z.null().optional(),
  rank_pattern: z.record(z.string(), z.never()).optional(),
  alpha_pattern: z.record(z.string(), z.never()).optional(),
  base_model_name_or_path: z.string().nullish(),
  init_lora_weights: z.boolean().default(true),
});

/** A validated LoRA configuration. */
export type LoraConfig = z.infer<typeof LoraConfigSchema>;

/** One adapted layer's matrices. */
interface LoraPair {
  a: tf.Variable; // [r, in]
  b: tf.Variable; // [out, r]
}

/** PEFT's tensor names for a module's matrices. */
export function peftName(module: string, which: "A" | "B"): string {
  return `base_model.model.${module}.lora_${which}.weight`;
}

/** A LoRA adapter attached to one model. */
export class LoraAdapter {
  readonly config: LoraConfig;
  /** The update's scale: lora_alpha / r (or / sqrt(r) with use_rslora). */
  readonly scale: number;
  /** Variables by PEFT tensor name. */
  readonly params = new Map<string, tf.Variable>();
  /** Off: the model is its base (the DPO reference). */
  enabled = true;
  /** On: lora_dropout applies to the adapter's input (training with dropout). */
  training = false;
  #modules = new Map<string, LoraPair>();
  #dropoutSeed: number;

  /** Takes ownership of `weights` ([A, B] per module name). */
  constructor(config: LoraConfig, weights: Map<string, [tf.Tensor, tf.Tensor]>, seed = 0) {
    this.config = config;
    this.scale = config.use_rslora ? config.lora_alpha / Math.sqrt(config.r) : config.lora_alpha / config.r;
    this.#dropoutSeed = seed;
    for (const [module, [a, b]] of weights) {
      const pair = { a: tf.variable(a, true, undefined, "float32"), b: tf.variable(b, true, undefined, "float32") };
      tf.dispose([a, b]);
      this.#modules.set(module, pair);
      this.params.set(peftName(module, "A"), pair.a).set(peftName(module, "B"), pair.b);
    }
  }

  /** The adapted module names. */
  modules(): string[] {
    return [...this.#modules.keys()];
  }

  /** Whether `module` is adapted. */
  adapts(module: string): boolean {
    return this.#modules.has(module);
  }

  /** True when the forward pass draws dropout masks (not deterministic: it cannot be recomputed). */
  get dropoutActive(): boolean {
    return this.training && this.config.lora_dropout > 0;
  }

  /**
   * (dropout(x) A^T B^T) * scale for rows x [N, in], given a module's A [r, in] and B [out, r]; `keep`
   * receives dropout(x) A^T [N, r], which a hand-written backward pass saves.
   */
  update(x: tf.Tensor2D, a: tf.Tensor, b: tf.Tensor, keep?: (low: tf.Tensor2D) => void): tf.Tensor2D {
    const rate = this.config.lora_dropout;
    const input = this.training && rate > 0 ? tf.dropout(x, rate, undefined, this.#dropoutSeed++) : x;
    const low = tf.matMul(input, a as tf.Tensor2D, false, true) as tf.Tensor2D; // [N, r]
    keep?.(low);
    return tf.mul(tf.matMul(low, b as tf.Tensor2D, false, true), this.scale); // [N, out]
  }

  /** The update to a module's base weight, in the base's layout: scale * B A, transposed for [in, out]. */
  weightDelta(module: string, fanInFanOut: boolean): tf.Tensor2D {
    const m = this.#modules.get(module)!;
    const product = fanInFanOut ? tf.matMul(m.a, m.b, true, true) : tf.matMul(m.b, m.a); // (B A)^T [in, out] or B A
    return tf.mul(product, this.scale);
  }

  /** Frees the adapter's weights. */
  dispose(): void {
    for (const v of this.params.values()) v.dispose();
    this.params.clear();
    this.#modules.clear();
  }
}
