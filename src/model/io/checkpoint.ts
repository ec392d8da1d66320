/** Loading and saving models in Hugging Face layout, with every malformed case a clear error. */
import * as tf from "../tf.ts";
import { join, resolve } from "node:path";
import { configEosId } from "../arch/config.ts";
import { createModel, type ModelConfig, parameterShapes, parseModelConfig } from "../arch/registry.ts";
import type { CausalLM } from "../arch/causal_lm.ts";
import { isAdapterDir, loadAdapter, mergeAdapter, readAdapterConfig, saveAdapter } from "../arch/lora.ts";
import { resolveModel } from "./hub.ts";
import { encodeSafetensors, readSafetensors, type StoredTensor } from "./safetensors.ts";
import { loadTokenizer, type Tokenizer } from "./tokenizer.ts";
import { fileExists, writeAtomic } from "../../util/fs.ts";

/** A model ready to use: weights, tokenizer and where they came from. */
export interface LoadedModel {
  model: CausalLM;
  tokenizer: Tokenizer;
  /** The directory of the (base) model's files. */
  dir: string;
  /** config.json as read, unknown keys included, for saving. */
  rawConfig: Record<string, unknown>;
  /** The PEFT adapter directory the model's adapter came from, when one was loaded. */
  adapterDir?: string;
}

/** Options of `loadModel`. */
export interface LoadModelOptions {
  /** Whether the weights take gradients; default true (an adapter's base never does). */
  trainable?: boolean;
  /** For an adapter directory: fold the adapter into the base (serving) instead of keeping it attached. */
  mergeAdapter?: boolean;
  /** For an adapter directory: the base model (a directory or hf:OWNER/NAME), overriding base_model_name_or_path. */
  base?: string;
}

/** Files copied verbatim from a model directory when saving, when present. */
const TOKENIZER_FILES = [
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "generation_config.json",
  "vocab.json",
  "merges.txt",
];

/** Buffers some checkpoints carry that are not weights (GPT-2's causal mask, older Llama's RoPE frequencies). */
const IGNORED =
  /^(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)$|^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/;

/**
 * Loads a model directory in Hugging Face layout, or a PEFT adapter directory (`adapter_config.json`):
 * its base (from `base_model_name_or_path`, or `options.base`) with the adapter attached or merged.
 */
export async function loadModel(dir: string, options: LoadModelOptions = {}): Promise<LoadedModel> {
  if (await isAdapterDir(dir)) return await loadWithAdapter(dir, options);
  const configPath = join(dir, "config.json");
  const configText = await readText(configPath, "model config");
  const config = parseModelConfig(configText, configPath);
  const stored = await readWeights(dir, config);
  const tokenizer = await loadTokenizer(dir, {
    eosTokenId: configEosId(config),
    stopTokenIds: [config.eos_token_id ?? []].flat(),
  });
  if (tokenizer.vocabSize > config.vocab_size) {
    throw new Error(
      `Cannot load model '${dir}': tokenizer.json has ${tokenizer.vocabSize} tokens but config.json vocab_size is ${config.vocab_size} (tokenizer and model do not match)`,
    );
  }
  // Tensors are made only once every check has passed, so a failed load leaves none behind.
  const weights = new Map([...stored].map(([name, t]) => [name, tf.tensor(t.values, t.shape, "float32")]));
  return {
    model: createModel(config, weights, options.trainable ?? true),
    tokenizer,
    dir,
    rawConfig: JSON.parse(configText),
  };
}

async function loadWithAdapter(dir: string, options: LoadModelOptions): Promise<LoadedModel> {
  const config = await readAdapterConfig(dir);
  const spec = options.base ?? config.base_model_name_or_path;
  if (!spec) {
    throw new Error(
      `Cannot load LoRA adapter '${dir}': adapter_config.json names no base_model_name_or_path; give the base model`,
    );
  }
  const baseDir = await resolveModel(await baseSpec(spec));
  if (await isAdapterDir(baseDir)) {
    throw new Error(`Cannot load LoRA adapter '${dir}': its base '${spec}' is itself an adapter`);
  }
  const base = await loadModel(baseDir, { trainable: false });
  try {
    await loadAdapter(base.model, dir);
    if (options.mergeAdapter) mergeAdapter(base.model);
  } catch (err) {
    base.model.dispose();
    throw err;
  }
  return { ...base, adapterDir: dir };
}

/** A base as PEFT names it: a directory, or a Hub id written OWNER/NAME (read as hf:OWNER/NAME). */
async function baseSpec(name: string): Promise<string> {
  const exists = await Deno.stat(name).then(() => true, () => false);
  if (name.startsWith("hf:") || exists || !/^[\w.-]+\/[\w.-]+$/.test(name)) return name;
  return `hf:${name}`;
}

async function readText(path: string, what: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (err) {
    const reason = err instanceof Deno.errors.NotFound ? "the file does not exist" : (err as Error).message;
    throw new Error(`Cannot load ${what} '${path}': ${reason}`);
  }
}

