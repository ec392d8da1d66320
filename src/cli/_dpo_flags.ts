/** The DPO settings as command-line flags, shared by `train` (offline) and `worker` (online). */
import { z } from "zod";
import type { DpoConfigSchema, DpoSettings } from "../dpo/config.ts";
import type { Option, Options } from "./_options.ts";

/** Flags that set a config field, with TRL's field name and how the text is read. */
export const CONFIG_FLAGS: Record<string, { field: keyof z.input<typeof DpoConfigSchema>; kind: Kind; help: string }> =
  {
    "loss-type": { field: "loss_type", kind: "list", help: "T[,T...]  sigmoid|ipo|hinge|robust|sft (default sigmoid)" },
    "loss-weights": { field: "loss_weights", kind: "numbers", help: "W[,W...]  one weight per loss type" },
    beta: { field: "beta", kind: "number", help: "B  (default 0.1)" },
    "label-smoothing": { field: "label_smoothing", kind: "number", help: "E  cDPO / robust label noise (default 0)" },
    "length-normalize": { field: "length_normalize", kind: "boolean", help: "   compare per-token log-probs" },
    optimizer: { field: "optimizer", kind: "string", help: "adamw|sgd  (default adamw)" },
    "learning-rate": { field: "learning_rate", kind: "number", help: "LR  (default 1e-6)" },
    "weight-decay": { field: "weight_decay", kind: "number", help: "WD  (default 0)" },
    "lr-scheduler": { field: "lr_scheduler_type", kind: "string", help: "constant|linear|cosine  (default linear)" },
    "warmup-steps": { field: "warmup_steps", kind: "number", help: "N  (default 0)" },
    "max-steps": { field: "max_steps", kind: "number", help: "N  optimizer steps (default: --num-epochs of the data)" },
    "num-epochs": { field: "num_train_epochs", kind: "number", help: "E  (default 1)" },
    "batch-size": {
      field: "per_device_train_batch_size",
      kind: "number",
      help: "N  pairs per micro-batch (default 8)",
    },
    "gradient-accumulation-steps": { field: "gradient_accumulation_steps", kind: "number", help: "N  (default 1)" },
    "max-grad-norm": { field: "max_grad_norm", kind: "number", help: "G  (default 1.0)" },
    "max-length": {
      field: "max_length",
      kind: "number",
      help: "N  longest prompt + completion (default: the context)",
    },
    seed: { field: "seed", kind: "number", help: "S  (default 42)" },
    "ref-refresh-steps": {
      field: "ref_refresh_steps",
      kind: "number",
      help: "N  copy the policy into the reference every N steps",
    },
    "sync-ref-model": { field: "sync_ref_model", kind: "boolean", help: "   TR-DPO soft reference updates" },
    "ref-model-mixup-alpha": { field: "ref_model_mixup_alpha", kind: "number", help: "A  (default 0.6)" },
    "ref-model-sync-steps": { field: "ref_model_sync_steps", kind: "number", help: "N  (default 512)" },
    "desirable-weight": {
      field: "desirable_weight",
      kind: "number",
      help: "W  KTO weight of desirable examples (default 1)",
    },
    "undesirable-weight": {
      field: "undesirable_weight",
      kind: "number",
      help: "W  KTO weight of undesirable examples (default 1)",
    },
    "use-peft": {
      field: "use_peft",
      kind: "boolean",
      help: "   train a LoRA adapter; the frozen base is the reference",
    },
    "lora-r": { field: "lora_r", kind: "number", help: "R  LoRA rank (default 16)" },
    "lora-alpha": { field: "lora_alpha", kind: "number", help: "A  updates scaled by A / R (default 32)" },
    "lora-dropout": {
      field: "lora_dropout",
      kind: "number",
      help: "P  (default 0.05; off unless --no-disable-dropout)",
    },
    "lora-target-modules": {
      field: "lora_target_modules",
      kind: "list",
      help: "M[,M...]  layers to adapt, or all-linear (default q_proj,v_proj; c_attn for gpt2)",
    },
    "no-disable-dropout": { field: "disable_dropout", kind: "negated", help: "   train with dropout (lora_dropout)" },
    "no-precompute-ref-log-probs": {
      field: "precompute_ref_log_probs",
      kind: "negated",
      help: "   score the reference every step instead of once per pair",
    },
  };

export type Kind = "number" | "numbers" | "string" | "list" | "boolean" | "negated";

/**
 * Settings only offline training (`train`) uses: online training has no planned end (`max_steps`,
 * `num_train_epochs`) and no data order to seed (`seed`).
 */
export const OFFLINE_ONLY_FIELDS: readonly string[] = ["max_steps", "num_train_epochs", "seed"];

/** Where the settings are used: `train` takes them all, `worker` and `start` all but `OFFLINE_ONLY_FIELDS`. */
export type TrainingMode = "offline" | "online";

// Online, the learning rate stays constant unless asked otherwise (no planned end to decay towards).
const ONLINE_HELP: Record<string, string> = { "lr-scheduler": "constant|linear|cosine  (default constant)" };

/** The given flags of settings only offline training uses, as `--flag` names. */
export function offlineOnlyFlagsGiven(values: Record<string, unknown>): string[] {
  return Object.entries(CONFIG_FLAGS).filter(([flag, f]) =>
    OFFLINE_ONLY_FIELDS.includes(f.field) && values[flag] !== undefined
  )
    .map(([flag]) => `--${flag}`);
}

/** A flag's help as `METAVAR  meaning` split in two. */
export function splitHelp(help: string): [string, string] {
  const at = help.indexOf("  ");
  return at < 0 ? [help.trim(), ""] : [help.slice(0, at).trim(), help.slice(at).trim()];
}

/**
 * The DPO settings as a command's options (raw: `configFromFlags` reads them). Online, the settings only
 * offline training uses are accepted but left out of `--help`: the command refuses them with a message
 * that says why (`offlineOnlyFlagsGiven`).
 */
export function dpoOptions(mode: TrainingMode): Options {
  return Object.fromEntries(
    Object.entries(CONFIG_FLAGS).map(([flag, f]): [string, Option] => {
      const [metavar, meaning] = splitHelp((mode === "online" && ONLINE_HELP[flag]) || f.help);
      const bool = f.kind === "boolean" || f.kind === "negated";
      return [flag, {
        type: bool ? "boolean" : "string",
        metavar,
        help: meaning,
        hidden: mode === "online" && OFFLINE_ONLY_FIELDS.includes(f.field),
        schema: bool ? z.boolean().optional() : z.string().optional(),
      }];
    }),
  );
}

/** Turns the given flags into config fields (only those given, so the config file's values stay). */
export function configFromFlags(values: Record<string, unknown>): DpoSettings {
  const out: Record<string, unknown> = {};
  for (const [flag, { field, kind }] of Object.entries(CONFIG_FLAGS)) {
    const v = values[flag];
    if (v === undefined) continue;
    const text = String(v);
    const number = (s: string) => {
      const n = Number(s.trim());
      if (s.trim() === "" || !Number.isFinite(n)) {
        throw new Error(`--${flag}: expected a number: current value is '${s}'`);
      }
      return n;
    };
    out[field] = kind === "number"
      ? number(text)
      : kind === "numbers"
      ? text.split(",").map(number)
      : kind === "list"
      ? text.split(",").map((s) => s.trim())
      : kind === "negated"
      ? !v
      : v;
  }
  return out as DpoSettings; // each value read as its setting's kind; checked by parseDpoConfig
}
