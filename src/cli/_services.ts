/** Building the judges the roles use from command-line options. */
import { DEFAULT_TASK, findTask } from "../tasks/registry.ts";
import { z } from "zod";
import { createEnsembleJudge, ENSEMBLE_RULES, type EnsembleRule } from "../judge/ensemble.ts";
import { createHfJudge } from "../judge/hf.ts";
import type { Judge } from "../judge/types.ts";
import { createVerifierJudge, loadVerifierModule } from "../judge/verifier.ts";
import { JUDGE_SPEC_SYNTAX, type JudgeSpecMember, parseJudgeSpec } from "../judge/spec.ts";
import { createWebhookJudge } from "../judge/webhook.ts";
import { UsageError } from "./common.ts";
import { text } from "./_options.ts";

/** Judge options shared by the roles that judge. */
export interface JudgeFlags {
  /** The judge spec (`src/judge/spec.ts`): `J[,J...]`, J = a task's name | verifier:PATH | hf | webhook, `*W` a weight. */
  judge: string;
  "hf-model"?: string;
  "hf-endpoint"?: string;
  "webhook-url"?: string;
  "feedback-url"?: string;
  /** How an ensemble combines votes (commands without the flag use the default). */
  "ensemble-rule"?: EnsembleRule;
  /** The hf judge's bearer key for any endpoint; default `DPO_JUDGE_TOKEN` (then `HF_TOKEN` for Hugging Face hosts). */
  "judge-token"?: string;
}

/** The judge options, as the commands that build a judge take them. */
export const JUDGE_OPTIONS = {
  judge: text(
    "J[,J...]",
    `${JUDGE_SPEC_SYNTAX} (verifier:PATH: a module exporting score(prompt, completion) or compare(prompt, a, b))`,
    z.string().min(1).default(DEFAULT_TASK),
  ),
  "hf-model": text("NAME", "model for the hf judge (HF_TOKEN for the Hugging Face router)"),
  "hf-endpoint": text("URL", "any OpenAI-compatible server for the hf judge (TGI, vLLM, llama.cpp)"),
  "judge-token": text("KEY", "bearer key the hf judge sends to its endpoint", z.string().min(1).optional(), {
    defaultText: "DPO_JUDGE_TOKEN",
  }),
  "webhook-url": text("URL", "where the webhook judge POSTs pairs (secret: DPO_WEBHOOK_SECRET)"),
  "feedback-url": text("URL", "the feedback URL labelers answer to, with {id} for the pair id"),
  "ensemble-rule": text(
    "R",
    "majority: members that voted a or b decide by weight; ties and failures abstain | unanimous: all members must " +
      "vote the same a or b",
    z.enum(ENSEMBLE_RULES).default("majority"),
  ),
};

/** Builds the configured judge (an ensemble when several are named); a bad spec or missing option is a UsageError. */
export async function buildJudge(flags: JudgeFlags, origin: Record<string, string> = {}): Promise<Judge> {
  let spec;
  try {
    spec = parseJudgeSpec(flags.judge);
  } catch (err) {
    throw new UsageError(`Cannot use --judge ${flags.judge}: ${(err as Error).message}`);
  }
  if (spec.human) throw new UsageError("--judge human: no judge to build");
  // An option for a judge the spec does not name would do nothing: refuse it, naming the judge it is for.
  const kinds = new Set(spec.members.map((m) => m.kind));
  const stray: [keyof JudgeFlags, string][] = [
    ["hf-model", "hf"],
    ["hf-endpoint", "hf"],
    ["judge-token", "hf"],
    ["webhook-url", "webhook"],
    ["feedback-url", "webhook"],
  ];
  for (const [flag, kind] of stray) {
    if (flags[flag] !== undefined && !kinds.has(kind as never)) {
      throw new UsageError(
        `${origin[flag] ?? `--${flag}`} is an option of the ${kind} judge, and --judge ${flags.judge} names none`,
      );
    }
  }
  const judges: Judge[] = [];
  for (const member of spec.members) judges.push(await buildMember(member, flags));
  if (judges.length === 1) return judges[0]!;
  try {
    return createEnsembleJudge(judges, { rule: flags["ensemble-rule"], weights: spec.members.map((m) => m.weight) });
  } catch (err) {
    throw new UsageError(`Cannot use --judge ${flags.judge}: ${(err as Error).message}`);
  }
}

async function buildMember(member: JudgeSpecMember, flags: JudgeFlags): Promise<Judge> {
  switch (member.kind) {
    case "task":
      return createVerifierJudge(findTask(member.task!)!, { id: member.task! });
    case "verifier":
      return createVerifierJudge(await loadVerifierModule(member.path!), { id: `verifier:${member.path}` });
    case "hf": {
      if (!flags["hf-model"] && !flags["hf-endpoint"]) {
        throw new UsageError("--judge hf needs --hf-model NAME or --hf-endpoint URL");
      }
      const token = flags["judge-token"] ?? (Deno.env.get("DPO_JUDGE_TOKEN") || undefined);
      const hf = createHfJudge({ model: flags["hf-model"], endpointUrl: flags["hf-endpoint"], token });
      // A key the endpoint refuses, a wrong URL or model: a clear error now, not failures on every pair.
      const warning = await hf.probe().catch((err) => {
        throw new UsageError((err as Error).message);
      });
      if (warning) console.error(warning);
      return hf;
    }
    case "webhook": {
      const secret = Deno.env.get("DPO_WEBHOOK_SECRET");
      if (!flags["webhook-url"] || !flags["feedback-url"] || !secret) {
        throw new UsageError("--judge webhook needs --webhook-url, --feedback-url and DPO_WEBHOOK_SECRET");
      }
      return createWebhookJudge({ url: flags["webhook-url"], secret, feedbackUrl: flags["feedback-url"] });
    }
  }
}
