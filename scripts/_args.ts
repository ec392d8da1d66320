/**
 * Command-line options of the benchmark scripts: `--help` prints the script's header comment (its usage),
 * and a mistake in the options is one line and the usage, exit code 2, never a stack trace.
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { fileURLToPath } from "node:url";

/** The first doc comment of the script at `url`, without its comment markers. */
export function headerOf(url: string): string {
  const text = Deno.readTextFileSync(fileURLToPath(url));
  const block = /\/\*\*([\s\S]*?)\*\//.exec(text)?.[1] ?? "";
  return block.split("\n").map((l) => l.replace(/^\s*\* ?/, "")).join("\n").trim();
}

/** A mistake in the options of the script at `scriptUrl`: one line and its usage on stderr, exit code 2. */
export function usageError(scriptUrl: string, message: string): never {
  console.error(`error: ${message}\n\n${headerOf(scriptUrl)}`);
  Deno.exit(2);
}

/** Parses `args` with `options` (plus `--help`); prints the usage and exits on `--help` or a mistake. */
export function scriptArgs<O extends NonNullable<ParseArgsConfig["options"]>>(
  scriptUrl: string,
  options: O,
  args: string[] = Deno.args,
) {
  let parsed;
  try {
    parsed = parseArgs({ args, options: { ...options, help: { type: "boolean", short: "h" } }, strict: true });
  } catch (err) {
    usageError(scriptUrl, (err as Error).message);
  }
  if ((parsed.values as Record<string, unknown>).help) {
    console.log(headerOf(scriptUrl));
    Deno.exit(0);
  }
  return parsed as { values: ReturnType<typeof parseArgs<{ options: O }>>["values"]; positionals: string[] };
}
