/** `merge`: folds a LoRA adapter (PEFT layout) into its base and saves the result as a full model. */
import { describeBackend, initBackend } from "../model/kernels/backend.ts";
import { describeModel } from "../model/arch/registry.ts";
import { loadModel, saveModel } from "../model/io/checkpoint.ts";
import { isAdapterDir } from "../model/arch/lora.ts";
import { log } from "./common.ts";
import { optionsUsage, parseOptions, required, SHARED, text } from "./_options.ts";

export const OPTIONS = {
  adapter: required("DIR", "a LoRA adapter directory (adapter_config.json, adapter_model.safetensors)"),
  base: text("DIR|hf:OWNER/NAME[@REV]", "the base model, instead of the one the adapter names"),
  out: required("DIR", "where to write the merged model (must not exist, or be empty)"),
  backend: SHARED.backend,
};

/** Usage text of the command. */
export const MERGE_USAGE = `Usage: deno task cli merge --adapter DIR --out DIR [options]

Loads the adapter's base (its adapter_config.json's base_model_name_or_path, or --base), adds the
adapter's update to the weights it adapts (W + lora_alpha / r * B A) and saves a full model in
Hugging Face layout, with the base's tokenizer files.

${optionsUsage(OPTIONS)}`;

/** Runs the command. */
export async function runMerge(args: string[]): Promise<void> {
  const parsed = parseOptions(args, OPTIONS);
  if (parsed.help) return void console.log(MERGE_USAGE);
  const opts = parsed.values;
  if (!(await isAdapterDir(opts.adapter))) {
    throw new Error(`Cannot merge '${opts.adapter}': it holds no adapter_config.json (not a LoRA adapter directory)`);
  }
  const outEntries = await Array.fromAsync(Deno.readDir(opts.out)).catch(() => []);
  if (outEntries.length > 0) throw new Error(`Cannot merge into '${opts.out}': it exists and is not empty`);
  log(describeBackend(await initBackend(opts.backend)));
  const loaded = await loadModel(opts.adapter, { trainable: false, mergeAdapter: true, base: opts.base });
  try {
    await saveModel(loaded, opts.out);
    log(`merged ${opts.adapter} into ${loaded.dir} (${describeModel(loaded.model)}): wrote ${opts.out}`);
  } finally {
    loaded.model.dispose();
  }
}
