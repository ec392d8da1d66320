/**
 * Training checkpoints: the policy in Hugging Face layout at the top (so the directory is itself a
 * model; with LoRA, the adapter in PEFT's layout, naming its base), the reference under `reference/`
 * (none with LoRA: the base is the reference), the optimizer state, the trainer's counters and config,
 * and a manifest of sha256 sums that loading verifies. A checkpoint is written into a temporary
 * directory and renamed into place: a crash leaves the previous checkpoint or none, never half of one.
 */
import { join } from "node:path";
import { z } from "zod";
import { type LoadedModel, loadModel, saveModel } from "../model/io/checkpoint.ts";
import { attachNewAdapter, LoraConfigSchema } from "../model/arch/lora.ts";
import { decodeSafetensors, encodeSafetensors } from "../model/io/safetensors.ts";
import { writeAtomic } from "../util/fs.ts";
import { type DpoConfig, parseDpoConfig } from "./config.ts";
import type { OptimizerState } from "./optimizer.ts";
import { DpoTrainer, type TrainerState } from "./trainer.ts";

const MANIFEST = "checkpoint.json";
const OPTIMIZER_FILE = "optimizer.safetensors";
const STATE_FILE = "trainer_state.json";
const REFERENCE_DIR = "reference";

const TrainerStateFile = z.object({
  format: z.literal(1),
  step: z.number().int().nonnegative(),
  ref_version: z.number().int().nonnegative(),
  skipped_steps: z.number().int().nonnegative(),
  optimizer_step: z.number().int().nonnegative(),
  config: z.unknown(),
});

const Manifest = z.object({ files: z.record(z.string(), z.string().regex(/^[0-9a-f]{64}$/)) });

/** What a loaded checkpoint holds: models ready to train, and the state to resume from. */
export interface TrainingCheckpoint {
  policy: LoadedModel;
  /** Null when the policy has a LoRA adapter. */
  reference: LoadedModel | null;
  config: DpoConfig;
  trainerState: TrainerState;
  optimizerState: OptimizerState;
}

/**
 * A trainer over loaded models; with a checkpoint's states it continues where that run stopped.
 * With `use_peft` and a policy without an adapter, a fresh LoRA adapter is attached (and `reference`
 * must be null); a policy loaded with its adapter keeps training that adapter.
 * Used by the offline `train` command and the online worker alike.
 */
export function createTrainer(
  policy: LoadedModel,
  reference: LoadedModel | null,
  config: DpoConfig,
  resume?: Pick<TrainingCheckpoint, "trainerState" | "optimizerState">,
): DpoTrainer {
  if (config.use_peft && !policy.model.adapter) {
    attachNewAdapter(policy.model, loraConfig(config), config.seed);
  }
  const trainer = new DpoTrainer({
    policy: policy.model,
    reference: reference?.model ?? null,
    config,
    eosId: policy.tokenizer.eosTokenId,
    bosId: policy.tokenizer.bosTokenId,
  });
  if (resume) {
    trainer.restore(resume.trainerState);
    trainer.optimizer.load(resume.optimizerState);
  }
  return trainer;
}

/** The adapter a DPO config asks for, as PEFT's LoRA config. */
export function loraConfig(config: DpoConfig) {
  return LoraConfigSchema.parse({
    r: config.lora_r,
    lora_alpha: config.lora_alpha,
    lora_dropout: config.lora_dropout,
    target_modules: config.lora_target_modules ?? null,
    use_rslora: config.use_rslora,
  });
}

/** Hex sha256 of bytes. */
export async function sha256(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Saves the trainer's policy, reference, optimizer and counters to `dir`, replacing what is there. */
export async function saveTrainingCheckpoint(
  dir: string,
  trainer: DpoTrainer,
  sources: { policy: Pick<LoadedModel, "rawConfig" | "dir">; reference: Pick<LoadedModel, "rawConfig" | "dir"> | null },
): Promise<void> {
  await assertReplaceable(dir);
  await assertFinite(trainer);
  const tmp = `${dir}.tmp-${crypto.randomUUID()}`;
  try {
    await saveModel({ ...sources.policy, model: trainer.policy }, tmp);
    if (trainer.reference) {
      if (!sources.reference) throw new Error("the trainer has a reference model but no source was given for it");
      await saveModel({ ...sources.reference, model: trainer.reference }, join(tmp, REFERENCE_DIR));
    }
    const opt = await trainer.optimizer.state();
    await writeAtomic(join(tmp, OPTIMIZER_FILE), encodeSafetensors(opt.tensors, { step: String(opt.step) }));
    const s = trainer.state();
    const state = {
      format: 1,
      step: s.step,
      ref_version: s.refVersion,
      skipped_steps: s.skippedSteps,
      optimizer_step: opt.step,
      config: trainer.config,
    };
    await writeAtomic(join(tmp, STATE_FILE), new TextEncoder().encode(JSON.stringify(state, null, 2) + "\n"));
    const files: Record<string, string> = {};
    for (const file of await listFiles(tmp)) files[file] = await sha256(await Deno.readFile(join(tmp, file)));
    await writeAtomic(join(tmp, MANIFEST), new TextEncoder().encode(JSON.stringify({ files }, null, 2) + "\n"));
    await replaceDir(tmp, dir);
  } catch (err) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw new Error(`Cannot save checkpoint '${dir}': ${(err as Error).message}`);
  }
}

