/**
 * `deno task bench:lora`: what LoRA saves. The DPO step of `deno task bench` (4 pairs of 64 + 64
 * tokens, reference log-probs cached, sigmoid loss, AdamW, clipping at 1) three ways: **full** (a policy,
 * a separate reference, AdamW over every weight), **lora q,v** and **lora all-linear** (r 16,
 * lora_alpha 32; the reference is the base with the adapter off). For each: step time, peak resident
 * memory, trainable parameters and optimizer state, next to the same in PyTorch (scripts/bench_lora_torch.py)
 * on the same machine in the same run; then scoring and generation speed of the base, of the model with
 * the adapter attached, and with the adapter merged into the base.
 *
 *   deno task bench:lora [--sizes gpt2-8x512,llama-8x512] [--seconds 3] [--no-torch]
 *
 * Sizes: `llama-8x512` (8 layers x 512, 8 heads sharing 2 key/value heads, SwiGLU 1,408 wide,
 * SmolLM2's 49,152-token vocabulary, tied embeddings) and the GPT-2 sizes of `deno task bench`. GPT-2's
 * "q,v" is its fused q/k/v projection `c_attn` (PEFT's default for GPT-2). TF.js runs on wasm (matmuls
 * in OpenBLAS when it loads). Every run is its own process, so its peak memory (VmHWM, read right after
 * the DPO steps) is its own.
 */
import { scriptArgs } from "./_args.ts";
import { fileURLToPath } from "node:url";
import { describeBackend, initBackend } from "../src/model/kernels/backend.ts";
import { attachNewAdapter, LoraConfigSchema, mergeAdapter } from "../src/model/arch/lora.ts";
import { DpoTrainer } from "../src/dpo/trainer.ts";
import {
  DPO_TOKENS,
  type Failure,
  fmt,
  GEN_TOKENS,
  generateWork,
  type ModelShape,
  parameterCount,
  peakRssMb,
  randomModel,
  runChild,
  runTorchSettings,
  scoreWork,
  shapeConfig,
  SIZES,
  timed,
  TORCH_SETTINGS,
  torchAvailable,
  WORK,
  workDpoConfig,
  workPairs,
} from "./_bench_common.ts";

const SHAPES: Record<string, ModelShape> = {
  ...SIZES,
  "llama-8x512": {
    model_type: "llama",
    hidden_size: 512,
    num_hidden_layers: 8,
    num_attention_heads: 8,
    num_key_value_heads: 2,
    intermediate_size: 1408,
    vocab_size: 49152,
    tie_word_embeddings: true,
    max_position_embeddings: 512,
    rope_theta: 10000,
  },
};
const DEFAULT_SIZES = ["gpt2-8x512", "llama-8x512"];
const LORA = { r: 16, lora_alpha: 32 };
const MODES = { full: "full", "lora-qv": "lora q,v", "lora-all": "lora all-linear" } as const;
type Mode = keyof typeof MODES;
const MODE_NAMES = Object.keys(MODES) as Mode[];
/** A child's wall-clock limit: a few model builds, a few steps and a few generations, on a busy machine. */
const TIMEOUT_S = 600;

/** Seconds per call: scoring the DPO step's tokens, and generating `GEN_TOKENS`. */
interface Inference {
  score_s: number;
  generate_s: number;
}

/** One mode measured in one process. */
interface Result {
  backend: string;
  step_s: number;
  peak_rss_mb: number;
  trainable: number;
  optimizer_mb: number;
  /** LoRA runs: `attached` and then `merged` (and `base`, the adapter off, for q,v); none for the full run. */
  inference: Record<string, Inference>;
}

interface TorchResult {
  dpo_step_s: number;
  peak_rss_mb: number;
  trainable: number;
  optimizer_mb: number;
  torch: string;
}

/** The adapter's targets: the attention's q and v projections, or every linear layer. */
function targets(mode: Mode, shape: ModelShape): string[] | "all-linear" {
  if (mode === "lora-all") return "all-linear";
  return "model_type" in shape ? ["q_proj", "v_proj"] : ["c_attn"];
}

