/** What the benchmark scripts share: model sizes, random models, PyTorch detection, memory and formatting. */
import { parseArgs } from "node:util";
import type { BackendChoice } from "../src/model/backend.ts";
import { Gpt2ConfigSchema } from "../src/model/config.ts";
import { Gpt2Model, gpt2ParameterShapes, initGpt2Weights } from "../src/model/gpt2.ts";

/** A GPT-2 shape. */
export interface Size {
  n_layer: number;
  n_embd: number;
  n_head: number;
  vocab_size: number;
  n_positions: number;
}

/** The sizes every benchmark runs, all with GPT-2's real 50,257-token vocabulary. */
export const SIZES: Record<string, Size> = {
  "gpt2-4x256": { n_layer: 4, n_embd: 256, n_head: 4, vocab_size: 50257, n_positions: 1024 },
  "gpt2-8x512": { n_layer: 8, n_embd: 512, n_head: 8, vocab_size: 50257, n_positions: 1024 },
  "gpt2-small": { n_layer: 12, n_embd: 768, n_head: 12, vocab_size: 50257, n_positions: 1024 },
};

/**
 * PyTorch's fastest setting here: its OpenMP threads and OpenBLAS's own threads otherwise
 * oversubscribe the cores (measured: 1.4x slower forward, 5x slower generation).
 */
export const TORCH_ENV = { OPENBLAS_NUM_THREADS: "1" };

/** A GPT-2 of `size` with GPT-2's initialization (N(0, 0.02), LayerNorm at identity), seeded. */
export function randomModel(size: Size, seed = 0, trainable = true): Gpt2Model {
  const config = Gpt2ConfigSchema.parse({ model_type: "gpt2", ...size });
  return new Gpt2Model(config, initGpt2Weights(config, seed), trainable);
}

/** The process's peak resident memory (VmHWM), in MB. */
export function peakRssMb(): number {
  const kb = Number(/VmHWM:\s+(\d+)/.exec(Deno.readTextFileSync("/proc/self/status"))?.[1]);
  return kb / 1024;
}

/** Debian's PyTorch version, if it is installed. */
export async function torchAvailable(): Promise<string | undefined> {
  try {
    const out = await new Deno.Command("/usr/bin/python3", { args: ["-c", "import torch; print(torch.__version__)"] })
      .output();
    return out.success ? new TextDecoder().decode(out.stdout).trim() : undefined;
  } catch {
    return undefined;
  }
}

/** A number with thousands separators. */
export const fmt = (x: number, digits = 0) => x.toLocaleString("en-US", { maximumFractionDigits: digits });

/** Number of weights of a model of `size`. */
export function parameterCount(size: Size): number {
  const config = Gpt2ConfigSchema.parse({ model_type: "gpt2", ...size });
  return [...gpt2ParameterShapes(config).values()].reduce((a, s) => a + s.reduce((x, y) => x * y, 1), 0);
}

/** The options every benchmark takes, parsed; a `--worker SIZE` run measures one size in its own process. */
export async function benchOptions(args: string[]) {
  const { values } = parseArgs({
    args,
    options: {
      worker: { type: "string" },
      backend: { type: "string", default: "wasm" },
      sizes: { type: "string", default: Object.keys(SIZES).join(",") },
      seconds: { type: "string", default: "3" },
      "no-torch": { type: "boolean", default: false },
    },
  });
  const sizes = values.sizes!.split(",");
  for (const s of sizes) if (!SIZES[s]) throw new Error(`Unknown size '${s}' (known: ${Object.keys(SIZES)})`);
  return {
    worker: values.worker,
    backend: values.backend as BackendChoice,
    seconds: Number(values.seconds),
    sizes,
    torchVersion: values.worker || values["no-torch"] ? undefined : await torchAvailable(),
  };
}

/** The header lines: the backend, PyTorch's version and setting, the cores. */
export function printHeader(backendLine: string, torchVersion: string | undefined): void {
  console.log(`# ${backendLine}`);
  const torch = torchVersion
    ? `${torchVersion} with ${JSON.stringify(TORCH_ENV)}`
    : "not available (apt-get install python3-torch)";
  console.log(`# PyTorch: ${torch}; ${navigator.hardwareConcurrency} cores`);
}
