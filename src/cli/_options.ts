/**
 * Command-line options declared once. Each option is one object (how the parser reads it, its zod
 * schema with the default, its metavar and help), and a command's options are a record of them, from
 * which its parser spec, its validation and its `--help` lines are all derived. Options several commands
 * share are defined once below (`SHARED`); `start`'s settings, which also come from the environment and
 * a config file, have their own table in `_start_config.ts`.
 */
import { z } from "zod";
import { BACKENDS } from "../model/kernels/backends.ts";
import { CheckpointsSpecSchema } from "../store/open.ts";
import { parseCommand, UsageError } from "./common.ts";

/** One option. */
export interface Option<S extends z.ZodType = z.ZodType> {
  /** `string` takes a value (numbers are read by the schema); `boolean` is a switch. */
  type: "string" | "boolean";
  /** Repeatable: the values arrive as a list. */
  multiple?: boolean;
  short?: string;
  /** The value's name in `--help` (`N`, `DIR`). */
  metavar?: string;
  help: string;
  /** `--help`'s default when the schema's is not what a reader should see (or there is none). */
  defaultText?: string;
  /** Accepted but left out of `--help` (a flag the command refuses with a message of its own). */
  hidden?: boolean;
  /** Validates the parsed value (text, boolean, or list) and gives the default. */
  schema: S;
}

/** A command's options by flag name (without the dashes). */
export type Options = Record<string, Option>;

/** The validated values of a command's options, by flag name. */
export type Values<O extends Options> = { [K in keyof O]: z.output<O[K]["schema"]> };

/** A text option; optional unless `schema` says otherwise. */
export function text<S extends z.ZodType = z.ZodOptional<z.ZodString>>(
  metavar: string,
  help: string,
  schema?: S,
  extra: Pick<Option, "defaultText" | "hidden" | "multiple" | "short"> = {},
): Option<S> {
  return { type: "string", metavar, help, schema: (schema ?? z.string().min(1).optional()) as S, ...extra };
}

function numberText(check: (n: z.ZodNumber) => z.ZodNumber) {
  return z.string().trim().min(1, "expected a number").transform(Number).pipe(check(z.number()));
}

/** A numeric option given as text, checked by `check`, with a default (`fallback`) or optional. */
export function number(
  metavar: string,
  help: string,
  check: (n: z.ZodNumber) => z.ZodNumber,
): Option<z.ZodOptional<ReturnType<typeof numberText>>>;
export function number(
  metavar: string,
  help: string,
  check: (n: z.ZodNumber) => z.ZodNumber,
  fallback: number,
): Option<z.ZodDefault<ReturnType<typeof numberText>>>;
export function number(
  metavar: string,
  help: string,
  check: (n: z.ZodNumber) => z.ZodNumber,
  fallback?: number,
): Option {
  const schema = numberText(check);
  return {
    type: "string",
    metavar,
    help,
    schema: fallback === undefined ? schema.optional() : schema.default(fallback),
  };
}

/** A switch, off unless given. */
export function flag(help: string): Option<z.ZodDefault<z.ZodBoolean>> {
  return { type: "boolean", help, schema: z.boolean().default(false) };
}

/** A required text option. */
export function required(metavar: string, help: string): Option<z.ZodString> {
  return { type: "string", metavar, help, schema: z.string({ error: "is required" }).min(1, "is required") };
}

/** Options several commands share, with the same meaning everywhere. */
export const SHARED = {
  kv: text(
    "PATH|URL",
    "the shared KV: a file, or an http(s) URL (token in DENO_KV_ACCESS_TOKEN)",
    z.string().min(1).default("data/dpo.kv"),
  ),
  checkpoints: text(
    "dir:PATH|kv",
    "where policy versions are published: a directory, or KV itself",
    CheckpointsSpecSchema.default("dir:data/checkpoints"),
  ),
  backend: text("B", `compute backend: ${BACKENDS.join(", ")}`, z.enum(BACKENDS).default("auto")),
  "cache-dir": text("DIR", "where hf: models are downloaded", z.string().min(1).optional(), {
    defaultText: "$DPO_CACHE_DIR or ~/.cache/dpo-deno/hub",
  }),
  model: text("DIR|hf:OWNER/NAME[@REV]", "model directory in Hugging Face layout, or a Hub repository"),
};

const HELP_COLUMN = 30;
const WIDTH = 116;

/** The `--help` lines of `options`: the flag and its metavar, then the help and the default, wrapped. */
export function optionsUsage(options: Options): string {
  const lines: string[] = [];
  for (const [name, o] of Object.entries(options)) {
    if (o.hidden) continue;
    const head = `  --${name}${o.metavar ? ` ${o.metavar}` : ""}`;
    const shown = o.defaultText ?? defaultOf(o.schema);
    // "(default X)" stays on one line.
    const words = [...o.help.split(" "), ...(shown === undefined ? [] : [`(default ${shown})`])];
    let line = head.length < HELP_COLUMN - 1 ? head.padEnd(HELP_COLUMN) : "";
    if (line === "") lines.push(head);
    let first = true;
    for (const word of words) {
      const current = line === "" ? " ".repeat(HELP_COLUMN) : line;
      if (!first && current.length + 1 + word.length > WIDTH) {
        lines.push(current.trimEnd());
        line = " ".repeat(HELP_COLUMN) + word;
      } else {
        line = current + (first || current.endsWith(" ") ? "" : " ") + word;
      }
      first = false;
    }
    lines.push(line.trimEnd());
  }
  return lines.join("\n");
}

/** The default a schema gives an absent option, as `--help` shows it; undefined for none (or off). */
function defaultOf(schema: z.ZodType): string | undefined {
  const parsed = schema.safeParse(undefined);
  if (!parsed.success || parsed.data === undefined || parsed.data === false) return undefined;
  if (Array.isArray(parsed.data)) return parsed.data.length === 0 ? undefined : parsed.data.join(",");
  return String(parsed.data);
}

/** What `parseOptions` gives: `--help` asked, or the validated values. */
export type Parsed<O extends Options> = { help: true } | { help: false; values: Values<O> };

/**
 * Parses `args` strictly against `options` (plus `--help`, see `parseCommand`), then validates every value,
 * naming each flag that is wrong.
 */
export function parseOptions<O extends Options>(args: string[], options: O): Parsed<O> {
  const spec = Object.fromEntries(
    Object.entries(options).map((
      [name, o],
    ) => [name, { type: o.type, ...(o.multiple ? { multiple: true } : {}), ...(o.short ? { short: o.short } : {}) }]),
  );
  const values: Record<string, unknown> = parseCommand(args, { ...spec, help: { type: "boolean", short: "h" } });
  if (values.help) return { help: true };
  const shape = Object.fromEntries(Object.entries(options).map(([name, o]) => [name, o.schema]));
  const parsed = z.object(shape).safeParse(values);
  if (!parsed.success) {
    throw new UsageError(parsed.error.issues.map((i) => `--${i.path.join(".")}: ${i.message}`).join("; "));
  }
  return { help: false, values: parsed.data as Values<O> };
}
