/**
 * Just enough of the WebAssembly binary format to write small kernels by hand: a module of exported
 * functions over imported memories (several, as multi-memory allows), with the SIMD instructions they use.
 * A body is a flat list of bytes built from the instruction helpers below; `wasmModule` adds the header
 * and sections. Reference: the WebAssembly core specification, chapter 5 (binary format), and the
 * fixed-width SIMD and multi-memory proposals (both in V8 and therefore in Deno).
 */

/** Value types. */
export const I32 = 0x7f;
export const F32 = 0x7d;
export const F64 = 0x7c;
export const V128 = 0x7b;

/** Unsigned LEB128. */
export function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
  return out;
}

/** Signed LEB128 (for i32.const). */
function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const byte = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (byte & 0x40) === 0) || (n === -1 && (byte & 0x40) !== 0)) return [...out, byte];
    out.push(byte | 0x80);
  }
}

function name(text: string): number[] {
  const bytes = new TextEncoder().encode(text);
  return [...uleb(bytes.length), ...bytes];
}

function vector(items: number[][]): number[] {
  return [...uleb(items.length), ...items.flat()];
}

function section(id: number, body: number[]): number[] {
  return [id, ...uleb(body.length), ...body];
}

/** A memory argument: alignment (log2 of bytes) and, for a memory other than the first, its index. */
function memarg(memory: number, align: number): number[] {
  return memory === 0 ? [align, 0] : [align | 0x40, ...uleb(memory), 0];
}

const simd = (op: number) => [0xfd, ...uleb(op)];

/** A float32's four bytes, little-endian as WebAssembly stores them. */
function f32Bytes(x: number): number[] {
  const view = new DataView(new ArrayBuffer(4));
  view.setFloat32(0, x, true);
  return [...new Uint8Array(view.buffer)];
}

/** Instructions, each as its bytes. */
export const op = {
  localGet: (i: number) => [0x20, ...uleb(i)],
  localSet: (i: number) => [0x21, ...uleb(i)],
  localTee: (i: number) => [0x22, ...uleb(i)],
  i32Const: (n: number) => [0x41, ...sleb(n)],
  f64Const0: [0x44, 0, 0, 0, 0, 0, 0, 0, 0],
  i32Add: [0x6a],
  i32Sub: [0x6b],
  i32Mul: [0x6c],
  i32Shl: [0x74],
  i32GeU: [0x4f],
  /** A block or loop with no result. */
  block: [0x02, 0x40],
  loop: [0x03, 0x40],
  /** An if with no result, and its else. */
  if: [0x04, 0x40],
  else: [0x05],
  br: (depth: number) => [0x0c, ...uleb(depth)],
  brIf: (depth: number) => [0x0d, ...uleb(depth)],
  end: [0x0b],
  f64Add: [0xa0],
  /** memory.copy(dst, src, bytes) within the first memory (bulk memory). */
  memoryCopy: [0xfc, 0x0a, 0, 0],
  v128Load: (memory: number) => [...simd(0x00), ...memarg(memory, 4)],
  v128Store: (memory: number) => [...simd(0x0b), ...memarg(memory, 4)],
  /** Lanes 2 and 3 of an f32x4 moved to 0 and 1 (an i8x16.shuffle). */
  f32x4High: [...simd(0x0d), 8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15],
  f32x4Splat: simd(0x13),
  f32x4Sqrt: simd(0xe3),
  f32x4Add: simd(0xe4),
  f32x4Sub: simd(0xe5),
  f32x4Mul: simd(0xe6),
  f32x4Div: simd(0xe7),
  f64x2ExtractLane: (lane: number) => [...simd(0x21), lane],
  f64x2Splat: simd(0x14),
  f64x2Add: simd(0xf0),
  f64x2Mul: simd(0xf2),
  f64x2PromoteLowF32x4: simd(0x5f),
  i32And: [0x71],
  i32Eqz: [0x45],
  f32Const: (x: number) => [0x43, ...f32Bytes(x)],
  f32Load: (memory: number) => [0x2a, ...memarg(memory, 2)],
  f32Store: (memory: number) => [0x38, ...memarg(memory, 2)],
  f32ConvertI32U: [0xb3],
  f32Sqrt: [0x91],
  f32Add: [0x92],
  f32Sub: [0x93],
  f32Mul: [0x94],
  f32Div: [0x95],
  f32Max: [0x97],
  f32Ne: [0x5c],
  f32x4ExtractLane: (lane: number) => [...simd(0x1f), lane],
  f32x4Ge: simd(0x46),
  v128Or: simd(0x50),
  v128Bitselect: simd(0x52),
  v128AnyTrue: simd(0x53),
  i32x4Shl: simd(0xab),
  /** max as x86's maxps computes it (b when a < b, else a): one instruction, where max's NaN rules take several. */
  f32x4Pmax: simd(0xeb),
};

/** `for (; i < limit; i += step) body`, i and limit locals (i keeps its value: a tail loop goes on from it). */
export function loopTo(i: number, limit: number, step: number, body: number[]): number[] {
  return [
    ...op.block,
    ...op.loop,
    ...op.localGet(i),
    ...op.localGet(limit),
    ...op.i32GeU,
    ...op.brIf(1),
    ...body,
    ...op.localGet(i),
    ...op.i32Const(step),
    ...op.i32Add,
    ...op.localSet(i),
    ...op.br(0),
    ...op.end,
    ...op.end,
  ];
}

/** One exported function. */
export interface WasmFunction {
  name: string;
  params: number[];
  results: number[];
  /** Locals after the parameters, by type, in order. */
  locals: number[];
  body: number[];
}

/** A module importing `memories` (`env.<name>`, memory index in that order) and exporting `functions`. */
export function wasmModule(memories: string[], functions: WasmFunction[]): Uint8Array<ArrayBuffer> {
  const types = functions.map((f) => [0x60, ...vector(f.params.map((t) => [t])), ...vector(f.results.map((t) => [t]))]);
  const code = functions.map((f) => {
    const runs: number[][] = [];
    for (const t of f.locals) {
      const last = runs[runs.length - 1];
      if (last && last[1] === t) last[0]!++;
      else runs.push([1, t]);
    }
    const body = [...vector(runs.map(([count, t]) => [...uleb(count!), t!])), ...f.body, ...op.end];
    return [...uleb(body.length), ...body];
  });
  return new Uint8Array([
    0x00,
    0x61,
    0x73,
    0x6d,
    0x01,
    0x00,
    0x00,
    0x00,
    ...section(1, vector(types)),
    ...section(2, vector(memories.map((m) => [...name("env"), ...name(m), 0x02, 0x00, 0x00]))),
    ...section(3, vector(functions.map((_, i) => uleb(i)))),
    ...section(7, vector(functions.map((f, i) => [...name(f.name), 0x00, ...uleb(i)]))),
    ...section(10, vector(code)),
  ]);
}

/** A module built and compiled on first use, the same one after; null where this runtime rejects its bytes. */
export function compiledOnce(build: () => Uint8Array<ArrayBuffer>): () => WebAssembly.Module | null {
  let compiled: WebAssembly.Module | null | undefined;
  return () => {
    if (compiled === undefined) {
      const bytes = build();
      compiled = WebAssembly.validate(bytes) ? new WebAssembly.Module(bytes) : null;
    }
    return compiled;
  };
}
