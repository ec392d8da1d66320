/** DPO training configuration: one zod schema, TRL's names, defaults and cross-field rules. */
import { z } from "zod";
import { closest } from "../util/names.ts";
import { LOSS_TYPES } from "./losses.ts";

/** The DPO settings, as in TRL's DPOConfig where a TRL name exists. */
export const DpoConfigSchema = z.object({
  beta: z.number().positive().default(0.1).describe("strength of the implicit KL constraint"),
  loss_type: z.array(z.enum(LOSS_TYPES)).min(1).default(["sigmoid"]).describe("one or several losses, summed"),
  loss_weights: z.array(z.number().nonnegative()).optional().describe("a weight per loss type (default 1 each)"),
  label_smoothing: z.number().min(0).lt(0.5).default(0).describe("assumed label noise ε (cDPO, robust)"),
  length_normalize: z.boolean().default(false).describe("compare per-token log-probs (always on for ipo)"),
  optimizer: z.enum(["adamw", "sgd"]).default("adamw"),
  learning_rate: z.number().positive().default(1e-6),
  weight_decay: z.number().nonnegative().default(0),
  lr_scheduler_type: z.enum(["constant", "linear", "cosine", "inverse_sqrt"]).default("linear"),
  warmup_steps: z.number().int().nonnegative().default(0),
  max_steps: z.number().int().positive().optional().describe("optimizer steps; default: num_train_epochs of the data"),
  num_train_epochs: z.number().positive().default(1),
  per_device_train_batch_size: z.number().int().positive().default(8).describe("pairs per micro-batch"),
  gradient_accumulation_steps: z.number().int().positive().default(1),
  max_grad_norm: z.number().positive().default(1.0),
  max_length: z.number().int().positive().optional().describe(
    "longest prompt + completion; default the model's context",
  ),
  seed: z.number().int().nonnegative().default(42),
  desirable_weight: z.number().positive().default(1).describe("KTO: weight of desirable examples"),
  undesirable_weight: z.number().positive().default(1).describe("KTO: weight of undesirable examples"),
  precompute_ref_log_probs: z.boolean().default(true).describe("score each pair under the reference once"),
  sync_ref_model: z.boolean().default(false).describe("TR-DPO: mix the policy into the reference"),
  ref_model_mixup_alpha: z.number().min(0).max(1).default(0.6),
  ref_model_sync_steps: z.number().int().positive().default(512),
  ref_refresh_steps: z.number().int().positive().optional().describe(
    "iterative DPO: copy the policy into the reference every N optimizer steps",
  ),
  disable_dropout: z.boolean().default(true).describe("train without dropout (the adapter's lora_dropout included)"),
  use_peft: z.boolean().default(false).describe(
    "train a LoRA adapter on a frozen base; the reference is the base with the adapter disabled",
  ),
  lora_r: z.number().int().positive().default(16).describe("LoRA rank"),
  lora_alpha: z.number().positive().default(32).describe("LoRA scale numerator: updates are scaled by alpha / r"),
  lora_dropout: z.number().min(0).lt(1).default(0.05),
  lora_target_modules: z.union([z.string(), z.array(z.string()).min(1)]).optional().describe(
    "layers to adapt: names (a dotted suffix matches), a regex, or 'all-linear'; default PEFT's per model type",
  ),
  use_rslora: z.boolean().default(false).describe("scale updates by alpha / sqrt(r)"),
}).superRefine((c, ctx) => {
  if (c.use_peft && (c.sync_ref_model || c.ref_refresh_steps !== undefined)) {
    ctx.addIssue({
      code: "custom",
      path: [c.sync_ref_model ? "sync_ref_model" : "ref_refresh_steps"],
      message: "with 'use_peft' the reference is the frozen base model and cannot be refreshed; " +
        "turn off 'sync_ref_model' and 'ref_refresh_steps'",
    });
  }
  if (c.loss_weights && c.loss_weights.length !== c.loss_type.length) {
    ctx.addIssue({
      code: "custom",
      path: ["loss_weights"],
      message:
        `'loss_weights' needs one weight per loss type (${c.loss_type.length}): current length is ${c.loss_weights.length}`,
    });
  }
  if (c.sync_ref_model && c.ref_refresh_steps !== undefined) {
    ctx.addIssue({
      code: "custom",
      path: ["ref_refresh_steps"],
      message: "choose one reference schedule: 'sync_ref_model' (soft mix) or 'ref_refresh_steps' (hard copy)",
    });
  }
  if (c.label_smoothing > 0 && !c.loss_type.some((t) => t === "sigmoid" || t === "robust")) {
    ctx.addIssue({
      code: "custom",
      path: ["label_smoothing"],
      message: `'label_smoothing' only applies to the sigmoid and robust losses: loss_type is ${c.loss_type.join(",")}`,
    });
  }
});

/**
 * Where online training's defaults differ from TRL's (offline) ones: the learning rate decays as 1/√step
 * after a warmup of 8 steps (also the decay's timescale), which needs no planned end, which an online run
 * has not. Measured against a constant rate by `bench:learning` (docs/benchmarks.md, "Learning"): it halves
 * the scatter between successive versions, so that the promotion gate passes nearly every candidate.
 */
export const ONLINE_DPO_DEFAULTS = {
  lr_scheduler_type: "inverse_sqrt",
  warmup_steps: 8,
} as const satisfies DpoSettings;

/** A validated DPO configuration. */
export type DpoConfig = z.infer<typeof DpoConfigSchema>;

/** Some DPO settings by TRL name, as given (defaults and rules across settings applied later, by `parseDpoConfig`). */
export type DpoSettings = Partial<z.input<typeof DpoConfigSchema>>;

/**
 * Some DPO settings, each checked on its own: a name that is no setting (with the closest one), a value its
 * setting refuses. What crosses into the trainer's Web Worker; `parseDpoConfig` then checks them together.
 */
export const DpoSettingsSchema = z.record(z.string(), z.unknown()).superRefine((given, ctx) => {
  const shape = DpoConfigSchema.shape as Record<string, z.ZodType>;
  for (const [key, value] of Object.entries(given)) {
    const setting = shape[key];
    if (!setting) {
      const near = closest(key, Object.keys(shape));
      ctx.addIssue({
        code: "custom",
        path: [key],
        message: `unknown setting${near ? ` (did you mean '${near}'?)` : ""}`,
      });
      continue;
    }
    for (const issue of setting.safeParse(value).error?.issues ?? []) {
      ctx.addIssue({ code: "custom", path: [key, ...issue.path], message: issue.message });
    }
  }
}) as unknown as z.ZodType<DpoSettings>;

/** Validates a DPO configuration; every problem is named in one error. */
export function parseDpoConfig(raw: unknown, origin = "DPO config"): DpoConfig {
  // A mistyped name ("betta") would otherwise be dropped and its default trained with, silently.
  const parsed = DpoConfigSchema.strict().safeParse(raw);
  if (!parsed.success) {
    const known = Object.keys(DpoConfigSchema.shape);
    const problems = parsed.error.issues.map((i) => {
      if (i.code !== "unrecognized_keys") return `'${i.path.join(".")}': ${i.message}`;
      return i.keys.map((key) => {
        const near = closest(key, known);
        return `unknown setting '${key}'${near ? ` (did you mean '${near}'?)` : ""}`;
      }).join("; ");
    }).join("; ");
    throw new Error(`Cannot use ${origin}: ${problems}`);
  }
  return parsed.data;
}
