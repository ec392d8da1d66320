/** What the benchmark scripts share: model sizes, random models, PyTorch detection, memory and formatting. */
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

/** The sizes benchmarks run: the shipped model's shape, then GPT-2 shapes with GPT-2's 50,257-token vocabulary. */
export const SIZES: Record<string, Size> = {
  "tiny": { n_layer: 4, n_embd: 128, n_head: 4, vocab_size: 257, n_positions: 1024 },
  "gpt2-4x256": { n_layer: 4, n_embd: 256, n_head: 4, vocab_size: 50257, n_positions: 1024 },
  "gpt2-8x512": { n_layer: 8, n_embd: 512, n_head: 8, vocab_size: 50257, n_positions: 1024 },
  "gpt2-small": { n_layer: 12, n_embd: 768, n_head: 12, vocab_size: 50257, n_positions: 1024 },
};

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
