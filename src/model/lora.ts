/**
 * LoRA adapters as PEFT defines them: for each targeted linear layer W, two trainable matrices
 * A [r, in] and B [out, r], and y = x W + (dropout(x) A^T B^T) * lora_alpha / r. B starts at zero, so a
 * fresh adapter leaves the model unchanged; disabled, the model is exactly its frozen base (the DPO
 * reference, with no second copy of the weights). Saved and loaded in PEFT's layout
 * (`adapter_config.json`, `adapter_model.safetensors`), and mergeable into the base.
 */
import * as tf from "./tf.ts";
import { join } from "node:path";
import { z } from "zod";
import type { CausalLM, LinearModule } from "./causal_lm.ts";
import { encodeSafetensors, readSafetensors } from "./safetensors.ts";
import { fileExists, writeAtomic } from "../util/fs.ts";

/** PEFT's file names. */
export const ADAPTER_CONFIG_FILE = "adapter_config.json";
export const ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors";

/** What PEFT targets when `target_modules` is not given (its per-architecture defaults). */
const DEFAULT_TARGETS: Record<string, string[]> = {
  gpt2: ["c_attn"],
  llama: ["q_proj", "v_proj"],
  qwen2: ["q_proj", "v_proj"],
};

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

/** The modules of `model` that `config.target_modules` selects, with PEFT's matching rules. */
export function targetModules(model: CausalLM, config: LoraConfig): Map<string, LinearModule> {
  const linear = model.linearModules();
  const given = config.target_modules ?? DEFAULT_TARGETS[model.config.model_type]!;
  const targets = Array.isArray(given) && given.length === 1 && given[0] === "all-linear" ? "all-linear" : given;
  let pattern: RegExp | undefined;
  try {
    if (typeof targets === "string" && targets !== "all-linear") pattern = new RegExp(`^(?:${targets})$`);
  } catch (err) {
    throw new Error(
      `Cannot create a LoRA adapter as target_modules '${targets}' is not a regex: ${(err as Error).message}`,
    );
  }
  const picked = new Map<string, LinearModule>();
  for (const [name, m] of linear) {
    const hit = targets === "all-linear" ||
      (pattern ? pattern.test(name) : (targets as string[]).some((t) => name === t || name.endsWith(`.${t}`)));
    if (hit) picked.set(name, m);
  }
  if (picked.size === 0) {
    const names = [...new Set([...linear.keys()].map((n) => n.split(".").at(-1)))].join(", ");
    throw new Error(
      `Cannot create a LoRA adapter as target_modules ${JSON.stringify(targets)} matches no linear layer of this ` +
        `${model.config.model_type} model (its linear layers are named ${names})`,
    );
  }
  return picked;
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

/**
 * A fresh adapter on `model` as PEFT initializes one: A ~ U(-1/sqrt(in), 1/sqrt(in)) (Kaiming-uniform
 * with a = sqrt 5), B = 0. The base's weights stop being trainable.
 */
export function attachNewAdapter(model: CausalLM, config: LoraConfig, seed: number): LoraAdapter {
  const weights = new Map<string, [tf.Tensor, tf.Tensor]>();
  const targets = targetModules(model, config);
  // PEFT records GPT-2's [in, out] layout in the config (it sets fan_in_fan_out for Conv1D itself).
  const fanInFanOut = [...targets.values()].some((m) => m.fanInFanOut);
  let k = 0;
  for (const [name, m] of targets) {
    const bound = 1 / Math.sqrt(m.inFeatures);
    weights.set(name, [
      tf.randomUniform([config.r, m.inFeatures], -bound, bound, "float32", seed + k++),
      tf.zeros([m.outFeatures, config.r]),
    ]);
  }
  return attach(model, new LoraAdapter({ ...config, fan_in_fan_out: fanInFanOut }, weights, seed));
}

function attach(model: CausalLM, adapter: LoraAdapter): LoraAdapter {
  if (model.adapter) throw new Error("Cannot attach a LoRA adapter: the model already has one");
  for (const v of model.params.values()) v.trainable = false;
  model.adapter = adapter;
  return adapter;
}

/**
 * Folds the adapter into the base weights (W + scale * B A) and detaches it: the model is then a plain
 * model with the adapter's behaviour, for serving or for saving as a full checkpoint.
 */
export function mergeAdapter(model: CausalLM): void {
  const adapter = model.adapter;
  if (!adapter) throw new Error("Cannot merge a LoRA adapter: the model has none");
  const linear = model.linearModules();
  tf.tidy(() => {
    for (const module of adapter.modules()) {
      const w = model.params.get(`${module}.weight`)!;
      w.assign(tf.add(w, adapter.weightDelta(module, linear.get(module)!.fanInFanOut)));
    }
  });
  adapter.dispose();
  model.adapter = undefined;
}

/** Reads and validates `adapter_config.json` in `dir`; errors name the file and every problem. */
export async function readAdapterConfig(dir: string): Promise<LoraConfig> {
  const path = join(dir, ADAPTER_CONFIG_FILE);
  let raw: unknown;
  try {
    raw = JSON.parse(await Deno.readTextFile(path));
  } catch (err) {
    const reason = err instanceof Deno.errors.NotFound ? "the file does not exist" : (err as Error).message;
    throw new Error(`Cannot load LoRA adapter config '${path}': ${reason}`);
  }
  const parsed = LoraConfigSchema.safeParse(raw);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `'${i.path.join(".")}': ${i.message}`).join("; ");
    throw new Error(`Cannot load LoRA adapter config '${path}': ${problems}`);
  }
  return parsed.data;
}

