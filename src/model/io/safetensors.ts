/**
 * Reader and writer for the safetensors format
 * (https://huggingface.co/docs/safetensors): an 8-byte little-endian header
 * length N, N bytes of JSON header, then one contiguous little-endian byte
 * buffer that the header's `data_offsets` index entirely, without holes.
 */

/** A tensor decoded from a safetensors file: floats widen to f32, integers to i32. */
export interface StoredTensor {
  /** The dtype as stored in the file (`F32`, `F16`, `BF16`, `I64`, …). */
  dtype: string;
  shape: number[];
  values: Float32Array | Int32Array;
}

/** The decoded contents of one safetensors file. */
export interface SafetensorsFile {
  tensors: Map<string, StoredTensor>;
  metadata: Record<string, string>;
}

const MAX_HEADER_BYTES = 100_000_000;

const ITEM_BYTES: Record<string, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

/** Reads and validates a safetensors file; errors name the file and the problem. */
export async function readSafetensors(path: string): Promise<SafetensorsFile> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (err) {
    throw new Error(`Cannot read safetensors file '${path}': ${(err as Error).message}`);
  }
  return decodeSafetensors(bytes, path);
}

/** Decodes safetensors bytes; `name` only labels error messages. */
export function decodeSafetensors(bytes: Uint8Array, name = "<bytes>"): SafetensorsFile {
  const fail = (problem: string): never => {
    throw new Error(`Cannot read safetensors file '${name}': ${problem}`);
  };
  if (bytes.byteLength < 8) fail(`the file is ${bytes.byteLength} bytes long, shorter than the 8-byte header length`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = view.getBigUint64(0, true);
  if (headerLength > BigInt(MAX_HEADER_BYTES)) {
    fail(`the header length ${headerLength} exceeds the ${MAX_HEADER_BYTES}-byte limit (corrupt header)`);
  }
  const n = Number(headerLength);
  if (8 + n > bytes.byteLength) {
    fail(`the header length ${n} runs past the end of the ${bytes.byteLength}-byte file (truncated or corrupt)`);
  }
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + n)));
  } catch (err) {
    fail(`the header is not valid UTF-8 JSON (${(err as Error).message})`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) fail("the header is not a JSON object");
  const data = bytes.subarray(8 + n);
  const tensors = new Map<string, StoredTensor>();
  let metadata: Record<string, string> = {};
  const spans: [number, number, string][] = [];
  for (const [key, entry] of Object.entries(header as Record<string, unknown>)) {
    if (key === "__metadata__") {
      metadata = parseMetadata(entry, fail);
      continue;
    }
    const { dtype, shape, begin, end } = parseEntry(key, entry, fail);
    const count = shape.reduce((a, b) => a * b, 1);
    const expected = count * ITEM_BYTES[dtype]!;
    if (end - begin !== expected) {
      fail(`tensor '${key}' has ${end - begin} bytes but dtype ${dtype} and shape [${shape}] need ${expected}`);
    }
    if (end > data.byteLength) {
      fail(`tensor '${key}' ends at byte ${end} of a ${data.byteLength}-byte data buffer (truncated file)`);
    }
    spans.push([begin, end, key]);
    tensors.set(key, { dtype, shape, values: decodeValues(dtype, data.subarray(begin, end), count) });
  }
  checkCoverage(spans, data.byteLength, fail);
  return { tensors, metadata };
}

function parseMetadata(entry: unknown, fail: (p: string) => never): Record<string, string> {
  if (typeof entry !== "object" || entry === null || Array.isArray(entry)) fail("'__metadata__' is not an object");
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
    if (typeof v !== "string") fail(`'__metadata__.${k}' is not a string`);
    out[k] = v as string;
  }
  return out;
}

