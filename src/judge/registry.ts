/**
 * The judge kinds a judge spec names (`spec.ts`), each with the settings it takes and how it is built.
 * Adding a kind is an entry here (and its module): the spec syntax, every command's judge options, `start`'s
 * judge settings, the checks that a named judge has what it needs and that no setting is given for a judge
 * the spec does not name all come from `JUDGE_KINDS` and `JUDGE_SETTINGS`.
 */
import { z } from "zod";
import { findTask, TASK_NAMES } from "../tasks/registry.ts";
import { createHfJudge } from "./hf.ts";
import type { Judge } from "./types.ts";
import { createVerifierJudge, loadVerifierModule } from "./verifier.ts";
import { createWebhookJudge } from "./webhook.ts";

/** One member of a judge spec. */
export interface JudgeSpecMember {
  kind: JudgeKindName;
  /** The module, for `verifier`. */
  path?: string;
  /** The task, for `task`. */
  task?: string;
  /** Weight in an ensemble's majority (default 1). */
  weight: number;
}

/**
 * The settings judges take, by config key (`hf_model`; its flag `--hf-model`, its environment variable
 * `DPO_HF_MODEL`), each taken by one kind (`JudgeKind.settings`). Help in Markdown.
 */
export const JUDGE_SETTINGS = {
  hf_model: {
    metavar: "NAME",
    help: "model of the hf judge (on Hugging Face's inference router: its token in `HF_TOKEN`)",
    schema: z.string().min(1).optional(),
  },
  hf_endpoint: {
    metavar: "URL",
    help: "any OpenAI-compatible server for the hf judge (TGI, vLLM, llama.cpp)",
    schema: z.url().optional(),
  },
  judge_token: {
    metavar: "KEY",
    help: "bearer key the hf judge sends to its endpoint (else `HF_TOKEN` for Hugging Face hosts)",
    schema: z.string().min(1).optional(),
  },
  webhook_url: {
    metavar: "URL",
    help: "where the webhook judge POSTs pairs (signed with `DPO_WEBHOOK_SECRET`)",
    schema: z.url().optional(),
  },
  feedback_url: {
    metavar: "URL",
    help: "the feedback URL labelers answer to, `{id}` for the pair id",
    schema: z.url().optional(),
  },
} as const;

/** A judge setting's config key. */
export type JudgeSettingKey = keyof typeof JUDGE_SETTINGS;

/** The judge settings given. */
export type JudgeSettings = { [K in JudgeSettingKey]?: string };

/** What building a judge may use besides its settings. */
export interface JudgeBuildContext {
  settings: JudgeSettings;
  /** Secrets (`DPO_WEBHOOK_SECRET`). */
  env: (name: string) => string | undefined;
  /** Where a warning goes (an endpoint that answered oddly but works). */
  warn: (message: string) => void;
}

interface JudgeKind {
  /** How a spec names it, for usage texts. */
  syntax: string;
  /** The settings it takes (and no other kind). */
  settings: readonly JudgeSettingKey[];
  /** What it still needs, in a sentence (settings by config key), or undefined. */
  missing?: (settings: JudgeSettings, env: (name: string) => string | undefined) => string | undefined;
  /** Why it cannot be in an ensemble, where it cannot. */
  alone?: string;
  /** Builds it; throws an Error that says what is wrong (a module that does not load, an endpoint that refuses). */
  build: (member: JudgeSpecMember, context: JudgeBuildContext) => Promise<Judge>;
}

/** Every judge kind. */
export const JUDGE_KINDS = {
  task: {
    syntax: TASK_NAMES.join(" | "),
    settings: [],
    build: (member) => Promise.resolve(createVerifierJudge(findTask(member.task!)!, { id: member.task! })),
  },
  verifier: {
    syntax: "verifier:PATH",
    settings: [],
    build: async (member) =>
      createVerifierJudge(await loadVerifierModule(member.path!), { id: `verifier:${member.path}` }),
  },
  hf: {
    syntax: "hf",
    settings: ["hf_model", "hf_endpoint", "judge_token"],
    missing: (s) => s.hf_model || s.hf_endpoint ? undefined : "needs hf_model or hf_endpoint",
    build: async (_member, { settings, warn }) => {
      const hf = createHfJudge({
        model: settings.hf_model,
        endpointUrl: settings.hf_endpoint,
        token: settings.judge_token,
      });
      // A key the endpoint refuses, a wrong URL or model: a clear error now, not failures on every pair.
      const warning = await hf.probe();
      if (warning) warn(warning);
      return hf;
    },
  },
  webhook: {
    syntax: "webhook",
    settings: ["webhook_url", "feedback_url"],
    missing: (s, env) =>
      s.webhook_url && s.feedback_url && env("DPO_WEBHOOK_SECRET")
        ? undefined
        : "needs webhook_url and feedback_url (and DPO_WEBHOOK_SECRET)",
    alone: "a person's verdict arrives later",
    build: (_member, { settings, env }) =>
      Promise.resolve(
        createWebhookJudge({
          url: settings.webhook_url!,
          secret: env("DPO_WEBHOOK_SECRET")!,
          feedbackUrl: settings.feedback_url!,
        }),
      ),
  },
} satisfies Record<string, JudgeKind>;

/** The kinds a judge spec names. */
export type JudgeKindName = keyof typeof JUDGE_KINDS;

/** For each member of a spec that lacks what it needs: `judge KIND needs ...`. */
export function missingSettings(
  members: readonly JudgeSpecMember[],
  settings: JudgeSettings,
  env: (name: string) => string | undefined,
): string[] {
  const kinds = new Set(members.map((m) => m.kind));
  return [...kinds].flatMap((kind) => {
    const missing = (JUDGE_KINDS[kind] as JudgeKind).missing?.(settings, env);
    return missing ? [`judge ${kind} ${missing}`] : [];
  });
}

/** The given settings of judges the spec does not name, with the kind each is for. */
export function straySettings(
  members: readonly JudgeSpecMember[],
  settings: JudgeSettings,
): { key: JudgeSettingKey; kind: JudgeKindName }[] {
  const named = new Set(members.map((m) => m.kind));
  return Object.entries(JUDGE_KINDS).flatMap(([kind, k]) =>
    named.has(kind as JudgeKindName) ? [] : (k as JudgeKind).settings.filter((key) => settings[key] !== undefined)
      .map((key) => ({ key, kind: kind as JudgeKindName }))
  );
}

/** Builds one member of a spec (check `missingSettings` first). */
export function buildJudgeMember(member: JudgeSpecMember, context: JudgeBuildContext): Promise<Judge> {
  return (JUDGE_KINDS[member.kind] as JudgeKind).build(member, context);
}