/** Reads model.safetensors (or the shards of model.safetensors.index.json) and checks names and shapes. */
async function readWeights(dir: string, config: ModelConfig): Promise<Map<string, StoredTensor>> {
  const stored = new Map<string, { tensor: StoredTensor; file: string }>();
  for (const file of await weightFiles(dir)) {
    const { tensors } = await readSafetensors(file);
    for (const [name, tensor] of tensors) stored.set(name, { tensor, file });
  }
  const expected = parameterShapes(config);
  const found = new Map<string, { tensor: StoredTensor; file: string }>();
  const extra: string[] = [];
  for (const [name, entry] of stored) {
    if (IGNORED.test(name)) continue;
    // GPT2Model checkpoints (the original `gpt2` repository) omit the `transformer.` prefix.
    const canonical = expected.has(name) ? name : expected.has(`transformer.${name}`) ? `transformer.${name}` : name;
    if (canonical === "lm_head.weight" && config.tie_word_embeddings) continue; // tied: the same tensor as wte
    if (!expected.has(canonical)) extra.push(`'${name}' in ${entry.file}`);
    else found.set(canonical, entry);
  }
  const where = stored.size > 0 ? [...new Set([...stored.values()].map((e) => e.file))].join(", ") : dir;
  const missing = [...expected.keys()].filter((n) => !found.has(n));
  if (missing.length > 0) {
    throw new Error(`Cannot load weights from ${where}: ${missing.length} tensor(s) missing: ${list(missing)}`);
  }
  if (extra.length > 0) {
    throw new Error(
      `Cannot load weights from ${where}: unexpected tensor(s) for a ${config.model_type} model: ${list(extra)}`,
    );
  }
  for (const [name, { tensor, file }] of found) {
    const shape = expected.get(name)!;
    if (tensor.shape.join() !== shape.join()) {
      throw new Error(
        `Cannot load weights from ${file}: tensor '${name}' has shape [${tensor.shape}] but config.json implies [${shape}]`,
      );
    }
    if (!["F32", "F16", "BF16", "F64"].includes(tensor.dtype)) {
      throw new Error(`Cannot load weights from ${file}: tensor '${name}' has dtype ${tensor.dtype}, not a float type`);
    }
  }
  return new Map([...found].map(([name, { tensor }]) => [name, tensor]));
}

function list(names: string[]): string {
  return names.length > 5 ? `${names.slice(0, 5).join(", ")} and ${names.length - 5} more` : names.join(", ");
}

async function weightFiles(dir: string): Promise<string[]> {
  const single = join(dir, "model.safetensors");
  if (await fileExists(single)) return [single];
  const indexPath = join(dir, "model.safetensors.index.json");
  if (!(await fileExists(indexPath))) {
    throw new Error(
      `Cannot load weights from '${dir}': neither model.safetensors nor model.safetensors.index.json exists`,
    );
  }
  let index: { weight_map?: unknown };
  try {
    index = JSON.parse(await Deno.readTextFile(indexPath));
  } catch (err) {
    throw new Error(`Cannot load weight index '${indexPath}': ${(err as Error).message}`);
  }
  const map = index.weight_map;
  if (typeof map !== "object" || map === null || !Object.values(map).every((f) => typeof f === "string")) {
    throw new Error(`Cannot load weight index '${indexPath}': 'weight_map' must map tensor names to file names`);
  }
  return [...new Set(Object.values(map as Record<string, string>))].map((f) => join(dir, f));
}

/**
 * Saves a model to `outDir` in Hugging Face layout (F32 safetensors), copying the tokenizer files
 * from `loaded.dir`; a model with a LoRA adapter saves only the adapter, in PEFT's layout, naming
 * `loaded.dir` as its base. Each file is written to a temporary name and renamed, so a crash never
 * leaves a half-written file under its final name.
 */
export async function saveModel(
  loaded: Pick<LoadedModel, "model" | "rawConfig" | "dir">,
  outDir: string,
): Promise<void> {
  if (loaded.model.adapter) return await saveAdapter(loaded.model, outDir, resolve(loaded.dir));
  await Deno.mkdir(outDir, { recursive: true });
  const entries: [string, { shape: number[]; values: Float32Array }][] = [];
  for (const [name, v] of [...loaded.model.params].sort(([a], [b]) => a.localeCompare(b))) {
    entries.push([name, { shape: v.shape, values: (await v.data()) as Float32Array }]);
  }
  await writeAtomic(join(outDir, "model.safetensors"), encodeSafetensors(entries, { format: "pt" }));
  const config = { ...loaded.rawConfig, torch_dtype: "float32" };
  await writeAtomic(join(outDir, "config.json"), new TextEncoder().encode(JSON.stringify(config, null, 2) + "\n"));
  if (loaded.dir === outDir) return;
  for (const file of TOKENIZER_FILES) {
    const src = join(loaded.dir, file);
    if (await fileExists(src)) await writeAtomic(join(outDir, file), await Deno.readFile(src));
  }
}
