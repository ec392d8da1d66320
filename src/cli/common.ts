/** What every CLI command shares: argument parsing, usage errors, and loading a model on a backend. */
import { parseArgs, type ParseArgsConfig } from "node:util";
import type { BackendChoice } from "../model/kernels/backends.ts";
import { closest } from "../util/names.ts";
import type { LoadedModel } from "../model/io/checkpoint.ts";

/** A mistake in the command line: printed with the command's usage, exit code 2. */
export class UsageError extends Error {}

/** A settings mistake (flag, environment or config file): printed with a pointer to `--help`, exit code 2. */
export class ConfigError extends UsageError {}

/** Parses argv strictly: an unknown option is a usage error naming the closest known one; a stray argument too. */
export function parseCommand<T extends NonNullable<ParseArgsConfig["options"]>>(
  args: string[],
  options: T,
) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false }).values;
  } catch (err) {
    const message = (err as Error).message;
    const unknown = /Unknown option '-{1,2}([^']+)'/.exec(message);
    const near = unknown ? closest(unknown[1]!, Object.keys(options)) : undefined;
    throw new UsageError(near ? `${message} (did you mean '--${near}'?)` : message);
  }
}

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
  opts: { model: string; backend: BackendChoice; "cache-dir"?: string },
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
