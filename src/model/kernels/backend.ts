/** Compute backend selection: `auto | webgpu | tensorflow | wasm | cpu`. */
import * as tf from "../tf.ts";
import { registerWasmKernels } from "./_kernels.ts";
import { enableNativeMatmul } from "./blas.ts";

import { type BackendChoice, BACKENDS } from "./backends.ts";

export { type BackendChoice, BACKENDS } from "./backends.ts";

/** What `initBackend` settled on, and why the others were passed over. */
export interface BackendReport {
  /** The TF.js backend now active. */
  backend: Exclude<BackendChoice, "auto">;
  /** One line on the chosen backend (adapter name, native matmul…). */
  detail: string;
  /** For `auto`: why each backend before the chosen one was passed over. */
  skipped: string[];
}

/** Options for `initBackend`. */
export interface BackendOptions {
  /** Route wasm matmuls to OpenBLAS through FFI when it loads. Default true. */
  nativeMatmul?: boolean;
  /** Accept a software (fallback) WebGPU adapter when `webgpu` is asked for explicitly. Default true. */
  allowFallbackAdapter?: boolean;
}

type Attempt = { ok: true; detail: string } | { ok: false; reason: string };

/**
 * Activates a backend. `auto` tries tensorflow, then webgpu (a real, non-fallback
 * adapter only), then wasm. An explicit choice that cannot start is an error.
 */
export async function initBackend(choice: BackendChoice, options: BackendOptions = {}): Promise<BackendReport> {
  if (!(BACKENDS as readonly string[]).includes(choice)) {
    throw new Error(`Cannot select backend: it must be one of ${BACKENDS.join(", ")}: current value is '${choice}'`);
  }
  if (choice !== "auto") {
    const attempt = await tryBackend(choice, options, true);
    if (!attempt.ok) throw new Error(`Cannot use backend '${choice}': ${attempt.reason}`);
    return { backend: choice, detail: attempt.detail, skipped: [] };
  }
  const skipped: string[] = [];
  for (const name of ["tensorflow", "webgpu", "wasm"] as const) {
    const attempt = await tryBackend(name, options, false);
    if (attempt.ok) return { backend: name, detail: attempt.detail, skipped };
    skipped.push(`${name}: ${attempt.reason}`);
  }
  throw new Error(`Cannot select a backend automatically: ${skipped.join("; ")}`);
}

/** One line for logs: `backend: wasm (…); passed over: …`. */
export function describeBackend(report: BackendReport): string {
  const skipped = report.skipped.length > 0 ? `; passed over ${report.skipped.join("; ")}` : "";
  return `backend: ${report.backend} (${report.detail})${skipped}`;
}

async function tryBackend(
  name: Exclude<BackendChoice, "auto">,
  options: BackendOptions,
  explicit: boolean,
): Promise<Attempt> {
  try {
    switch (name) {
      case "tensorflow":
        return await tryTensorflow();
      case "webgpu":
        return await tryWebgpu(explicit && (options.allowFallbackAdapter ?? true));
      case "wasm":
        return await tryWasm(options.nativeMatmul ?? true);
      case "cpu":
        await import("@tensorflow/tfjs-backend-cpu");
        await activate("cpu");
        return { ok: true, detail: "pure JavaScript reference kernels" };
    }
  } catch (err) {
    return { ok: false, reason: (err as Error).message };
  }
}

async function activate(name: string): Promise<void> {
  if (!(await tf.setBackend(name))) throw new Error(`TF.js could not initialize the '${name}' backend`);
  await tf.ready();
}

async function tryTensorflow(): Promise<Attempt> {
  // Not in the import map: the package's install step downloads libtensorflow from
  // outside the npm registry, so it is only imported where someone installed it.
  const specifier = Deno.env.get("DPO_TFJS_NODE_GPU") ?? "npm:@tensorflow/tfjs-node-gpu@4.22.0";
  try {
    await import(specifier);
  } catch (err) {
    const message = (err as Error).message.split("\n")[0];
    return { ok: false, reason: `@tensorflow/tfjs-node-gpu did not load (${message})` };
  }
  await activate("tensorflow");
  return { ok: true, detail: "@tensorflow/tfjs-node-gpu (libtensorflow)" };
}

async function tryWebgpu(acceptFallback: boolean): Promise<Attempt> {
  const gpu = (navigator as { gpu?: GPU }).gpu;
  if (!gpu) return { ok: false, reason: "WebGPU is not available in this runtime (run with --unstable-webgpu)" };
  const adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) return { ok: false, reason: "no WebGPU adapter was found" };
  const info = adapter.info;
  const label = [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(" ") ||
    "unknown adapter";
  const fallback = (info as { isFallbackAdapter?: boolean }).isFallbackAdapter ??
    (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter ?? false;
  if (fallback && !acceptFallback) return { ok: false, reason: `only a software fallback adapter (${label})` };
  await import("@tensorflow/tfjs-backend-webgpu");
  await activate("webgpu");
  return { ok: true, detail: `${label}${fallback ? ", software fallback adapter" : ""}` };
}

async function tryWasm(nativeMatmul: boolean): Promise<Attempt> {
  await import("@tensorflow/tfjs-backend-wasm");
  await activate("wasm");
  registerWasmKernels();
  const detail = ["WebAssembly SIMD, single-threaded"];
  if (nativeMatmul) {
    const blas = enableNativeMatmul();
    detail.push(blas.enabled ? `matmul: ${blas.reason}` : `matmul in wasm (${blas.reason})`);
  }
  return { ok: true, detail: detail.join("; ") };
}
