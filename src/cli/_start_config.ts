/**
 * The settings of `start`: one zod schema, one table naming each setting's flag and environment
 * variable, and four sources merged with flags over the environment over the config file over the
 * defaults. Every problem names where its value came from (`--beta`, `DPO_BETA`,
 * `dpo.config.json: beta`) and what is expected.
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { ParseArgsConfig } from "node:util";
import { z } from "zod";
import { DpoConfigSchema, type DpoSettings } from "../dpo/config.ts";
import { ENSEMBLE_RULES } from "../judge/ensemble.ts";
import { DEFAULT_TASK, findTask } from "../tasks/registry.ts";
import { JUDGE_SPEC_SYNTAX, type JudgeSpecMember, parseJudgeSpec } from "../judge/spec.ts";
import { JUDGE_SETTINGS, type JudgeSettingKey, missingSettings } from "../judge/registry.ts";
import { BACKENDS } from "../model/kernels/backend.ts";
import { CheckpointsSpecSchema } from "../store/open.ts";
import { DPO_SETTINGS, schemaKind } from "./_dpo_flags.ts";
import { envName, type Kind, readSettingText } from "./_options.ts";
import { closest } from "../util/names.ts";
import { ConfigError } from "./common.ts";

/** The model `start` uses when none is given: the shipped base policy (scripts/make_base_model.ts). */
export const DEFAULT_MODEL = fileURLToPath(new URL("../../models/arith-tiny", import.meta.url));

/** The config file read when it exists and no other is named. */
export const DEFAULT_CONFIG_FILE = "dpo.config.json";

const PositiveInt = z.number().int().positive();

// The judges' settings, as the judge registry declares them.
const JUDGE_SETTINGS_SHAPE = Object.fromEntries(
  Object.entries(JUDGE_SETTINGS).map(([key, s]) => [key, s.schema]),
) as { [K in JudgeSettingKey]: (typeof JUDGE_SETTINGS)[K]["schema"] };
const Count = z.number().int().nonnegative();

// Offline-only DPO settings: online training has no planned end and no data order to seed.
const { seed: _seed, max_steps: _maxSteps, num_train_epochs: _epochs, ...DPO_SHAPE } = DpoConfigSchema.shape;

/** The DPO settings `start` takes (TRL names). */
export const DPO_KEYS = Object.keys(DPO_SHAPE) as (keyof typeof DPO_SHAPE)[];

