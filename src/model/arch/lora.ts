/**
 * LoRA adapters as PEFT defines them: for each targeted linear layer W, two trainable matrices
 * A [r, in] and B [out, r], and y = x W + (dropout(x) A^T B^T) * lora_alpha / r. B starts at zero, so a
 * fresh adapter leaves the model unchanged; disabled, the model is exactly its frozen base (the DPO
 * reference, with no second copy of the weights). Saved and loaded in PEFT's layout
 * (`adapter_config.json`, `adapter_model.safetensors`), and mergeable into the base.
 */
import * as tf from "../tf.ts";
import { join } from "node:path";
import type { CausalLM, LinearModule } from "./causal_lm.ts";
import { LoraAdapter, type LoraConfig, LoraConfigSchema, peftName } from "./adapter.ts";
import { encodeSafetensors, readSafetensors } from "../io/safetensors.ts";
import { fileExists, writeAtomic } from "../../util/fs.ts";

/** PEFT's file names. */
export const ADAPTER_CONFIG_FILE = "adapter_config.json";
export const ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors";

export { LoraAdapter, type LoraConfig, LoraConfigSchema, peftName };

/** The modules of `model` that `config.target_modules` selects, with PEFT's matching rules. */
export function targetModules(model: CausalLM, config: LoraConfig): Map<string, LinearModule> {
  const linear = model.linearModules();
  const given = config.target_modules ?? model.defaultLoraTargets;
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
