/**
 * The DPO settings as flags and help text: one declaration per setting of `DpoConfigSchema` (a setting
 * added there without one here is a type error), from which `train`'s and `worker`'s flags and `--help`
 * and `start`'s settings table are derived. Each setting's kind (how a flag or environment variable's text
 * is read) and default come from the schema, so that they are written once.
 */
import { z } from "zod";
import { DpoConfigSchema, type DpoSettings, ONLINE_DPO_DEFAULTS } from "../dpo/config.ts";
import { type Kind, type Option, type Options, readSettingText } from "./_options.ts";

/** The DPO settings by TRL name. */
export type DpoKey = keyof typeof DpoConfigSchema.shape;

interface DpoSettingDecl {
  /** The flag without dashes; default the TRL name with dashes. `no-` makes it a switch that turns the setting off. */
  flag?: string;
  /** The value's name in `--help` (none for a switch). */
  metavar?: string;
  help: string;
  /** What the setting means in online training (`worker`, `start`), where it differs. */
  onlineHelp?: string;
  /** Shown instead of the default where the schema has none or it is derived. */
  defaultText?: string;
  /** Only offline training (`train`) uses it: online training has no planned end and no data order to seed. */
  offlineOnly?: true;
}

const DECLS: Record<DpoKey, DpoSettingDecl> = {
  loss_type: {
    metavar: "T[,T...]",
    help:
      "`sigmoid` (DPO; with label smoothing, cDPO), `ipo`, `hinge`, `robust`, `sft` (NLL of the chosen completions, " +
      "token-weighted); several are summed (`sigmoid,sft` is RPO)",
  },
  loss_weights: { metavar: "W[,W...]", help: "one weight per loss type", defaultText: "1 each" },
  beta: { metavar: "B", help: "strength of the implicit KL constraint" },
  label_smoothing: { metavar: "E", help: "assumed rate of flipped labels (sigmoid, robust), below 0.5" },
  length_normalize: { help: "compare mean per-token log-probs (always on for `ipo`, as in TRL)" },
  optimizer: {
    metavar: "adamw|sgd",
    help: "AdamW with decoupled weight decay, or SGD, as `torch.optim` computes them",
  },
  learning_rate: { metavar: "LR", help: "peak learning rate" },
  weight_decay: { metavar: "WD", help: "weight decay" },
  lr_scheduler_type: {
    flag: "lr-scheduler",
    metavar: "constant|linear|cosine|inverse_sqrt",
    help: "after warmup, as Hugging Face's schedules (`inverse_sqrt`: 1/√step, timescale `warmup_steps`)",
    onlineHelp: "after warmup; online training has no planned end: `inverse_sqrt` (1/√step, timescale " +
      "`warmup_steps`) needs none, `linear` and `cosine` hardly decay",
  },
  warmup_steps: {
    metavar: "N",
    help: "linear warmup, in optimizer steps; with `inverse_sqrt` also its timescale",
  },
  max_steps: {
    metavar: "N",
    help: "optimizer steps",
    defaultText: "--num-epochs of the data",
    offlineOnly: true,
  },
  num_train_epochs: {
    flag: "num-epochs",
    metavar: "E",
    help: "passes over the data when `--max-steps` is not given",
    offlineOnly: true,
  },
  per_device_train_batch_size: { flag: "batch-size", metavar: "N", help: "pairs per micro-batch" },
  gradient_accumulation_steps: { metavar: "N", help: "micro-batches per optimizer step" },
  max_grad_norm: { metavar: "G", help: "global gradient-norm clipping" },
  max_length: { metavar: "N", help: "longest prompt + completion + eos", defaultText: "the model's context" },
  seed: { metavar: "S", help: "seed of the data order and dropout", offlineOnly: true },
  desirable_weight: { metavar: "W", help: "KTO weight of a desirable example (a thumbs up)" },
  undesirable_weight: { metavar: "W", help: "KTO weight of an undesirable example (a thumbs down)" },
  precompute_ref_log_probs: {
    flag: "no-precompute-ref-log-probs",
    help: "score the reference every step instead of once per pair and reference version",
  },
  sync_ref_model: {
    help: "TR-DPO: mix the policy into the reference, π_ref ← α·π + (1−α)·π_ref, every `ref_model_sync_steps`",
    onlineHelp: "TR-DPO soft reference updates (with `rounds`, set `ref_refresh_rounds` to 0)",
  },
  ref_model_mixup_alpha: { metavar: "A", help: "TR-DPO: α in π_ref ← α·π + (1−α)·π_ref" },
  ref_model_sync_steps: { metavar: "N", help: "TR-DPO: mix every N optimizer steps" },
  ref_refresh_steps: {
    metavar: "N",
    help: "iterative DPO: copy the policy into the reference every N optimizer steps",
    defaultText: "off",
  },
  disable_dropout: { flag: "no-disable-dropout", help: "train with dropout (TRL disables it by default)" },
  use_peft: { help: "train a LoRA adapter; the frozen base is the reference" },
  lora_r: { metavar: "R", help: "LoRA rank" },
  lora_alpha: { metavar: "A", help: "updates scaled by `lora_alpha / lora_r`" },
  lora_dropout: { metavar: "P", help: "dropout on the adapter's input, only with `--no-disable-dropout`" },
  lora_target_modules: {
    metavar: "M[,M...]",
    help: "layers to adapt: names (`q_proj`, `c_attn`; a dotted suffix matches), a regex, or `all-linear`",
    defaultText: "PEFT's per model type (`q_proj,v_proj`; `c_attn` for gpt2)",
  },
  use_rslora: { help: "scale the adapter's updates by `lora_alpha / sqrt(lora_r)` (rsLoRA)" },
};