/** The settings, with the defaults of everything but training and the feeder (those come from `START_DEFAULTS`). */
export const StartConfigSchema = z.strictObject({
  model: z.string().min(1).default(DEFAULT_MODEL),
  backend: z.enum(BACKENDS).default("auto"),
  data_dir: z.string().min(1).default("data"),
  kv: z.string().min(1).optional(),
  checkpoints: CheckpointsSpecSchema.optional(),
  host: z.string().min(1).default("127.0.0.1"),
  port: z.number().int().min(0).max(65535).default(8000),
  rate_limit: PositiveInt.default(600),
  serve_poll_ms: PositiveInt.default(1000),
  judge: z.string().superRefine((spec, ctx) => {
    try {
      parseJudgeSpec(spec, { allowHuman: true });
    } catch (err) {
      ctx.addIssue({ code: "custom", message: (err as Error).message });
    }
  }).default(DEFAULT_TASK),
  ...JUDGE_SETTINGS_SHAPE,
  ensemble_rule: z.enum(ENSEMBLE_RULES).default("majority"),
  judge_concurrency: PositiveInt.default(4),
  judge_max_attempts: PositiveInt.default(5),
  task: z.string().min(1).default(DEFAULT_TASK),
  // Training and the feeder: no defaults here, START_DEFAULTS holds them all.
  feeder: z.boolean(),
  n: z.number().int().min(2).max(8),
  temperature: z.number().min(0).max(2),
  max_new_tokens: z.number().int().min(1).max(512),
  feeder_concurrency: PositiveInt,
  feeder_pause_ms: Count,
  feeder_max_backlog: PositiveInt,
  mode: z.enum(["stream", "rounds"]),
  round_size: PositiveInt,
  round_epochs: PositiveInt,
  ref_refresh_rounds: Count,
  publish_every: PositiveInt,
  max_staleness: Count,
  kto_batch: Count.refine((n) => n !== 1, "a KTO step needs at least 2 thumbs (0 turns them off)"),
  keep: PositiveInt,
  trainer_poll_ms: PositiveInt,
  eval_prompts: Count,
  promotion: z.enum(["gate", "always"]),
  gate_prompts: PositiveInt,
  gate_margin: z.number().min(0).max(1),
  gate_confidence: z.number().gt(0.5).lt(1),
  gate_reset_after: Count,
  ...DPO_SHAPE,
}).superRefine((c, ctx) => {
  const problem = (key: string, message: string) => ctx.addIssue({ code: "custom", path: [key], message });
  for (const missing of missingSettings(judgeMembers(c.judge), c, () => "checked when the judge is built")) {
    problem("judge", missing);
  }
  const task = findTask(c.task);
  const gated = c.promotion === "gate" && c.eval_prompts > 0 ? c.gate_prompts : 0;
  if (task && c.eval_prompts + gated > task.heldOutSize) {
    problem(
      "eval_prompts",
      `eval_prompts${gated ? " + gate_prompts" : ""} must fit in the task's ${task.heldOutSize} held-out prompts`,
    );
  }
  if (c.kv === ":memory:") {
    problem("kv", "the trainer runs in a worker with a KV connection of its own: give a file path or a URL");
  }
  if (c.sync_ref_model && c.mode === "rounds" && c.ref_refresh_rounds > 0) {
    problem(
      "sync_ref_model",
      "choose one reference schedule: sync_ref_model (TR-DPO soft mix) or ref_refresh_rounds (a copy every N rounds; set it to 0)",
    );
  }
  if (c.use_peft && c.mode === "rounds" && c.ref_refresh_rounds > 0) {
    problem(
      "ref_refresh_rounds",
      "with use_peft the reference is the frozen base and is never refreshed: set it to 0",
    );
  }
  // The trainer gathers a version's pairs before it publishes, and they count as the feeder's backlog until then.
  const perVersion = c.mode === "rounds"
    ? c.round_size
    : c.per_device_train_batch_size * c.gradient_accumulation_steps * c.publish_every;
  if (c.feeder && c.feeder_max_backlog < perVersion) {
    problem(
      "feeder_max_backlog",
      `the trainer waits for ${perVersion} pairs per version (${
        c.mode === "rounds" ? "round_size" : "batch × publish_every"
      }) and the feeder would stop at ${c.feeder_max_backlog}: set it to at least ${perVersion}`,
    );
  }
  // The DPO engine's rules across its settings (each setting's own checks ran above, as part of this schema).
  const dpo = DpoConfigSchema.safeParse(dpoSettings(c));
  for (const issue of dpo.success ? [] : dpo.error.issues.filter((i) => i.code === "custom")) {
    problem(String(issue.path[0] ?? "beta"), issue.message);
  }
});

/** The settings as given (any may be missing but those of `START_DEFAULTS`). */
export type StartConfigInput = z.input<typeof StartConfigSchema>;

/** The training and feeder settings, whose defaults all live in one object, `START_DEFAULTS`. */
export const TRAINING_KEYS = [
  "feeder",
  "n",
  "temperature",
  "max_new_tokens",
  "feeder_concurrency",
  "feeder_pause_ms",
  "feeder_max_backlog",
  "mode",
  "round_size",
  "round_epochs",
  "ref_refresh_rounds",
  "publish_every",
  "max_staleness",
  "keep",
  "trainer_poll_ms",
  "eval_prompts",
] as const;

/** Defaults for `start`: every training and feeder setting, and any other setting to override. */
export type StartDefaults = Pick<StartConfigInput, typeof TRAINING_KEYS[number]> & Partial<StartConfigInput>;

