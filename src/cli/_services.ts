/** Building the judges the roles use from command-line options. */
import { arithmeticVerifier } from "../judge/arithmetic.ts";
import { createEnsembleJudge, type EnsembleRule } from "../judge/ensemble.ts";
import { createHfJudge } from "../judge/hf.ts";
import type { Judge } from "../judge/types.ts";
import { createVerifierJudge, loadVerifierModule } from "../judge/verifier.ts";
import { createWebhookJudge } from "../judge/webhook.ts";
import { UsageError } from "./common.ts";

/** Judge options shared by the roles that judge. */
export interface JudgeFlags {
  judge: string;
  verifier?: string;
  "hf-model"?: string;
  "hf-endpoint"?: string;
  "webhook-url"?: string;
  "feedback-url"?: string;
  /** How an ensemble combines votes (commands without the flag use the default). */
  "ensemble-rule"?: EnsembleRule;
  /** The hf judge's bearer key for any endpoint; default `DPO_JUDGE_TOKEN` (then `HF_TOKEN` for Hugging Face hosts). */
  "judge-token"?: string;
}

/** Usage lines for the judge options. */
export const JUDGE_USAGE =
  `  --judge J[,J...]          arithmetic (built-in task) | verifier | hf | webhook; several: an ensemble
  --verifier PATH           module exporting score(prompt, completion) or compare(prompt, a, b)
  --hf-model NAME           model for the hf judge (HF_TOKEN for the Hugging Face router)
  --hf-endpoint URL         any OpenAI-compatible server for the hf judge (TGI, vLLM, llama.cpp); its key in
                            DPO_JUDGE_TOKEN (the judge command also takes --judge-token KEY)
  --webhook-url URL         where the webhook judge POSTs pairs (secret: DPO_WEBHOOK_SECRET)
  --feedback-url URL        the feedback URL labelers answer to, with {id} for the pair id`;

/** Builds the configured judge (an ensemble when several are named). */
export async function buildJudge(flags: JudgeFlags): Promise<Judge> {
  const judges: Judge[] = [];
  for (const name of flags.judge.split(",").map((s) => s.trim())) {
    switch (name) {
      case "arithmetic":
        judges.push(createVerifierJudge(arithmeticVerifier, { id: "arithmetic" }));
        break;
      case "verifier":
        if (!flags.verifier) throw new UsageError("--judge verifier needs --verifier PATH");
        judges.push(
          createVerifierJudge(await loadVerifierModule(flags.verifier), { id: `verifier:${flags.verifier}` }),
        );
        break;
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
        judges.push(hf);
        break;
      }
      case "webhook": {
        const secret = Deno.env.get("DPO_WEBHOOK_SECRET");
        if (!flags["webhook-url"] || !flags["feedback-url"] || !secret) {
          throw new UsageError("--judge webhook needs --webhook-url, --feedback-url and DPO_WEBHOOK_SECRET");
        }
        judges.push(createWebhookJudge({ url: flags["webhook-url"], secret, feedbackUrl: flags["feedback-url"] }));
        break;
      }
      default:
        throw new UsageError(`--judge: unknown judge '${name}' (arithmetic, verifier, hf, webhook)`);
    }
  }
  return judges.length === 1 ? judges[0]! : createEnsembleJudge(judges, { rule: flags["ensemble-rule"] });
}