/** True when `dir` holds a PEFT adapter. */
export async function isAdapterDir(dir: string): Promise<boolean> {
  return await fileExists(join(dir, ADAPTER_CONFIG_FILE));
}

/**
 * Loads the PEFT adapter in `dir` onto `model`: every targeted module must have both matrices with
 * the shapes its layer implies, and nothing else may be in the file. The base stops being trainable.
 */
export async function loadAdapter(model: CausalLM, dir: string): Promise<LoraAdapter> {
  const config = await readAdapterConfig(dir);
  const path = join(dir, ADAPTER_WEIGHTS_FILE);
  if (!(await fileExists(path))) {
    throw new Error(`Cannot load LoRA adapter '${dir}': ${ADAPTER_WEIGHTS_FILE} is missing`);
  }
  const { tensors } = await readSafetensors(path);
  const targets = targetModules(model, config);
  const expected = new Map<string, number[]>();
  for (const [name, m] of targets) {
    expected.set(peftName(name, "A"), [config.r, m.inFeatures]).set(peftName(name, "B"), [m.outFeatures, config.r]);
  }
  const fail = (problem: string): never => {
    throw new Error(`Cannot load LoRA adapter '${path}': ${problem}`);
  };
  // PEFT writes names without the adapter's name; some tools keep `.default`.
  const stored = new Map(
    [...tensors].map(([n, t]) => [n.replace(/\.lora_([AB])\.default\.weight$/, ".lora_$1.weight"), t]),
  );
  const extra = [...stored.keys()].filter((n) => !expected.has(n));
  if (extra.length > 0) {
    fail(
      `unexpected tensor(s) for target_modules ${JSON.stringify(config.target_modules)}: ${
        extra.slice(0, 5).join(", ")
      }`,
    );
  }
  const missing = [...expected.keys()].filter((n) => !stored.has(n));
  if (missing.length > 0) fail(`${missing.length} tensor(s) missing: ${missing.slice(0, 5).join(", ")}`);
  for (const [name, shape] of expected) {
    const t = stored.get(name)!;
    if (t.shape.join() !== shape.join()) {
      fail(`tensor '${name}' has shape [${t.shape}] but r and the layer imply [${shape}]`);
    }
    if (!["F32", "F16", "BF16", "F64"].includes(t.dtype)) {
      fail(`tensor '${name}' has dtype ${t.dtype}, not a float type`);
    }
  }
  const weights = new Map<string, [tf.Tensor, tf.Tensor]>();
  for (const [name] of targets) {
    const a = stored.get(peftName(name, "A"))!, b = stored.get(peftName(name, "B"))!;
    weights.set(name, [tf.tensor(a.values, a.shape, "float32"), tf.tensor(b.values, b.shape, "float32")]);
  }
  return attach(model, new LoraAdapter(config, weights));
}

/** Saves the model's adapter to `dir` in PEFT's layout, each file written atomically. */
export async function saveAdapter(model: CausalLM, dir: string, baseModel: string): Promise<void> {
  const adapter = model.adapter;
  if (!adapter) throw new Error("Cannot save a LoRA adapter: the model has none");
  await Deno.mkdir(dir, { recursive: true });
  const entries: [string, { shape: number[]; values: Float32Array }][] = [];
  for (const [name, v] of [...adapter.params].sort(([a], [b]) => a.localeCompare(b))) {
    entries.push([name, { shape: v.shape, values: (await v.data()) as Float32Array }]);
  }
  await writeAtomic(join(dir, ADAPTER_WEIGHTS_FILE), encodeSafetensors(entries, { format: "pt" }));
  const config = {
    ...adapter.config,
    task_type: adapter.config.task_type ?? "CAUSAL_LM",
    base_model_name_or_path: baseModel,
    inference_mode: true,
  };
  await writeAtomic(join(dir, ADAPTER_CONFIG_FILE), new TextEncoder().encode(JSON.stringify(config, null, 2) + "\n"));
}
