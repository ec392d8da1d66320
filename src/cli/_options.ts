/**
 * Command-line options declared once. Each option is one object (how the parser reads it, its zod
 * schema with the default, its metavar and help), and a command's options are a record of them, from
 * which its parser spec, its validation and its `--help` lines are all derived. Options several commands
 * share are defined once below (`SHARED`). Settings (not a run's inputs or actions, such as `--data` or
 * `--rollback`) also come from the environment, as `DPO_` and the name in capitals (`--round-size`:
 * `DPO_ROUND_SIZE`), the variable `start` reads for the setting of that name; a flag wins. The roles'
 * commands (`serve`, `judge`, `worker`) take all their options so (`withEnv`). `start`'s settings, which
 * also come from a config file, have their table in `_start_config.ts`.
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
  /** A setting also read from the environment (`envName`), when no flag gives it. */
  env?: boolean;
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
  extra: Pick<Option, "defaultText" | "env" | "hidden" | "multiple" | "short"> = {},
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
    { env: true },
  ),
  checkpoints: text(
    "dir:PATH|kv",
    "where policy versions are published: a directory, or KV itself",
    CheckpointsSpecSchema.default("dir:data/checkpoints"),
    { env: true },
  ),
  backend: text("B", `compute backend: ${BACKENDS.join(", ")}`, z.enum(BACKENDS).default("auto"), { env: true }),
  "cache-dir": text("DIR", "where hf: models are downloaded", z.string().min(1).optional(), {
    defaultText: "$HF_HOME/dpo-deno, else ~/.cache/dpo-deno/hub",
    env: true,
  }),
  model: text(
    "DIR|hf:OWNER/NAME[@REV]",
    "model directory in Hugging Face layout, or a Hub repository",
    z.string().min(1).optional(),
    { env: true },
  ),
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
  const shown = Object.entries(options).filter(([, o]) => !o.hidden);
  const env = shown.filter(([, o]) => o.env).map(([name]) => name);
  const others = shown.filter(([, o]) => !o.env).map(([name]) => `--${name}`);
  if (env.length > 0) {
    lines.push(
      "",
      ...wrap(
        others.length === 0 || others.length < env.length
          ? `Each option can also be set in the environment: DPO_ and its name in capitals (--${env[0]}: ` +
            `${envName(env[0]!)}); a flag wins${others.length > 0 ? ` (not ${others.join(", ")})` : ""}.`
          : `Also set in the environment (a flag wins): ${
            env.map((name) => `--${name} as ${envName(name)}`).join(", ")
          }.`,
      ),
    );
  }
  return lines.join("\n");
}

/**
 * A command's options as a Markdown table for the configuration reference: flag, environment variable,
 * default, meaning (`deno task docs` writes it; a test holds the docs to it).
 */
export function optionsTable(options: Options): string {
  const cell = (text: string) => text.replaceAll("|", "\\|");
  const code = (text: string) => `\`${cell(text)}\``;
  const rows = ["| flag | env | default | meaning |", "| --- | --- | --- | --- |"];
  for (const [name, o] of Object.entries(options)) {
    if (o.hidden) continue;
    const shown = o.defaultText ?? defaultOf(o.schema);
    rows.push(
      `| ${code(`--${name}${o.metavar ? ` ${o.metavar}` : ""}`)} | ${o.env ? code(envName(name)) : ""} | ` +
        `${shown === undefined ? "" : code(shown)} | ${cell(o.help)} |`,
    );
  }
  return rows.join("\n");
}

/** `options` with every one read from the environment too, but those named in `except`. */
export function withEnv<O extends Options>(options: O, except: (keyof O)[] = []): O {
  return Object.fromEntries(
    Object.entries(options).map(([name, o]) => [name, { ...o, env: !except.includes(name) }]),
  ) as O;
}

/** `text` in lines of at most `WIDTH` characters, broken between words. */
function wrap(text: string): string[] {
  const lines = [""];
  for (const word of text.split(" ")) {
    const last = lines.at(-1)!;
    if (last !== "" && last.length + 1 + word.length > WIDTH) lines.push(word);
    else lines[lines.length - 1] = last === "" ? word : `${last} ${word}`;
  }
  return lines;
}