/** Loads and verifies a checkpoint written by `saveTrainingCheckpoint`. */
export async function loadTrainingCheckpoint(dir: string): Promise<TrainingCheckpoint> {
  const fail = (problem: string): never => {
    throw new Error(`Cannot load checkpoint '${dir}': ${problem}`);
  };
  let manifest: z.infer<typeof Manifest>;
  try {
    manifest = Manifest.parse(JSON.parse(await Deno.readTextFile(join(dir, MANIFEST))));
  } catch (err) {
    return fail(`${MANIFEST} is missing or invalid (${(err as Error).message.split("\n")[0]})`);
  }
  for (const [file, sum] of Object.entries(manifest.files)) {
    if (file.split("/").includes("..")) fail(`${MANIFEST} names a file outside the checkpoint: '${file}'`);
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(join(dir, file));
    } catch {
      return fail(`'${file}' is listed in ${MANIFEST} but missing`);
    }
    if (await sha256(bytes) !== sum) fail(`'${file}' does not match its sha256 in ${MANIFEST} (corrupt or modified)`);
  }
  const parsed = TrainerStateFile.safeParse(JSON.parse(await Deno.readTextFile(join(dir, STATE_FILE))));
  if (!parsed.success) fail(`${STATE_FILE} is invalid: ${parsed.error!.issues[0]?.message}`);
  const state = parsed.data!;
  const config = parseDpoConfig(state.config, `the config in '${join(dir, STATE_FILE)}'`);
  const optimizerFile = decodeSafetensors(await Deno.readFile(join(dir, OPTIMIZER_FILE)), join(dir, OPTIMIZER_FILE));
  const tensors = new Map<string, { shape: number[]; values: Float32Array }>();
  for (const [name, t] of optimizerFile.tensors) {
    if (!(t.values instanceof Float32Array)) fail(`optimizer tensor '${name}' is not a float tensor`);
    tensors.set(name, { shape: t.shape, values: t.values as Float32Array });
  }
  const policy = await loadModel(dir);
  const reference = policy.model.adapter
    ? null
    : await loadModel(join(dir, REFERENCE_DIR), { trainable: false }).catch((err) => {
      policy.model.dispose();
      throw err;
    });
  return {
    policy,
    reference,
    config,
    trainerState: { step: state.step, refVersion: state.ref_version, skippedSteps: state.skipped_steps },
    optimizerState: { step: state.optimizer_step, tensors },
  };
}

/** A checkpoint never holds a NaN or an infinity (skipped updates keep them out; this makes sure). */
async function assertFinite(trainer: DpoTrainer): Promise<void> {
  const models = [["policy", trainer.policy.trainableParams()], ["reference", trainer.reference?.params]] as const;
  for (const [role, params] of models) {
    for (const [name, v] of params ?? []) {
      const values = await v.data();
      for (let i = 0; i < values.length; i++) {
        if (!Number.isFinite(values[i])) {
          throw new Error(`Cannot save a checkpoint: ${role} weight '${name}' holds ${values[i]} at index ${i}`);
        }
      }
    }
  }
}

/** Refuses to replace a directory that is not a checkpoint: it may hold someone's files. */
async function assertReplaceable(dir: string): Promise<void> {
  let stat: Deno.FileInfo;
  try {
    stat = await Deno.stat(dir);
  } catch {
    return; // absent: nothing to replace
  }
  let empty = true;
  if (stat.isDirectory) { for await (const _ of Deno.readDir(dir)) empty = false; }
  const isCheckpoint = stat.isDirectory && (await Deno.stat(join(dir, MANIFEST)).then(() => true, () => false));
  if (!isCheckpoint && !empty) {
    throw new Error(
      `Cannot save checkpoint '${dir}': it exists and is not a checkpoint (no ${MANIFEST}); choose another path`,
    );
  }
}

async function listFiles(root: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const entry of Deno.readDir(join(root, prefix))) {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory) out.push(...await listFiles(root, rel));
    else out.push(rel);
  }
  return out.sort();
}

/** Moves a finished directory into place; the old one is removed only once the new one is there. */
async function replaceDir(from: string, to: string): Promise<void> {
  const old = `${to}.old-${crypto.randomUUID()}`;
  let moved = false;
  try {
    await Deno.rename(to, old);
    moved = true;
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  await Deno.rename(from, to);
  if (moved) await Deno.remove(old, { recursive: true });
}