/** Measures one mode on one size in this process; prints a JSON Result. */
async function worker(sizeName: string, mode: Mode, seconds: number): Promise<void> {
  const backend = describeBackend(await initBackend("wasm"));
  const shape = SHAPES[sizeName]!;
  const eos = shapeConfig(shape).vocab_size - 1;
  const policy = randomModel(shape, 0, mode === "full");
  const reference = mode === "full" ? randomModel(shape, 1000, false) : null;
  if (mode !== "full") {
    attachNewAdapter(policy, LoraConfigSchema.parse({ ...LORA, target_modules: targets(mode, shape) }), 7);
  }
  const trainer = new DpoTrainer({ policy, reference, config: workDpoConfig(), eosId: eos });
  const pairs = workPairs(eos);
  const mean = async (fn: () => Promise<void>, minIters = 2) => {
    const r = await timed(fn, { seconds, minIters });
    return "seconds" in r ? r.seconds : NaN; // no budget: never skipped
  };
  // The warm-up step fills the reference cache: the timed steps are steady-state ones.
  const step_s = await mean(async () => {
    const m = await trainer.trainStep(pairs, 1000);
    if (!Number.isFinite(m.loss)) throw new Error(`Cannot benchmark: step ${m.step} has loss ${m.loss}`);
  });
  const peak_rss_mb = peakRssMb(); // training's peak, before the copy below and the inference runs
  const state = await trainer.optimizer.state();
  const optimizer_mb = [...state.tensors.values()].reduce((a, t) => a + t.values.byteLength, 0) / 2 ** 20;
  const trainable = [...policy.trainableParams().values()].reduce((a, v) => a + v.size, 0);
  trainer.optimizer.dispose();
  reference?.dispose();

  const infer = async (): Promise<Inference> => ({
    score_s: await mean(() => scoreWork(policy, pairs, eos)),
    generate_s: await mean(() => generateWork(policy, eos), 1),
  });
  const inference: Record<string, Inference> = {};
  if (mode === "lora-qv") {
    // The base in the same process as the adapted model: the disabled adapter adds nothing to the forward.
    policy.adapter!.enabled = false;
    inference.base = await infer();
    policy.adapter!.enabled = true;
  }
  if (mode !== "full") {
    inference.attached = await infer();
    mergeAdapter(policy);
    inference.merged = await infer();
  }
  policy.dispose();
  console.log(JSON.stringify({ backend, step_s, peak_rss_mb, trainable, optimizer_mb, inference } satisfies Result));
}

/** Progress on stderr, with an estimate of what is left once something has finished. */
function progress(total: number) {
  const start = performance.now();
  let done = 0;
  const mmss = (s: number) => `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, "0")}s`;
  return {
    start(what: string) {
      const elapsed = (performance.now() - start) / 1000;
      const eta = done > 0 ? `, about ${mmss((elapsed / done) * (total - done))} left` : "";
      console.error(`# [${done + 1}/${total}] ${what} (${mmss(elapsed)} so far${eta})`);
    },
    finish() {
      done++;
    },
  };
}

/** A markdown table, columns padded, numbers right-aligned. */
function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, 3, ...rows.map((r) => (r[i] ?? "").length)));
  const numeric = header.map((_, i) => i > 0 && rows.every((r) => /^[\d,.x×—-]*$/.test(r[i] ?? "")));
  const line = (cells: string[]) =>
    `| ${cells.map((c, i) => (numeric[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join(" | ")} |`;
  const rule = `| ${widths.map((w, i) => (numeric[i] ? "-".repeat(w - 1) + ":" : "-".repeat(w))).join(" | ")} |`;
  return [line(header), rule, ...rows.map(line)].join("\n");
}