/** The validated settings, with the KV and checkpoint locations resolved against the data directory. */
export type StartConfig = z.infer<typeof StartConfigSchema> & { kv: string; checkpoints: string };

/** The DPO settings of a config, by TRL name (absent ones left out, so the engine's defaults apply). */
export function dpoSettings(c: Record<string, unknown>): DpoSettings {
  return Object.fromEntries(DPO_KEYS.filter((k) => c[k] !== undefined).map((k) => [k, c[k]])) as DpoSettings;
}

interface SettingDoc {
  flag: string;
  kind: Kind;
  metavar: string;
  help: string;
  section: Section;
  /** Shown instead of the value when the default is derived. */
  defaultText?: string;
}

type Section = "general" | "server" | "judge" | "feeder" | "trainer" | "dpo";

const SECTIONS: Record<Section, string> = {
  general: "General",
  server: "Server",
  judge: "Judge",
  feeder: "Task and prompt feeder",
  trainer: "Trainer (a Web Worker) and evaluation",
  dpo: "DPO (TRL's names)",
};

type StartKey = keyof z.infer<typeof StartConfigSchema>;
type OwnKey = Exclude<StartKey, typeof DPO_KEYS[number] | JudgeSettingKey>;

const OWN_DOCS: Record<OwnKey, Omit<SettingDoc, "flag" | "kind"> & { flag?: string; kind?: Kind }> = {
  model: {
    metavar: "DIR|hf:OWNER/NAME",
    help: "the base policy: trained from when nothing is published, and what versions are evaluated against",
    section: "general",
    defaultText: "`models/arith-tiny` (shipped)",
  },
  backend: { metavar: BACKENDS.join("|"), help: "compute backend of the server and the trainer", section: "general" },
  data_dir: { metavar: "DIR", help: "local state: KV file, checkpoints, trainer state, keys", section: "general" },
  kv: {
    metavar: "PATH|URL",
    help: "the KV: a file, or an http(s) URL of a remote KV (token in `DENO_KV_ACCESS_TOKEN`)",
    section: "general",
    defaultText: "`DATA_DIR/dpo.kv`",
  },
  checkpoints: {
    metavar: "dir:PATH|kv",
    help: "where policy versions are published: a directory, or KV itself",
    section: "general",
    defaultText: "`dir:DATA_DIR/checkpoints`",
  },
  host: { metavar: "HOST", help: "where the server listens", section: "server" },
  port: { metavar: "N", help: "port; 0 picks a free one", section: "server" },
  rate_limit: {
    metavar: "N",
    help:
      "requests per minute per API key, counted in KV across instances (the feeder has a key of its own, not limited)",
    section: "server",
  },
  serve_poll_ms: { metavar: "MS", help: "how often the server looks for a new policy version", section: "server" },
  judge: {
    metavar: "J[,J...]|human",
    help: `${JUDGE_SPEC_SYNTAX}; \`human\`: none, pairs wait for the label page or the feedback API`,
    section: "judge",
  },
  ensemble_rule: {
    metavar: ENSEMBLE_RULES.join("|"),
    help: "how an ensemble's votes combine: by weight among a/b votes, or all the same",
    section: "judge",
  },
  judge_concurrency: { metavar: "N", help: "pairs judged at once", section: "judge" },
  judge_max_attempts: {
    metavar: "N",
    help: "failed judgments of a pair before it ends `judge_failed`",
    section: "judge",
  },
  task: {
    metavar: "TASK|FILE",
    help: "the prompts: a built-in task (`arithmetic`: prompts, held-out evaluation, checker; `src/tasks/`), " +
      'or a prompt file (one per line; `*.jsonl`: `{"prompt"}`, text or chat)',
    section: "feeder",
  },
  feeder: {
    flag: "no-feeder",
    kind: "negated",
    metavar: "",
    help: "run the prompt feeder, which keeps asking the server for pairs (`--no-feeder`: only API clients do)",
    section: "feeder",
  },
  n: { metavar: "N", help: "responses sampled per prompt; the judge sees the best and the worst", section: "feeder" },
  temperature: { metavar: "T", help: "sampling temperature of the feeder's pairs", section: "feeder" },
  max_new_tokens: { metavar: "N", help: "longest response of the feeder's pairs", section: "feeder" },
  feeder_concurrency: { metavar: "N", help: "feeder requests in flight", section: "feeder" },
  feeder_pause_ms: { metavar: "MS", help: "feeder's wait after each request", section: "feeder" },
  feeder_max_backlog: {
    metavar: "N",
    help: "the feeder waits while this many pairs await judgment, training or the gate: at least a version's pairs",
    section: "feeder",
  },
  mode: {
    metavar: "stream|rounds",
    help: "a step per batch as pairs arrive, or rounds of `round_size` pairs",
    section: "trainer",
  },
  round_size: { metavar: "K", help: "rounds mode: labeled pairs per round", section: "trainer" },
  round_epochs: { metavar: "E", help: "rounds mode: passes over a round", section: "trainer" },
  ref_refresh_rounds: {
    metavar: "N",
    help: "rounds mode: copy the policy into the reference every N rounds (0: never; with `use_peft`: 0)",
    section: "trainer",
  },
  publish_every: { metavar: "N", help: "stream mode: publish every N steps", section: "trainer" },
  max_staleness: {
    metavar: "V",
    help: "end pairs sampled more than V versions back as `stale`, untrained",
    section: "trainer",
  },
  kto_batch: {
    metavar: "N",
    help: "thumbs up/down per KTO step, trained between the DPO steps (0: thumbs are not trained)",
    section: "trainer",
  },
  keep: { metavar: "N", help: "published versions kept", section: "trainer" },
  trainer_poll_ms: { metavar: "MS", help: "trainer's wait when there are not enough pairs", section: "trainer" },
  promotion: {
    metavar: "gate|always",
    help:
      "gate: serve a trained policy only when it is not worse than the best served so far on held-out prompts of the " +
      "gate's own (a task with evaluation; otherwise always); always: every one",
    section: "trainer",
  },
  gate_prompts: {
    metavar: "N",
    help: "the gate's held-out prompts, apart from `eval_prompts` (together at most the task's: 1,991 for arithmetic)",
    section: "trainer",
  },
  gate_margin: {
    metavar: "M",
    help: "how far below the best served version's accuracy a candidate may be and still pass",
    section: "trainer",
  },
  gate_confidence: { metavar: "C", help: "one-sided confidence of the gate's bound", section: "trainer" },
  gate_reset_after: {
    metavar: "N",
    help:
      "after N candidates refused in a row, train again from the served version, the refused ones' pairs included (0: never, train on from the last candidate)",
    section: "trainer",
  },
  eval_prompts: {
    metavar: "N",
    help: "held-out prompts every version is evaluated on, with a task (not a prompt file; 0: none)",
    section: "trainer",
  },
};

