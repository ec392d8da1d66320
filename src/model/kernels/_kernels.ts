/** Kernels TF.js 4.22's wasm backend lacks but training needs. */
import * as tf from "../tf.ts";

interface WasmBackendLike {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(info: tf.TensorInfo): Float32Array | Int32Array;
}

/**
 * `UnsortedSegmentSum` on wasm: the gradient of `tf.gather`. Without it an
 * embedding lookup cannot be trained on wasm (see PLATFORM.md). A plain loop
 * over the rows is cheap next to the matmuls it sits beside.
 */
function unsortedSegmentSum(args: {
  inputs: tf.NamedTensorInfoMap;
  attrs?: tf.NamedAttrMap;
  backend: unknown;
}): tf.TensorInfo {
  const backend = args.backend as WasmBackendLike;
  const x = args.inputs.x!;
  const segmentIds = args.inputs.segmentIds!;
  const numSegments = args.attrs!.numSegments as number;
  const rowShape = x.shape.slice(segmentIds.shape.length);
  const inner = rowShape.reduce((a, b) => a * b, 1);
  const out = backend.makeOutput([numSegments, ...rowShape], x.dtype);
  // Views are taken after makeOutput: allocation may grow and detach the heap.
  const o = backend.typedArrayFromHeap(out);
  const xs = backend.typedArrayFromHeap(x);
  const ids = backend.typedArrayFromHeap(segmentIds);
  o.fill(0);
  for (let i = 0; i < ids.length; i++) {
    const seg = ids[i]!;
    if (seg < 0 || seg >= numSegments) continue;
    const src = i * inner;
    const dst = seg * inner;
    for (let j = 0; j < inner; j++) o[dst + j]! += xs[src + j]!;
  }
  return out;
}

let registered = false;

/** Registers the missing wasm kernels once. */
export function registerWasmKernels(): void {
  if (registered) return;
  registered = true;
  if (!tf.getKernel("UnsortedSegmentSum", "wasm")) {
    tf.registerKernel({ kernelName: "UnsortedSegmentSum", backendName: "wasm", kernelFunc: unsortedSegmentSum });
  }
}