/** The environment variable of an option or setting: `DPO_` and its name in capitals. */
export function envName(name: string): string {
  return `DPO_${name.toUpperCase().replaceAll("-", "_")}`;
}

/** How a flag's or environment variable's text is read; `negated`: a `--no-X` switch that turns X off. */
export type Kind = "number" | "numbers" | "string" | "list" | "boolean" | "negated";

/** Reads a flag's or environment variable's text as a value of `kind` (not `negated`: that is a switch). */
export function readSettingText(text: string, kind: Exclude<Kind, "negated">): unknown {
  const number = (s: string) => {
    const n = Number(s.trim());
    if (s.trim() === "" || !Number.isFinite(n)) throw new Error("expected a number");
    return n;
  };
  switch (kind) {
    case "number":
      return number(text);
    case "numbers":
      return text.split(",").map(number);
    case "list":
      return text.split(",").map((s) => s.trim());
    case "boolean":
      if (/^(1|true|yes|on)$/i.test(text.trim())) return true;
      if (/^(0|false|no|off)$/i.test(text.trim())) return false;
      throw new Error("expected true or false");
    case "string":
      return text;
  }
}

/** The default a schema gives an absent option, as `--help` shows it; undefined for none (or off). */
function defaultOf(schema: z.ZodType): string | undefined {
  const parsed = schema.safeParse(undefined);
  if (!parsed.success || parsed.data === undefined || parsed.data === false) return undefined;
  if (Array.isArray(parsed.data)) return parsed.data.length === 0 ? undefined : parsed.data.join(",");
  return String(parsed.data);
}

/**
 * What `parseOptions` gives: `--help` asked, or the validated values and where each given one came from
 * (`--flag` or the environment variable), for messages.
 */
export type Parsed<O extends Options> =
  | { help: true }
  | { help: false; values: Values<O>; origin: Record<string, string> };

/**
 * Parses `args` strictly against `options` (plus `--help`, see `parseCommand`), takes the options not given
 * from the environment (`envName`), then validates every value, naming the flag or variable that is wrong.
 */
export function parseOptions<O extends Options>(
  args: string[],
  options: O,
  env: (name: string) => string | undefined = (name) => Deno.env.get(name),
): Parsed<O> {
  const spec = Object.fromEntries(
    Object.entries(options).map((
      [name, o],
    ) => [name, { type: o.type, ...(o.multiple ? { multiple: true } : {}), ...(o.short ? { short: o.short } : {}) }]),
  );
  const values: Record<string, unknown> = parseCommand(args, { ...spec, help: { type: "boolean", short: "h" } });
  if (values.help) return { help: true };
  const origin: Record<string, string> = {};
  const problems: string[] = [];
  for (const [name, o] of Object.entries(options)) {
    if (values[name] !== undefined) {
      origin[name] = `--${name}`;
      continue;
    }
    const text = o.env ? env(envName(name)) : undefined;
    if (text === undefined || text === "") continue;
    origin[name] = envName(name);
    if (o.type === "boolean") {
      try {
        values[name] = readSettingText(text, "boolean");
      } catch (err) {
        problems.push(`${envName(name)}: ${(err as Error).message}: current value is '${text}'`);
      }
    } else values[name] = o.multiple ? text.split(",").map((s) => s.trim()) : text;
  }
  const shape = Object.fromEntries(Object.entries(options).map(([name, o]) => [name, o.schema]));
  const parsed = z.object(shape).safeParse(values);
  if (!parsed.success) {
    for (const i of parsed.error.issues) {
      const name = String(i.path[0]);
      problems.push(
        `${origin[name] ?? `--${name}`}${i.path.length > 1 ? `.${i.path.slice(1).join(".")}` : ""}: ${i.message}`,
      );
    }
  }
  if (problems.length > 0 || !parsed.success) throw new UsageError(problems.join("; "));
  return { help: false, values: parsed.data as Values<O>, origin };
}