function parseEntry(key: string, entry: unknown, fail: (p: string) => never) {
  const e = entry as { dtype?: unknown; shape?: unknown; data_offsets?: unknown } | null;
  if (typeof e !== "object" || e === null) fail(`tensor '${key}' has no descriptor object`);
  const dtype = e!.dtype;
  if (typeof dtype !== "string" || !(dtype in ITEM_BYTES)) {
    fail(`tensor '${key}' has unsupported dtype ${JSON.stringify(dtype)} (supported: ${Object.keys(ITEM_BYTES)})`);
  }
  const shape = e!.shape;
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    fail(`tensor '${key}' has an invalid shape ${JSON.stringify(shape)}`);
  }
  const offsets = e!.data_offsets;
  if (
    !Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((d) => Number.isSafeInteger(d) && d >= 0) ||
    offsets[0] > offsets[1]
  ) {
    fail(`tensor '${key}' has invalid data_offsets ${JSON.stringify(offsets)}`);
  }
  return { dtype: dtype as string, shape: shape as number[], begin: offsets![0] as number, end: offsets![1] as number };
}

function checkCoverage(spans: [number, number, string][], size: number, fail: (p: string) => never): void {
  spans.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let at = 0;
  for (const [begin, end, key] of spans) {
    if (begin !== at) {
      fail(begin < at ? `tensor '${key}' overlaps the previous tensor` : `the data buffer has a hole at byte ${at}`);
    }
    at = end;
  }
  if (at !== size) fail(`the data buffer has ${size - at} trailing bytes that no tensor uses`);
}

function decodeValues(dtype: string, raw: Uint8Array, count: number): Float32Array | Int32Array {
  // Copy into an aligned buffer: offsets in the file need not be aligned.
  const buf = raw.slice().buffer;
  switch (dtype) {
    case "F32":
      return new Float32Array(buf);
    case "F64":
      return Float32Array.from(new Float64Array(buf));
    case "F16":
      return halfToFloat(new Uint16Array(buf));
    case "BF16": {
      const out = new Uint32Array(count);
      const src = new Uint16Array(buf);
      for (let i = 0; i < count; i++) out[i] = src[i]! << 16;
      return new Float32Array(out.buffer);
    }
    case "I64": {
      const src = new BigInt64Array(buf);
      const out = new Int32Array(count);
      for (let i = 0; i < count; i++) out[i] = Number(src[i]!);
      return out;
    }
    case "I32":
      return new Int32Array(buf);
    case "I16":
      return Int32Array.from(new Int16Array(buf));
    case "I8":
      return Int32Array.from(new Int8Array(buf));
    default: // U8, BOOL
      return Int32Array.from(new Uint8Array(buf));
  }
}

/** Converts IEEE 754 half-precision bit patterns to f32 values. */
function halfToFloat(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const h = src[i]!;
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) out[i] = sign * frac * 2 ** -24;
    else if (exp === 31) out[i] = frac ? NaN : sign * Infinity;
    else out[i] = sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  return out;
}

/** Encodes f32 tensors as safetensors bytes; entries keep the given order. */
export function encodeSafetensors(
  tensors: Iterable<[string, { shape: number[]; values: Float32Array }]>,
  metadata: Record<string, string> = {},
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  const parts: Float32Array[] = [];
  let offset = 0;
  for (const [name, { shape, values }] of tensors) {
    const count = shape.reduce((a, b) => a * b, 1);
    if (count !== values.length) {
      throw new Error(`Cannot write tensor '${name}': shape [${shape}] needs ${count} values, got ${values.length}`);
    }
    header[name] = { dtype: "F32", shape, data_offsets: [offset, offset + values.byteLength] };
    offset += values.byteLength;
    parts.push(values);
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  // Pad with spaces so that the data buffer starts 8-byte aligned, as the reference writer does.
  const padded = Math.ceil((8 + json.length) / 8) * 8 - 8;
  if (padded !== json.length) {
    const p = new Uint8Array(padded).fill(0x20);
    p.set(json);
    json = p;
  }
  const out = new Uint8Array(8 + json.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let at = 8 + json.length;
  for (const values of parts) {
    out.set(new Uint8Array(values.buffer, values.byteOffset, values.byteLength), at);
    at += values.byteLength;
  }
  return out;
}
