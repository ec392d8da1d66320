/**
 * What kernels written in WebAssembly need of TF.js's wasm backend: its heap (the module imports it as a memory)
 * and where a tensor's data lies on it. The heap may grow, which moves no data: offsets stay valid, typed-array
 * views over its buffer do not.
 */
export interface WasmHeapBackend {
  wasm: { asm: { memory: WebAssembly.Memory } };
  dataIdMap: { get(dataId: object): { memoryOffset: number } | undefined };
}

/** The byte offset of a tensor's data on the heap. */
export function heapOffset(backend: WasmHeapBackend, t: { dataId: object }): number {
  const data = backend.dataIdMap.get(t.dataId);
  if (data === undefined) throw new Error("Cannot reach a tensor on the wasm heap: it has been disposed");
  return data.memoryOffset;
}