/** Every setting's flag, kind, metavar, help and section, by config key. */
export const SETTING_DOCS: Record<StartKey, SettingDoc> = {
  ...Object.fromEntries(
    Object.entries(OWN_DOCS).flatMap(([key, d]) => [
      [key, { flag: key.replaceAll("_", "-"), kind: ownKind(key), ...d }],
      // The judges' own settings (`src/judge/registry.ts`) right after the judge.
      ...(key !== "judge" ? [] : Object.entries(JUDGE_SETTINGS).map(([k, s]) => [k, {
        flag: k.replaceAll("_", "-"),
        kind: "string" as const,
        metavar: s.metavar,
        help: s.help,
        section: "judge" as const,
      }])),
    ]),
  ),
  ...Object.fromEntries(
    DPO_SETTINGS.filter((s) => !s.offlineOnly).map((s) => [s.field, {
      flag: s.flag,
      kind: s.kind,
      metavar: s.metavar,
      help: s.onlineHelp,
      section: "dpo",
      defaultText: s.defaultText,
    }]),
  ),
} as Record<StartKey, SettingDoc>;

/** The parseArgs spec of `start`: a flag per setting, and --config, --help. */
export function startFlagSpec(): NonNullable<ParseArgsConfig["options"]> {
  const spec: NonNullable<ParseArgsConfig["options"]> = {
    help: { type: "boolean", short: "h" },
    config: { type: "string" },
  };
  for (const doc of Object.values(SETTING_DOCS)) {
    spec[doc.flag] = { type: doc.kind === "boolean" || doc.kind === "negated" ? "boolean" : "string" };
  }
  return spec;
}

