import assert from "node:assert/strict";
import * as tf from "../tf.ts";
import { describeBackend, initBackend } from "./backend.ts";

Deno.test("an explicit backend that cannot start is an error, never a silent fallback", async () => {
  // This machine has no libtensorflow (its npm package cannot download it here).
  await assert.rejects(
    initBackend("tensorflow"),
    /Cannot use backend 'tensorflow': @tensorflow\/tfjs-node-gpu did not load/,
  );
  await assert.rejects(
    initBackend("gpu" as never),
    /must be one of auto, webgpu, tensorflow, wasm, cpu: current value is 'gpu'/,
  );
});

Deno.test("auto says what it picked and why it passed over the others", async () => {
  const report = await initBackend("auto");
  assert.equal(tf.getBackend(), report.backend);
  assert.ok(["webgpu", "wasm"].includes(report.backend));
  assert.match(report.skipped[0]!, /^tensorflow: /);
  const line = describeBackend(report);
  assert.match(line, new RegExp(`^backend: ${report.backend} \\(.+\\); passed over tensorflow: `));
});

Deno.test("wasm and cpu start when asked for", async () => {
  for (const name of ["wasm", "cpu"] as const) {
    const report = await initBackend(name);
    assert.equal(report.backend, name);
    assert.equal(tf.getBackend(), name);
  }
  await initBackend("wasm");
});

Deno.test("a clone on wasm shares its data, outlives its original, and frees it last", async () => {
  await initBackend("wasm");
  const buffers = () => tf.backend().numDataIds();
  const before = buffers();
  const original = tf.tensor1d([1, 2, 3]);
  const copy = tf.clone(original);
  assert.equal(copy.dataId, original.dataId, "no second copy of the data");
  assert.equal(buffers(), before + 1);
  original.dispose();
  assert.deepEqual(Array.from(await copy.data()), [1, 2, 3]);
  assert.equal(buffers(), before + 1);
  copy.dispose();
  assert.equal(buffers(), before);
});
