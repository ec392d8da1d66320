import assert from "node:assert/strict";
import { decodeSafetensors, encodeSafetensors, readSafetensors } from "./safetensors.ts";
import { fixturePath } from "../_test_utils.ts";

Deno.test("reads F32, F16, BF16 and I64 tensors written by PyTorch", async () => {
  const file = await readSafetensors(fixturePath("dtypes.safetensors"));
  const expected = JSON.parse(await Deno.readTextFile(fixturePath("dtypes.json"))).tensors as Record<
    string,
    { dtype: string; shape: number[]; values: number[] | number[][] }
  >;
  assert.deepEqual([...file.tensors.keys()].sort(), Object.keys(expected).sort());
  for (const [name, e] of Object.entries(expected)) {
    const t = file.tensors.get(name)!;
    assert.equal(t.dtype, e.dtype, name);
    assert.deepEqual(t.shape, e.shape, name);
    const want = (e.values as number[]).flat(4);
    // Floats decode to the exact f32 the stored bits mean; integers to int32 (TF.js has no int64),
    // so I64 values beyond the int32 range are not compared.
    [...t.values].forEach((v, i) => {
      const w = want[i]!;
      if (e.dtype === "I64" && Math.abs(w) >= 2 ** 31) return;
      assert.equal(v, e.dtype === "I64" ? w : Math.fround(w), `${name}[${i}]`);
    });
  }
});

Deno.test("writes the format exactly: aligned header, offsets in order, round trip", () => {
  const a = new Float32Array([1, -2.5, 3.25]);
  const b = new Float32Array([0.5, 7, 8, 9]);
  const bytes = encodeSafetensors([["a", { shape: [3], values: a }], ["b.weight", { shape: [2, 2], values: b }]], {
    format: "pt",
  });
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assert.equal((8 + n) % 8, 0, "data starts 8-byte aligned");
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  assert.deepEqual(header, {
    __metadata__: { format: "pt" },
    a: { dtype: "F32", shape: [3], data_offsets: [0, 12] },
    "b.weight": { dtype: "F32", shape: [2, 2], data_offsets: [12, 28] },
  });
  assert.equal(bytes.length, 8 + n + 28);
  const back = decodeSafetensors(bytes);
  assert.deepEqual([...back.tensors.get("a")!.values], [...a]);
  assert.deepEqual([...back.tensors.get("b.weight")!.values], [...b]);
  assert.deepEqual(back.metadata, { format: "pt" });
});

function withHeader(header: unknown, data = new Uint8Array(0), lengthOverride?: bigint): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, lengthOverride ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

Deno.test("malformed files are clear errors naming the problem", () => {
  const cases: [string, Uint8Array, RegExp][] = [
    ["too short", new Uint8Array(3), /shorter than the 8-byte header length/],
    ["huge header length", withHeader({}, undefined, 2n ** 40n), /exceeds the .* limit/],
    ["header past the end", withHeader({}, undefined, 500n), /runs past the end/],
    [
      "header not JSON",
      (() => {
        const b = withHeader({ a: 1 });
        b[8] = 0x7a;
        return b;
      })(),
      /not valid UTF-8 JSON/,
    ],
    ["header not an object", withHeader([1, 2]), /not a JSON object/],
    [
      "bad dtype",
      withHeader({ x: { dtype: "F8", shape: [1], data_offsets: [0, 1] } }, new Uint8Array(1)),
      /unsupported dtype/,
    ],
    [
      "bad shape",
      withHeader({ x: { dtype: "F32", shape: [-1], data_offsets: [0, 4] } }, new Uint8Array(4)),
      /invalid shape/,
    ],
    [
      "size mismatch",
      withHeader({ x: { dtype: "F32", shape: [2], data_offsets: [0, 4] } }, new Uint8Array(4)),
      /need 8/,
    ],
    [
      "truncated data",
      withHeader({ x: { dtype: "F32", shape: [2], data_offsets: [0, 8] } }, new Uint8Array(4)),
      /truncated/,
    ],
    [
      "hole",
      withHeader({ x: { dtype: "F32", shape: [1], data_offsets: [4, 8] } }, new Uint8Array(8)),
      /hole at byte 0/,
    ],
    [
      "trailing bytes",
      withHeader({ x: { dtype: "F32", shape: [1], data_offsets: [0, 4] } }, new Uint8Array(8)),
      /trailing bytes/,
    ],
    [
      "overlap",
      withHeader({
        x: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
        y: { dtype: "F32", shape: [1], data_offsets: [4, 8] },
      }, new Uint8Array(8)),
      /overlaps/,
    ],
  ];
  for (const [what, bytes, pattern] of cases) {
    assert.throws(() => decodeSafetensors(bytes, "/m/model.safetensors"), (err: Error) => {
      assert.match(err.message, /^Cannot read safetensors file '\/m\/model\.safetensors': /, what);
      assert.match(err.message, pattern, what);
      return true;
    });
  }
});

Deno.test("a missing file is a clear error", async () => {
  await assert.rejects(
    readSafetensors("/nonexistent/model.safetensors"),
    /Cannot read safetensors file '\/nonexistent/,
  );
});