/** Where the settings come from, highest precedence first. */
export interface StartConfigSources {
  /** Parsed flags (`startFlagSpec`), by flag name. */
  flags: Record<string, unknown>;
  /** The environment. */
  env: (name: string) => string | undefined;
  /** The config file's path (as given, for messages) and its JSON object. */
  file?: { path: string; values: Record<string, unknown> };
  defaults: StartDefaults;
}

/** Merges the sources (flags > environment > file > defaults) and validates the result as one config. */
export function resolveStartConfig(sources: StartConfigSources): StartConfig {
  const merged: Record<string, unknown> = {};
  const origin: Record<string, string> = {};
  const problems: string[] = [];
  const put = (key: string, value: unknown, from: string) => {
    merged[key] = value;
    origin[key] = from;
  };
  for (const [key, value] of Object.entries(sources.defaults)) {
    if (value !== undefined) put(key, value, `the default of ${key}`);
  }
  for (const [key, value] of Object.entries(sources.file?.values ?? {})) {
    put(key, value, `${sources.file!.path}: ${key}`);
  }
  for (const [key, doc] of Object.entries(SETTING_DOCS)) {
    const name = envName(key);
    const text = sources.env(name);
    if (text === undefined || text === "") continue;
    try {
      put(key, readSettingText(text, doc.kind === "negated" ? "boolean" : doc.kind), name);
    } catch (err) {
      problems.push(`Cannot use ${name}: ${(err as Error).message}: current value is '${text}'`);
    }
  }
  for (const [key, doc] of Object.entries(SETTING_DOCS)) {
    const value = sources.flags[doc.flag];
    if (value === undefined) continue;
    try {
      put(
        key,
        doc.kind === "negated" ? !value : doc.kind === "boolean" ? value : readSettingText(String(value), doc.kind),
        `--${doc.flag}`,
      );
    } catch (err) {
      problems.push(`Cannot use --${doc.flag}: ${(err as Error).message}: current value is '${value}'`);
    }
  }
  // With use_peft the reference is the frozen base: the default round-level refresh gives way (a refresh
  // asked for explicitly is an error below).
  if (merged.use_peft === true && origin.ref_refresh_rounds === "the default of ref_refresh_rounds") {
    put("ref_refresh_rounds", 0, "use_peft");
  }
  // A value that cannot be read is left out (the layer below stands in), so that every problem is named at once.
  const parsed = StartConfigSchema.safeParse(merged);
  if (!parsed.success) problems.push(...parsed.error.issues.map((issue) => describeIssue(issue, merged, origin)));
  if (problems.length > 0 || !parsed.success) throw new ConfigError(problems.join("; "));
  const c = parsed.data;
  return {
    ...c,
    kv: c.kv ?? join(c.data_dir, "dpo.kv"),
    checkpoints: c.checkpoints ?? `dir:${join(c.data_dir, "checkpoints")}`,
  };
}

/** Reads a config file: a JSON object of settings by config key. */
export async function readStartConfigFile(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    throw new ConfigError(`Cannot read config file '${path}': ${(err as Error).message}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`Cannot read config file '${path}' as it is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ConfigError(`Cannot read config file '${path}' as it must hold a JSON object of settings`);
  }
  return value as Record<string, unknown>;
}

