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
