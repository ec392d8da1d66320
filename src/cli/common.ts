/** What every CLI command shares: argument parsing, usage errors, and loading a model on a backend. */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { z } from "zod";
import { BACKENDS } from "../model/kernels/backends.ts";
import type { LoadedModel } from "../model/io/checkpoint.ts";

/** A mistake in the command line: printed with the command's usage, exit code 2. */
export class UsageError extends Error {}

/** A settings mistake (flag, environment or config file): printed with a pointer to `--help`, exit code 2. */
export class ConfigError extends UsageError {}

/** Options every model-loading command accepts. */
export const MODEL_OPTIONS = {
  model: { type: "string" },
  backend: { type: "string", default: "auto" },
  "cache-dir": { type: "string" },
  help: { type: "boolean", short: "h" },
} as const satisfies ParseArgsConfig["options"];

/** Usage lines for `MODEL_OPTIONS`. */
export const MODEL_USAGE =
  `  --model DIR|hf:OWNER/NAME[@REV]  model directory in Hugging Face layout, or a Hub repository
  --backend ${BACKENDS.join("|")}  compute backend (default auto)
  --cache-dir DIR                   where hf: models are downloaded (default $DPO_CACHE_DIR or ~/.cache/dpo-deno/hub)`;

/** Parses argv strictly; unknown options and stray arguments are usage errors. */
export function parseCommand<T extends NonNullable<ParseArgsConfig["options"]>>(
  args: string[],
  options: T,
) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false }).values;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

/** Validates parsed options with a zod schema; problems become one usage error. */
export function validate<S extends z.ZodType>(schema: S, values: unknown): z.infer<S> {
  const parsed = schema.safeParse(values);
  if (!parsed.success) {
    throw new UsageError(parsed.error.issues.map((i) => `--${i.path.join(".")}: ${i.message}`).join("; "));
  }
  return parsed.data;
}

/** A numeric option given as text. */
export function numberOption(check: (n: z.ZodNumber) => z.ZodNumber = (n) => n) {
  return z.string().trim().min(1, "expected a number").transform(Number).pipe(check(z.number()));
}

/** The backend option's schema. */
export const backendOption = z.enum(BACKENDS);

/** Writes a line to stderr (logs never mix with a command's stdout results). */
export function log(message: string): void {
  console.error(message);
}

/** Writes all of `text` to stdout (a single write may be partial). */
export async function writeStdout(text: string): Promise<void> {
  let bytes = new TextEncoder().encode(text);
  while (bytes.length > 0) bytes = bytes.subarray(await Deno.stdout.write(bytes));
}

/** Initializes the backend, resolves and loads the model, and logs both. */
export async function loadForCli(
  opts: { model: string; backend: z.infer<typeof backendOption>; "cache-dir"?: string },
): Promise<LoadedModel> {
  // Imported here: a command that loads no model (a feedback-only server) never loads TF.js.
  const [{ describeBackend, initBackend }, { describeModel }, { loadModel }, { resolveModel }] = await Promise.all([
    import("../model/kernels/backend.ts"),
    import("../model/arch/registry.ts"),
    import("../model/io/checkpoint.ts"),
    import("../model/io/hub.ts"),
  ]);
  const report = await initBackend(opts.backend);
  log(describeBackend(report));
  const dir = await resolveModel(opts.model, { cacheDir: opts["cache-dir"] });
  const loaded = await loadModel(dir, { trainable: false, mergeAdapter: true });
  log(`model: ${dir} (${describeModel(loaded.model)})`);
  return loaded;
}