/** The settings part of `--help`: each flag with its environment variable, config key and default. */
export function settingsUsage(defaults: StartDefaults): string {
  const shown = StartConfigSchema.safeParse({ ...defaults });
  const values: Record<string, unknown> = shown.success ? shown.data : { ...defaults };
  const lines: string[] = [];
  for (const [section, title] of Object.entries(SECTIONS)) {
    lines.push("", `${title}:`);
    for (const [key, doc] of Object.entries(SETTING_DOCS)) {
      if (doc.section !== section) continue;
      const flag = `--${doc.flag}${doc.metavar ? ` ${doc.metavar}` : ""}`;
      lines.push(`  ${flag}`);
      const value = plain(doc.defaultText ?? formatValue(values[key]));
      lines.push(`      ${plain(doc.help)} (default ${value})`);
      lines.push(`      env ${envName(key)}, config "${key}"`);
    }
  }
  return lines.join("\n");
}

/**
 * The settings as the configuration reference's Markdown table: flag, environment variable, config key, default,
 * meaning (`deno task docs` writes it into docs/configuration.md; a test holds the docs to it).
 */
export function settingsTable(defaults: StartDefaults): string {
  const shown = StartConfigSchema.safeParse({ ...defaults });
  const values: Record<string, unknown> = shown.success ? shown.data : { ...defaults };
  const cell = (text: string) => text.replaceAll("|", "\\|");
  const code = (text: string) => `\`${cell(text)}\``;
  const rows = ["| flag | env | config key | default | meaning |", "| --- | --- | --- | --- | --- |"];
  for (const [section, title] of Object.entries(SECTIONS)) {
    rows.push(`| **${title}** | | | | |`);
    for (const [key, doc] of Object.entries(SETTING_DOCS)) {
      if (doc.section !== section) continue;
      const flag = code(`--${doc.flag}${doc.metavar ? ` ${doc.metavar}` : ""}`);
      const value = doc.defaultText ?? (values[key] === undefined ? "none" : code(formatValue(values[key])));
      rows.push(`| ${flag} | ${code(envName(key))} | ${code(key)} | ${value} | ${cell(doc.help)} |`);
    }
  }
  return rows.join("\n");
}

/** Help text as the terminal shows it: the Markdown code marks dropped. */
function plain(text: string): string {
  return text.replaceAll("`", "");
}

/** The members of a valid judge spec (none for `human`); [] for an invalid one (reported on its own). */
function judgeMembers(spec: string): JudgeSpecMember[] {
  try {
    const parsed = parseJudgeSpec(spec, { allowHuman: true });
    return parsed.human ? [] : parsed.members;
  } catch {
    return [];
  }
}

// The kind follows from the schema, so the table cannot disagree with it.
function ownKind(key: string): Kind {
  return schemaKind((StartConfigSchema.shape as Record<string, z.ZodType>)[key]!);
}

function describeIssue(
  issue: z.core.$ZodIssue,
  merged: Record<string, unknown>,
  origin: Record<string, string>,
): string {
  if (issue.code === "unrecognized_keys") {
    return issue.keys.map((key) => {
      const near = closest(key, Object.keys(SETTING_DOCS));
      return `Cannot use ${origin[key] ?? key}: unknown setting${near ? ` (did you mean '${near}'?)` : ""}`;
    }).join("; ");
  }
  const key = String(issue.path[0] ?? "");
  const value = merged[key];
  if (value === undefined) return `Cannot start without setting '${key}': it is required`;
  // A rule across settings says what is wrong in its own words; a value's check gets the value.
  const current = issue.code === "custom" ? "" : `: current value is ${JSON.stringify(value)}`;
  return `Cannot use ${origin[key] ?? key}: ${issue.message}${current}`;
}

function formatValue(v: unknown): string {
  if (v === undefined) return "none";
  if (Array.isArray(v)) return v.join(",");
  return String(v);
}
