/** Building the judges the roles use from command-line options. */
import { DEFAULT_TASK } from "../tasks/registry.ts";
import { z } from "zod";
import { createEnsembleJudge, ENSEMBLE_RULES, type EnsembleRule } from "../judge/ensemble.ts";
import {
  buildJudgeMember,
  JUDGE_SETTINGS,
  type JudgeSettingKey,
  type JudgeSettings,
  missingSettings,
  straySettings,
} from "../judge/registry.ts";
import type { Judge } from "../judge/types.ts";
import { JUDGE_SPEC_SYNTAX, parseJudgeSpec } from "../judge/spec.ts";
import { UsageError } from "./common.ts";
import { type Option, text } from "./_options.ts";

/** The judge a command builds: its spec, the settings of the judges it names, an ensemble's rule. */
export interface JudgeChoice {
  /** The judge spec (`src/judge/spec.ts`): `J[,J...]`, J = a task's name | verifier:PATH | hf | webhook, `*W` a weight. */
  judge: string;
  /** The judge settings, by config key. */
  settings: JudgeSettings;
  /** How an ensemble combines votes (commands without the flag use the default). */
  ensembleRule?: EnsembleRule;
  /**
   * Where each setting came from, by config key (`--hf-model`, `DPO_HF_MODEL`), for messages; default its
   * flag. A setting from the environment, which other commands share, is not refused for a judge not named.
   */
  origin?: Partial<Record<JudgeSettingKey, string>>;
  /** Leave unused, rather than refuse, a setting for a judge not named (`start`: settings of many sources). */
  ignoreStrays?: boolean;
}

const flagOf = (key: string) => key.replaceAll("_", "-");

/** The judge options, as the commands that build a judge take them (read with `judgeChoice`). */
export const JUDGE_OPTIONS = {
  judge: text(
    "J[,J...]",
    `${JUDGE_SPEC_SYNTAX} (verifier:PATH: a module exporting score(prompt, completion) or compare(prompt, a, b))`,
    z.string().min(1).default(DEFAULT_TASK),
  ),
  ...Object.fromEntries(
    Object.entries(JUDGE_SETTINGS).map(([key, s]) => [flagOf(key), text(s.metavar, s.help.replaceAll("`", ""))]),
  ) as Record<string, Option<z.ZodOptional<z.ZodString>>>,
  "ensemble-rule": text(
    "R",
    "majority: members that voted a or b decide by weight; ties and failures abstain | unanimous: all members must " +
      "vote the same a or b",
    z.enum(ENSEMBLE_RULES).default("majority"),
  ),
};

/** The judge choice in a command's parsed options (`parseOptions`'s values and origin). */
export function judgeChoice(values: Record<string, unknown>, origin: Record<string, string> = {}): JudgeChoice {
  const settings: JudgeSettings = {};
  const from: Partial<Record<JudgeSettingKey, string>> = {};
  for (const key of Object.keys(JUDGE_SETTINGS) as JudgeSettingKey[]) {
    const value = values[flagOf(key)];
    if (typeof value !== "string") continue;
    settings[key] = value;
    from[key] = origin[flagOf(key)] ?? `--${flagOf(key)}`;
  }
  return {
    judge: String(values.judge),
    settings,
    ensembleRule: values["ensemble-rule"] as EnsembleRule | undefined,
    origin: from,
  };
}

/** Builds the chosen judge (an ensemble when several are named); a bad spec or missing setting is a UsageError. */
export async function buildJudge(choice: JudgeChoice): Promise<Judge> {
  let spec;
  try {
    spec = parseJudgeSpec(choice.judge);
  } catch (err) {
    throw new UsageError(`Cannot use --judge ${choice.judge}: ${(err as Error).message}`);
  }
  if (spec.human) throw new UsageError("--judge human: no judge to build");
  const origin = (key: JudgeSettingKey) => choice.origin?.[key] ?? `--${flagOf(key)}`;
  // A setting for a judge the spec does not name would do nothing: refuse it, naming the judge it is for.
  for (const { key, kind } of choice.ignoreStrays ? [] : straySettings(spec.members, choice.settings)) {
    if (origin(key).startsWith("DPO_")) continue;
    throw new UsageError(`${origin(key)} is an option of the ${kind} judge, and --judge ${choice.judge} names none`);
  }
  const env = (name: string) => Deno.env.get(name) || undefined;
  const missing = missingSettings(spec.members, choice.settings, env);
  if (missing.length > 0) {
    const keys = new RegExp(`\\b(${Object.keys(JUDGE_SETTINGS).join("|")})\\b`, "g");
    throw new UsageError(`--${missing.join("; --").replace(keys, (key) => `--${flagOf(key)}`)}`);
  }
  const judges: Judge[] = [];
  for (const member of spec.members) {
    try {
      judges.push(await buildJudgeMember(member, { settings: choice.settings, env, warn: (m) => console.error(m) }));
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
  }
  if (judges.length === 1) return judges[0]!;
  try {
    return createEnsembleJudge(judges, { rule: choice.ensembleRule, weights: spec.members.map((m) => m.weight) });
  } catch (err) {
    throw new UsageError(`Cannot use --judge ${choice.judge}: ${(err as Error).message}`);
  }
}
