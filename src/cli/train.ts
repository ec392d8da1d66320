/** `train`: offline DPO on a preference dataset; one JSON line of metrics per optimizer step. */
import { z } from "zod";
import { describeBackend, initBackend } from "../model/kernels/backend.ts";
import { type LoadedModel, loadModel } from "../model/io/checkpoint.ts";
import { resolveModel } from "../model/io/hub.ts";
import { createTrainer, loadTrainingCheckpoint, saveTrainingCheckpoint } from "../dpo/checkpoint.ts";
import { parseDpoConfig } from "../dpo/config.ts";
import { configFromFlags, dpoOptions } from "./_dpo_flags.ts";
import { flag, number, optionsUsage, parseOptions, required, SHARED, text } from "./_options.ts";
import { type BadLine, readKtoExamples, readPreferences } from "../dpo/data.ts";
import type { KtoExample, PreferencePair } from "../dpo/trainer.ts";
import { plannedSteps, trainOffline } from "../dpo/offline.ts";
import { createProgress } from "../util/progress.ts";
import { log, UsageError, writeStdout } from "./common.ts";

export const OPTIONS = {
  model: { ...SHARED.model, defaultText: "required, unless --resume" },
  backend: SHARED.backend,
  "cache-dir": SHARED["cache-dir"],
  data: required("FILE.jsonl", "preference pairs"),
  out: required("DIR", "where the trained model and its training state go"),
  ref: text("DIR|hf:...", "reference model", z.string().min(1).optional(), { defaultText: "the starting model" }),
  resume: text("DIR", "continue from a checkpoint written by this command"),
  config: text(
    "FILE.json",
    "settings with TRL's names (beta, loss_type, ...); flags override them",
    z.string().min(1).optional(),
  ),
  "on-bad-line": text(
    "fail|skip",
    "a malformed data line stops the run or is skipped with a warning",
    z.enum(["fail", "skip"]).default("fail"),
  ),
  kto: flag(
    'the data is unpaired feedback {"prompt", "completion", "label": bool}: train KTO (--desirable-weight, ' +
      "--undesirable-weight)",
  ),
  "save-steps": number("N", "also write --out every N steps", (n) => n.int().positive()),
  ...dpoOptions("offline"),
};

/** Usage text of the command. */
export const TRAIN_USAGE = `Usage: deno task cli train --model DIR --data FILE.jsonl --out DIR [options]

Offline DPO. Data lines in TRL's formats: {"prompt", "chosen", "rejected"} as strings, or as lists of
{"role", "content"} messages (rendered with the model's chat template), or {"chosen", "rejected"}
message lists that share their leading prompt messages. Prints one JSON line of metrics per optimizer
step; writes the trained model (Hugging Face layout) and everything needed to resume to --out.

${optionsUsage(OPTIONS)}`;

/** Runs the command. */
export async function runTrain(args: string[]): Promise<void> {
  const parsed = parseOptions(args, OPTIONS);
  if (parsed.help) return void console.log(TRAIN_USAGE);
  const opts = parsed.values;
  if (opts.model === undefined && opts.resume === undefined) {
    throw new UsageError("--model: is required (or --resume a checkpoint)");
  }
  const fromFile = opts.config ? await readConfigFile(opts.config) : {};
  const report = await initBackend(opts.backend);
  log(describeBackend(report));

  let policy: LoadedModel, reference: LoadedModel | null;
  let resumeState: Awaited<ReturnType<typeof loadTrainingCheckpoint>> | undefined;
  let config;
  if (opts.resume) {
    resumeState = await loadTrainingCheckpoint(opts.resume);
    ({ policy, reference } = resumeState);
    config = parseDpoConfig({ ...resumeState.config, ...fromFile, ...configFromFlags(opts, parsed.origin) });
    log(`resuming from ${opts.resume} at step ${resumeState.trainerState.step}`);
  } else {
    config = parseDpoConfig({ ...fromFile, ...configFromFlags(opts, parsed.origin) }, "the training settings");
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