/** One DPO setting as the commands see it. */
export interface DpoSetting {
  field: DpoKey;
  flag: string;
  kind: Kind;
  metavar: string;
  help: string;
  onlineHelp: string;
  defaultText?: string;
  offlineOnly: boolean;
}

/** Every DPO setting, in the order of the declarations. */
export const DPO_SETTINGS: readonly DpoSetting[] = Object.entries(DECLS).map(([field, d]) => {
  const flag = d.flag ?? field.replaceAll("_", "-");
  const kind = schemaKind((DpoConfigSchema.shape as Record<string, z.ZodType>)[field]!);
  return {
    field: field as DpoKey,
    flag,
    kind: flag.startsWith("no-") && kind === "boolean" ? "negated" : kind,
    metavar: d.metavar ?? "",
    help: d.help,
    onlineHelp: d.onlineHelp ?? d.help,
    defaultText: d.defaultText,
    offlineOnly: d.offlineOnly ?? false,
  };
});

/** Where the settings are used: `train` takes them all, `worker` and `start` all but the offline-only ones. */
export type TrainingMode = "offline" | "online";

/** The given flags of settings only offline training uses, as `--flag` names. */
export function offlineOnlyFlagsGiven(values: Record<string, unknown>): string[] {
  return DPO_SETTINGS.filter((s) => s.offlineOnly && values[s.flag] !== undefined).map((s) => `--${s.flag}`);
}

/** The engine's defaults where `mode` trains (online training starts from `ONLINE_DPO_DEFAULTS`). */
export function dpoDefaults(mode: TrainingMode): Record<string, unknown> {
  return DpoConfigSchema.parse(mode === "online" ? ONLINE_DPO_DEFAULTS : {});
}

/**
 * The DPO settings as a command's options (raw: `configFromFlags` reads them), with the engine's defaults
 * in `--help`. Online, the settings only offline training uses are accepted but left out of `--help`: the
 * command refuses them with a message that says why (`offlineOnlyFlagsGiven`).
 */
export function dpoOptions(mode: TrainingMode): Options {
  const defaults = dpoDefaults(mode);
  return Object.fromEntries(DPO_SETTINGS.map((s): [string, Option] => {
    const bool = s.kind === "boolean" || s.kind === "negated";
    return [s.flag, {
      type: bool ? "boolean" : "string",
      metavar: s.metavar,
      help: (mode === "online" ? s.onlineHelp : s.help).replaceAll("`", ""),
      defaultText: bool ? undefined : s.defaultText?.replaceAll("`", "") ?? shownDefault(defaults[s.field]),
      hidden: mode === "online" && s.offlineOnly,
      env: true,
      schema: bool ? z.boolean().optional() : z.string().optional(),
    }];
  }));
}

/** A default as `--help` and the tables show it: a list comma-separated, a small number as `1e-6`. */
export function shownDefault(value: unknown): string | undefined {
  if (value === undefined) return undefined;
  if (Array.isArray(value)) return value.join(",");
  if (typeof value === "number" && value !== 0 && Math.abs(value) < 1e-3) return value.toExponential();
  return String(value);
}

/**
 * Turns the given flags into config fields (only those given, so the config file's values stay); `origin`
 * names where each came from (`parseOptions`), for messages.
 */
export function configFromFlags(values: Record<string, unknown>, origin: Record<string, string> = {}): DpoSettings {
  const out: Record<string, unknown> = {};
  for (const { field, flag, kind } of DPO_SETTINGS) {
    const v = values[flag];
    if (v === undefined) continue;
    if (kind === "negated" || kind === "boolean") {
      out[field] = kind === "negated" ? !v : v;
      continue;
    }
    try {
      out[field] = readSettingText(String(v), kind);
    } catch (err) {
      throw new Error(`${origin[flag] ?? `--${flag}`}: ${(err as Error).message}: current value is '${v}'`);
    }
  }
  return out as DpoSettings; // each value read as its setting's kind; checked by parseDpoConfig
}

/** How a setting's text is read, from its schema: numbers, lists (of numbers), switches, or text. */
export function schemaKind(schema: z.ZodType): Exclude<Kind, "negated"> {
  let def = schema._zod.def;
  while (def.type === "default" || def.type === "optional" || def.type === "pipe") {
    def = def.type === "pipe"
      ? (def as unknown as { out: z.ZodType }).out._zod.def
      : (def as unknown as { innerType: z.ZodType }).innerType._zod.def;
  }
  if (def.type === "number") return "number";
  if (def.type === "boolean") return "boolean";
  if (def.type === "union") return "list"; // one name or a list (lora_target_modules)
  if (def.type === "array") {
    const element = (def as unknown as { element: z.ZodType }).element;
    return element._zod.def.type === "number" ? "numbers" : "list";
  }
  return "string";
}
