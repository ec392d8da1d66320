/** Kernels TF.js 4.22's wasm backend lacks (or runs slowly) but training, scoring and generation need. */
import * as tf from "../tf.ts";
import { registerDecodeKernels } from "./_decode_kernels.ts";
import { registerTrainKernels } from "./_train_kernels.ts";

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

/**
 * `GatherV2` on wasm as row copies. TF.js's own kernel indexes element by element through generic strides:
 * scoring 1,024 tokens of the tiny model spent 12 ms of its 93 in its four gathers (the embeddings, the
 * scored positions, the target log-probs), which copy whole rows of 128 floats or single values.
 */
function gatherV2(args: { inputs: tf.NamedTensorInfoMap; attrs?: tf.NamedAttrMap; backend: unknown }): tf.TensorInfo {
  const backend = args.backend as WasmBackendLike;
  const { x, indices } = args.inputs as { x: tf.TensorInfo; indices: tf.TensorInfo };
  const axis = tf.util.parseAxisParam(args.attrs!.axis as number, x.shape)[0]!;
  const info = tf.backend_util.segment_util.collectGatherOpShapeInfo(
    x as tf.TensorInfo as tf.Tensor,
    indices as tf.TensorInfo as tf.Tensor,
    axis,
    args.attrs!.batchDims as number,
  );
  const { batchSize, outerSize, dimSize, sliceSize } = info;
  const out = backend.makeOutput(info.outputShape, x.dtype);
  // Views are taken after makeOutput: allocation may grow and detach the heap.
  const o = backend.typedArrayFromHeap(out);
  const xs = backend.typedArrayFromHeap(x);
  const ids = backend.typedArrayFromHeap(indices);
  for (let i = 0; i < ids.length; i++) {
    const index = ids[i]!;
    if (!(index >= 0 && index < dimSize)) {
      throw new Error(`GatherV2: the index value ${index} is not in [0, ${dimSize - 1}]`);
    }
  }
  const n = ids.length / batchSize; // indices per batch entry
  for (let b = 0; b < batchSize; b++) {
    for (let outer = 0; outer < outerSize; outer++) {
      const src = (b * outerSize + outer) * dimSize;
      const dst = (b * outerSize + outer) * n;
      for (let i = 0; i < n; i++) {
        const from = (src + ids[b * n + i]!) * sliceSize;
        const to = (dst + i) * sliceSize;
        if (sliceSize === 1) o[to] = xs[from]!;
        else o.set(xs.subarray(from, from + sliceSize), to);
      }
    }
  }
  return out;
}

/**
 * `Identity` on wasm shares the data (one more reference) instead of copying it, as TF.js's cpu backend does.
 * TF.js clones every tensor a custom gradient saves: at GPT-2 small a DPO step copied about 1 GB that way
 * (150 ms), each copy briefly beside its original. Nothing here writes into a tensor's memory once made,
 * except the decoding cache, which is never cloned.
 */
function sharingIdentity(copy: tf.KernelFunc): tf.KernelFunc {
  return (args) => {
    const x = args.inputs.x!;
    if (x.dtype === "string") return copy(args);
    (args.backend as unknown as { incRef(dataId: object): void }).incRef(x.dataId);
    return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
  };
}

let registered = false;

/** Registers the missing wasm kernels, and those of the decoding and training steps, once. */
export function registerWasmKernels(): void {
  registerDecodeKernels();
  registerTrainKernels();
  if (registered) return;
  registered = true;
  const gather = tf.getKernel(tf.GatherV2, "wasm");
  if (gather) {
    tf.unregisterKernel(tf.GatherV2, "wasm");
    tf.registerKernel({ ...gather, kernelFunc: gatherV2 as tf.KernelFunc });
  }
  const copy = tf.getKernel(tf.Identity, "wasm");
  if (copy) {
    tf.unregisterKernel(tf.Identity, "wasm");
    tf.registerKernel({ ...copy, kernelFunc: sharingIdentity(copy.kernelFunc) });
  }
  if (!tf.getKernel("UnsortedSegmentSum", "wasm")) {
    tf.registerKernel({ kernelName: "UnsortedSegmentSum", backendName: "wasm", kernelFunc: unsortedSegmentSum });
  }
}
