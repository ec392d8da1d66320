/** `train`: offline DPO on a preference dataset; one JSON line of metrics per optimizer step. */
import { z } from "zod";
import { describeBackend, initBackend } from "../model/kernels/backend.ts";
import { type LoadedModel, loadModel } from "../model/io/checkpoint.ts";
import { resolveModel } from "../model/io/hub.ts";
import { createTrainer, loadTrainingCheckpoint, saveTrainingCheckpoint } from "../dpo/checkpoint.ts";
import { parseDpoConfig } from "../dpo/config.ts";
import { configFromFlags, dpoFlagSpec, flagUsage } from "./_dpo_flags.ts";
import { type BadLine, readKtoExamples, readPreferences } from "../dpo/data.ts";
import type { KtoExample, PreferencePair } from "../dpo/trainer.ts";
import { plannedSteps, trainOffline } from "../dpo/offline.ts";
import { createProgress } from "../util/progress.ts";
import {
  backendOption,
  log,
  MODEL_OPTIONS,
  MODEL_USAGE,
  numberOption,
  parseCommand,
  UsageError,
  validate,
  writeStdout,
} from "./common.ts";

/** Usage text of the command. */
export const TRAIN_USAGE = `Usage: deno task cli train --model DIR --data FILE.jsonl --out DIR [options]

Offline DPO. Data lines in TRL's formats: {"prompt", "chosen", "rejected"} as strings, or as lists of
{"role", "content"} messages (rendered with the model's chat template), or {"chosen", "rejected"}
message lists that share their leading prompt messages. Prints one JSON line of metrics per optimizer
step; writes the trained model (Hugging Face layout) and everything needed to resume to --out.

${MODEL_USAGE}
  --data FILE.jsonl                 preference pairs
  --out DIR                         where the trained model and its training state go
  --ref DIR|hf:...                  reference model (default: the starting model)
  --resume DIR                      continue from a checkpoint written by this command
  --config FILE.json                settings with TRL's names (beta, loss_type, ...); flags override them
  --on-bad-line fail|skip           a malformed data line stops the run (default) or is skipped with a warning
  --kto                             the data is unpaired feedback {"prompt", "completion", "label": bool}: train KTO
                                    (--desirable-weight, --undesirable-weight)
  --save-steps N                    also write --out every N steps
${flagUsage()}`;

const Options = z.object({
  model: z.string().optional(),
  data: z.string({ error: "is required" }),
  out: z.string({ error: "is required" }),
  ref: z.string().optional(),
  resume: z.string().optional(),
  config: z.string().optional(),
  backend: backendOption,
  "cache-dir": z.string().optional(),
  "on-bad-line": z.enum(["fail", "skip"]).default("fail"),
  kto: z.boolean().default(false),
  "save-steps": numberOption((n) => n.int().positive()).optional(),
}).refine((o) => o.model !== undefined || o.resume !== undefined, {
  path: ["model"],
  message: "is required (or --resume a checkpoint)",
});

/** Runs the command. */
export async function runTrain(args: string[]): Promise<void> {
  const flagSpec = dpoFlagSpec();
  const values = parseCommand(args, {
    ...MODEL_OPTIONS,
    data: { type: "string" },
    out: { type: "string" },
    ref: { type: "string" },
    resume: { type: "string" },
    config: { type: "string" },
    "on-bad-line": { type: "string" },
    kto: { type: "boolean" },
    "save-steps": { type: "string" },
    ...flagSpec,
  });
  if (values.help) return void console.log(TRAIN_USAGE);
  const opts = validate(Options, values);
  const fromFile = opts.config ? await readConfigFile(opts.config) : {};
  const report = await initBackend(opts.backend);
  log(describeBackend(report));

  let policy: LoadedModel, reference: LoadedModel | null;
  let resumeState: Awaited<ReturnType<typeof loadTrainingCheckpoint>> | undefined;
  let config;
  if (opts.resume) {
    resumeState = await loadTrainingCheckpoint(opts.resume);
    ({ policy, reference } = resumeState);
    config = parseDpoConfig({ ...resumeState.config, ...fromFile, ...configFromFlags(values) });
    log(`resuming from ${opts.resume} at step ${resumeState.trainerState.step}`);
  } else {
    config = parseDpoConfig({ ...fromFile, ...configFromFlags(values) }, "the training settings");
    if (opts.ref && config.use_peft) {
      throw new UsageError("--ref: with --use-peft the reference is the model itself with its adapter off");
    }
    const policyDir = await resolveModel(opts.model!, { cacheDir: opts["cache-dir"] });
    policy = await loadModel(policyDir);
    // The reference has weights of its own, even when it starts as the policy; with LoRA it is the base.
    const refDir = opts.ref ? await resolveModel(opts.ref, { cacheDir: opts["cache-dir"] }) : policyDir;
    reference = config.use_peft || policy.model.adapter ? null : await loadModel(refDir, { trainable: false });
  }
  const maxLength = Math.min(config.max_length ?? Infinity, policy.model.contextLength);
  const text = await Deno.readTextFile(opts.data).catch((err) => {
    throw new Error(`Cannot read data file '${opts.data}': ${(err as Error).message}`);
  });
  const read = { onBadLine: opts["on-bad-line"], maxLength };
  let pairs: PreferencePair[] | undefined, kto: KtoExample[] | undefined, bad: BadLine[];
  if (opts.kto) ({ examples: kto, bad } = readKtoExamples(text, policy.tokenizer, opts.data, read));
  else ({ pairs, bad } = readPreferences(text, policy.tokenizer, opts.data, read));
  const data = { pairs, kto, bad, n: (pairs ?? kto!).length };
  for (const b of data.bad) log(`skipped '${opts.data}' line ${b.line}: ${b.problem}`);
  const trainer = createTrainer(policy, reference, config, resumeState);
  const total = plannedSteps(data.n, config);
  const what = opts.kto ? "KTO examples" : `pairs, loss ${config.loss_type}`;
  log(`training: ${data.n} ${what} (${data.bad.length} skipped), ${total} optimizer steps`);
  const progress = createProgress({ unit: "steps", total: total - trainer.step });
  const stop = new AbortController();
  const onSigint = () => {
    log("stopping after this step (Ctrl-C again to abort)");
    stop.abort();
    Deno.removeSignalListener("SIGINT", onSigint);
  };
  Deno.addSignalListener("SIGINT", onSigint);
  const save = async (step: number) => {
    await saveTrainingCheckpoint(opts.out, trainer, { policy, reference });
    log(`saved step ${step} to ${opts.out}`);
  };
  try {
    await trainOffline({
      trainer,
      pairs: data.pairs,
      kto: data.kto,
      saveSteps: opts["save-steps"],
      signal: stop.signal,
      onSave: save,
      onStep: async (m) => {
        await writeStdout(JSON.stringify(m) + "\n");
        if (m.skipped) log(`step ${m.step}: non-finite loss or gradient, update skipped`);
        progress.tick();
      },
    });
  } finally {
    Deno.removeSignalListener("SIGINT", onSigint);
    progress.done();
  }
  policy.model.dispose();
  reference?.model.dispose();
  trainer.optimizer.dispose();
}

async function readConfigFile(path: string): Promise<Record<string, unknown>> {
  try {
    const value = JSON.parse(await Deno.readTextFile(path));
    if (typeof value !== "object" || value === null || Array.isArray(value)) throw new Error("not a JSON object");
    return value;
  } catch (err) {
    throw new Error(`Cannot read config file '${path}': ${(err as Error).message}`);
  }
}