async function main(): Promise<void> {
  const { values } = scriptArgs(import.meta.url, {
    worker: { type: "string" },
    mode: { type: "string" },
    sizes: { type: "string", default: DEFAULT_SIZES.join(",") },
    seconds: { type: "string", default: "3" },
    "no-torch": { type: "boolean", default: false },
  });
  const seconds = Number(values.seconds);
  if (!(seconds > 0)) throw new Error(`Cannot run: --seconds must be a number > 0: current value is ${values.seconds}`);
  const sizes = values.sizes!.split(",");
  for (const s of sizes) {
    if (!SHAPES[s]) throw new Error(`Cannot run: unknown size '${s}' (known: ${Object.keys(SHAPES).join(", ")})`);
  }
  if (values.worker) {
    const mode = MODE_NAMES.find((m) => m === values.mode);
    if (!mode) {
      throw new Error(`Cannot run: --mode must be one of ${MODE_NAMES.join(", ")}: current value is ${values.mode}`);
    }
    return await worker(values.worker, mode, seconds);
  }

  const torch = values["no-torch"] ? undefined : await torchAvailable();
  if (!values["no-torch"] && !torch) {
    console.error("# PyTorch not found (apt-get install python3-torch): measuring TF.js only");
  }
  const self = fileURLToPath(import.meta.url);
  const torchScript = fileURLToPath(new URL("./bench_lora_torch.py", import.meta.url));
  const bar = progress(sizes.length * MODE_NAMES.length * (torch ? 2 : 1));
  console.log(
    `# ${navigator.hardwareConcurrency} cores. DPO step: ${WORK.pairs} pairs x 2 x (${WORK.prompt_len} + ` +
      `${WORK.completion_len}) = ${DPO_TOKENS} tokens, reference log-probs cached, sigmoid, AdamW, clipping at 1; ` +
      `LoRA r ${LORA.r}, alpha ${LORA.lora_alpha}, reference = base with the adapter off. Scoring: the same ` +
      `${DPO_TOKENS} tokens, forward only; generation: ${WORK.gen_batch} x ${WORK.gen_tokens} new tokens, greedy, ` +
      `KV cache. Means over >= ${seconds} s after a warm-up.`,
  );
  console.log(
    `# PyTorch: ${
      torch
        ? `${torch}, each step time the better of ${Object.keys(TORCH_SETTINGS).join(" and ")}`
        : values["no-torch"]
        ? "skipped (--no-torch)"
        : "not available (apt-get install python3-torch)"
    }`,
  );
  for (const name of sizes) {
    const shape = SHAPES[name]!;
    const ours = new Map<Mode, Result | Failure>();
    const theirs = new Map<Mode, TorchResult | Failure>();
    for (const mode of MODE_NAMES) {
      bar.start(`${name} ${MODES[mode]}: TF.js`);
      const args = ["run", "-A", self, "--worker", name, "--mode", mode, "--seconds", `${seconds}`];
      ours.set(mode, await runChild<Result>(Deno.execPath(), args, {}, TIMEOUT_S));
      bar.finish();
      if (!torch) continue;
      bar.start(`${name} ${MODES[mode]}: PyTorch, ${Object.keys(TORCH_SETTINGS).length} thread settings`);
      const config = {
        ...shape,
        ...WORK,
        ...LORA,
        mode: mode === "full" ? "full" : "lora",
        target_modules: targets(mode, shape),
        min_seconds: seconds,
      };
      const runs = await runTorchSettings<TorchResult>(torchScript, config, TIMEOUT_S);
      theirs.set(
        mode,
        "error" in runs ? runs : runs.map(([, r]) => r).reduce((a, b) => b.dpo_step_s < a.dpo_step_s ? b : a),
      );
      bar.finish();
    }
    const c = shapeConfig(shape);
    const [layers, width] = c.model_type === "gpt2" ? [c.n_layer, c.n_embd] : [c.num_hidden_layers, c.hidden_size];
    const backend = [...ours.values()].find((r): r is Result => "backend" in r)?.backend ?? "wasm";
    console.log(
      `\n## ${name}: ${c.model_type}, ${layers} layers x ${width}, vocabulary ${fmt(c.vocab_size)}, ` +
        `${(parameterCount(shape) / 1e6).toFixed(1)}M parameters; TF.js ${backend}\n`,
    );
    const failures: string[] = [];
    const failed = (who: string, f: Failure) => `failed (${failures.push(`${who}: ${f.error}`)})`;
    const dpoRows = MODE_NAMES.map((mode) => {
      const r = ours.get(mode)!, t = theirs.get(mode);
      const ok = "error" in r ? undefined : r;
      const tr = t && !("error" in t) ? t : undefined;
      const dash = (s: string | undefined) => s ?? "—";
      return [
        MODES[mode],
        dash(ok && fmt(ok.trainable)),
        dash(ok?.optimizer_mb.toFixed(1)),
        "error" in r ? failed(`TF.js ${MODES[mode]}`, r) : fmt(r.peak_rss_mb),
        !t ? "—" : "error" in t ? failed(`PyTorch ${MODES[mode]}`, t) : fmt(t.peak_rss_mb),
        dash(ok?.step_s.toFixed(2)),
        dash(tr?.dpo_step_s.toFixed(2)),
        dash(ok && (WORK.pairs / ok.step_s).toFixed(2)),
        dash(ok && fmt(DPO_TOKENS / ok.step_s)),
        dash(ok && tr && `${(tr.dpo_step_s / ok.step_s).toFixed(2)}x`),
        dash(ok && tr && `${(ok.peak_rss_mb / tr.peak_rss_mb).toFixed(2)}x`),
      ];
    });
    const header = ["DPO", "trainable params", "optimizer state MB", "peak RSS MB", "torch peak RSS MB"];
    header.push("step s", "torch step s", "pairs/s", "tok/s", "speed vs torch", "memory vs torch");
    console.log(table(header, dpoRows));
    const inferRows: string[][] = [];
    for (const mode of MODE_NAMES) {
      const r = ours.get(mode)!;
      if ("error" in r) continue;
      for (const [kind, v] of Object.entries(r.inference)) {
        const label = kind === "base" ? "base (adapter off)" : `${MODES[mode]} ${kind}`;
        inferRows.push([label, fmt(DPO_TOKENS / v.score_s), fmt(GEN_TOKENS / v.generate_s)]);
      }
    }
    console.log(`\n${table(["inference (TF.js)", "scoring tok/s", "generation tok/s"], inferRows)}`);
    failures.forEach((f, i) => console.log(`\n(${i + 1}) ${f}`));
  }
  console.log(
    "\nspeed vs torch = PyTorch's step time / ours (above 1 is faster); memory vs torch = our peak RSS / " +
      "PyTorch's. Optimizer state: AdamW's two moments, float32.",
  );
}

if (import.meta.main) await main();
