/** Shared helpers for the model tests: fixture paths, backend switching, tolerance asserts. */
import * as tf from "./tf.ts";
import { fileURLToPath } from "node:url";
import { type BackendChoice, initBackend } from "./kernels/backend.ts";

/** Deterministic uniform values in [-1, 1) (a 32-bit LCG), so failures reproduce. */
export function randomValues(size: number, seed: number): Float32Array {
  const values = new Float32Array(size);
  let state = seed >>> 0;
  for (let i = 0; i < size; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    values[i] = state / 2 ** 31 - 1;
  }
  return values;
}

/** Absolute path of a committed fixture under tests/fixtures. */
export function fixturePath(name: string): string {
  return fileURLToPath(new URL(`../../tests/fixtures/${name}`, import.meta.url));
}

/** Reads a fixture's expected.json (made by scripts/make_fixtures.py). */
export async function readExpected(model: string): Promise<Expected> {
  return JSON.parse(await Deno.readTextFile(fixturePath(`${model}/expected.json`)));
}

/** The schema of expected.json. */
export interface Expected {
  eos_token_id: number;
  cases: {
    prompt: string;
    completion: string;
    prompt_ids: number[];
    completion_ids: number[];
    input_ids: number[];
    n_tokens: number;
    token_logps: number[];
    logp_sum: number;
    logp_mean: number;
  }[];
  logits: { case_index: number; shape: [number, number]; values: number[][] }[];
  greedy: { prompt: string; prompt_ids: number[]; generated_ids: number[] }[];
  grads: Record<string, { shape: number[]; values: number[] }>;
  /** Llama-family fixtures: a conversation through the ChatML template, its answer scored up to <|im_end|>. */
  chat?: {
    messages: { role: string; content: string }[];
    text: string;
    ids: number[];
    answer_ids: number[];
    end_token_id: number;
    logp_sum: number;
  };
}

/**
 * Whether the WebGPU tests run: when an adapter exists (a software one counts),
 * or always when DPO_REQUIRE_WEBGPU=1 (CI installs Mesa so that they must).
 */
export async function webgpuTestable(): Promise<boolean> {
  if (Deno.env.get("DPO_REQUIRE_WEBGPU") === "1") return true;
  const gpu = (navigator as { gpu?: GPU }).gpu;
  return (await gpu?.requestAdapter()) != null;
}

/** Switches to a backend for a test (native matmul as configured by the caller). */
export async function useBackend(name: Exclude<BackendChoice, "auto">, nativeMatmul = true): Promise<void> {
  await initBackend(name, { nativeMatmul });
}

/** Fails with the worst index when two arrays differ by more than `tol` (absolute). */
export function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number, what = ""): void {
  if (actual.length !== expected.length) {
    throw new Error(`${what}: length ${actual.length} != expected ${expected.length}`);
  }
  let worst = 0;
  let at = -1;
  for (let i = 0; i < actual.length; i++) {
    const d = Math.abs(actual[i]! - expected[i]!);
    if (!(d <= worst)) {
      worst = d;
      at = i;
    }
  }
  if (!(worst <= tol)) {
    throw new Error(
      `${what}: |actual - expected| = ${worst} > ${tol} at index ${at} (actual ${actual[at]}, expected ${
        expected[at]
      })`,
    );
  }
}

/** Runs `fn` and asserts it left no tensor behind. */
export async function assertNoLeak(fn: () => Promise<void> | void, what = "test"): Promise<void> {
  const before = tf.memory().numTensors;
  await fn();
  const after = tf.memory().numTensors;
  if (after !== before) throw new Error(`${what} leaked ${after - before} tensor(s)`);
}
