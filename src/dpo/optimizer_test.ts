import assert from "node:assert/strict";
import * as tf from "../model/tf.ts";
import { assertClose, assertNoLeak, fixturePath, useBackend } from "../model/_test_utils.ts";
import {
  clipCoefficient,
  clipGradNorm,
  globalNorm,
  learningRateAt,
  type LrSchedule,
  Optimizer,
  type OptimizerConfig,
  type OptimizerState,
} from "./optimizer.ts";

/** The schema of tests/fixtures/optimizer/expected.json (made by scripts/make_optimizer_fixtures.py). */
interface Fixture {
  params: Record<string, Stored>;
  grads: Record<string, Stored>[];
  runs: Run[];
  schedules: { schedule: LrSchedule; base: number; warmup_steps: number; total_steps: number; lrs: number[] }[];
}
interface Stored {
  shape: number[];
  values: number[];
}
interface Run {
  name: string;
  optimizer: {
    name: "adamw" | "sgd";
    learning_rate: number;
    weight_decay: number;
    betas?: [number, number];
    eps?: number;
    momentum?: number;
  };
  schedule: { type: LrSchedule; warmup_steps: number; total_steps: number } | null;
  max_norm: number | null;
  steps: { lr: number; grad_norm: number; clipped: boolean; params: Record<string, number[]> }[];
  state: { step: number; tensors: Record<string, Stored> };
}

const fixture: Fixture = JSON.parse(await Deno.readTextFile(fixturePath("optimizer/expected.json")));

/** Float32 against float64: 1e-5 relative to the largest magnitude of the expected tensor. */
function assertNear(actual: ArrayLike<number>, expected: number[], what: string): void {
  const scale = Math.max(...expected.map(Math.abs), 1e-30);
  assertClose(actual, expected, 1e-5 * scale, what);
}

function configOf(run: Run): OptimizerConfig {
  const o = run.optimizer;
  return {
    name: o.name,
    learningRate: o.learning_rate,
    weightDecay: o.weight_decay,
    betas: o.betas,
    eps: o.eps,
    momentum: o.momentum,
  };
}

function lrOf(run: Run, step: number): number {
  if (run.schedule === null) return run.optimizer.learning_rate;
  return learningRateAt(step, {
    base: run.optimizer.learning_rate,
    schedule: run.schedule.type,
    warmupSteps: run.schedule.warmup_steps,
    totalSteps: run.schedule.total_steps,
  });
}

function makeParams(values: Record<string, Stored>): Map<string, tf.Variable> {
  return new Map(
    Object.entries(values).map(([name, s]) => [name, tf.tidy(() => tf.variable(tf.tensor(s.values, s.shape), false))]),
  );
}

function gradsAt(step: number): Map<string, tf.Tensor> {
  return new Map(Object.entries(fixture.grads[step]!).map(([name, s]) => [name, tf.tensor(s.values, s.shape)]));
}

/** Clips (when the run does) and takes the run's step `i`; returns the pre-clip norm. */
async function takeStep(optimizer: Optimizer, run: Run, i: number): Promise<number> {
  const raw = gradsAt(i);
  let grads = raw;
  let norm = NaN;
  if (run.max_norm !== null) {
    const clipped = await clipGradNorm(raw, run.max_norm);
    tf.dispose([...raw.values()]);
    assert.ok(clipped.finite);
    grads = clipped.grads;
    norm = clipped.norm;
  }
  optimizer.step(grads, lrOf(run, i));
  tf.dispose([...grads.values()]);
  return norm;
}

async function readParams(params: Map<string, tf.Variable>): Promise<Record<string, Float32Array>> {
  const out: Record<string, Float32Array> = {};
  for (const [name, p] of params) out[name] = new Float32Array(await p.data());
  return out;
}

function runNamed(name: string): Run {
  const run = fixture.runs.find((r) => r.name === name);
  if (run === undefined) throw new Error(`no run '${name}' in the fixture`);
  return run;
}

// Two ways through each run: the composed ops with clipGradNorm's scaled copies (every backend but
// wasm), and on wasm the fused update with the clipping coefficient passed in, as the trainer does.
for (const run of fixture.runs) {
  for (const fused of [false, true]) {
    const how = fused ? "fused, clipping scale passed in" : "composed ops, clipGradNorm";
    Deno.test(`${run.name} (${how}): lr, grad norm, parameters and final state match PyTorch`, async () => {
      await useBackend("wasm");
      await assertNoLeak(async () => {
        const params = makeParams(fixture.params);
        const optimizer = new Optimizer(params, configOf(run), { fused });
        assert.equal(optimizer.fused, fused && run.optimizer.name === "adamw");
        for (const [i, expected] of run.steps.entries()) {
          assert.ok(Math.abs(lrOf(run, i) - expected.lr) <= 1e-15, `${run.name} step ${i}: lr`);
          // Without clipping (SGD) a huge maxNorm still reports the norm and copies the gradients unscaled.
          const raw = gradsAt(i);
          const maxNorm = run.max_norm ?? 1e30;
          let norm: number;
          if (fused) {
            norm = await globalNorm([...raw.values()]);
            optimizer.step(raw, lrOf(run, i), clipCoefficient(norm, maxNorm));
            tf.dispose([...raw.values()]);
          } else {
            const clipped = await clipGradNorm(raw, maxNorm);
            tf.dispose([...raw.values()]);
            assert.ok(clipped.finite);
            norm = clipped.norm;
            optimizer.step(clipped.grads, lrOf(run, i));
            tf.dispose([...clipped.grads.values()]);
          }
          assert.ok(Math.abs(norm - expected.grad_norm) <= 1e-6 * expected.grad_norm, `step ${i}: norm ${norm}`);
          const actual = await readParams(params);
          for (const [name, values] of Object.entries(expected.params)) {
            assertNear(actual[name]!, values, `${run.name} step ${i}: ${name}`);
          }
        }
        const state = await optimizer.state();
        assert.equal(state.step, run.state.step);
        assert.deepEqual([...state.tensors.keys()].sort(), Object.keys(run.state.tensors).sort());
        for (const [name, expected] of Object.entries(run.state.tensors)) {
          const actual = state.tensors.get(name)!;
          assert.deepEqual(actual.shape, expected.shape, name);
          assertNear(actual.values, expected.values, `${run.name} state ${name}`);
        }
        optimizer.dispose();
        tf.dispose([...params.values()]);
      }, run.name);
    });
  }
}

Deno.test("the fused update never writes through to a tensor sharing a parameter's storage", async () => {
  await useBackend("wasm");
  await assertNoLeak(async () => {
    const params = makeParams(fixture.params);
    // As a reference refresh does: `reference.assign(policy)` shares the policy's storage.
    const copies = [...params].map(([name, p]) => [name, tf.variable(p, false)] as const);
    const before = await readParams(new Map(copies));
    const optimizer = new Optimizer(params, { name: "adamw", learningRate: 0.1 });
    const grads = gradsAt(0);
    optimizer.step(grads, 0.1);
    const after = await readParams(new Map(copies));
    const moved = await readParams(params);
    for (const [name] of copies) {
      assert.deepEqual(after[name], before[name], `${name}: the sharer keeps its values`);
      assert.notDeepEqual(moved[name], before[name], `${name}: the parameter moved`);
    }
    optimizer.step(grads, 0.1); // now unshared: in place
    assert.deepEqual(await readParams(new Map(copies)), before);
    optimizer.dispose();
    tf.dispose([...grads.values(), ...params.values(), ...copies.map(([, v]) => v)]);
  });
});

Deno.test("the adamw fixture clips exactly where PyTorch did, and the clipped norm is max_norm", async () => {
  await useBackend("wasm");
  const run = runNamed("adamw_constant");
  assert.ok(run.steps.some((s) => s.clipped), "the fixture must exercise clipping");
  await assertNoLeak(async () => {
    for (const [i, step] of run.steps.entries()) {
      const raw = gradsAt(i);
      const first = await clipGradNorm(raw, run.max_norm!);
      const second = await clipGradNorm(first.grads, 1e9);
      const expected = step.clipped ? run.max_norm! / (step.grad_norm + 1e-6) * step.grad_norm : step.grad_norm;
      assert.ok(Math.abs(second.norm - expected) <= 1e-5 * expected, `step ${i}: ${second.norm} vs ${expected}`);
      assert.ok(Math.abs(first.norm - step.grad_norm) <= 1e-6 * step.grad_norm);
      tf.dispose([...raw.values(), ...first.grads.values(), ...second.grads.values()]);
    }
  });
});

Deno.test("learningRateAt matches transformers' schedules under torch's LambdaLR", () => {
  for (const table of fixture.schedules) {
    const lrs = table.lrs.map((_, step) =>
      learningRateAt(step, {
        base: table.base,
        schedule: table.schedule,
        warmupSteps: table.warmup_steps,
        totalSteps: table.total_steps,
      })
    );
    assertClose(lrs, table.lrs, 1e-15, table.schedule);
  }
  assert.throws(
    () => learningRateAt(-1, { base: 1, schedule: "linear", warmupSteps: 0, totalSteps: 3 }),
    /Cannot compute the learning rate as 'step' must be an integer >= 0: current value is -1/,
  );
  assert.throws(
    () => learningRateAt(0, { base: 1, schedule: "step" as LrSchedule, warmupSteps: 0, totalSteps: 3 }),
    /'schedule' must be one of constant, linear, cosine, inverse_sqrt: current value is step/,
  );
});

// transformers' get_inverse_sqrt_schedule: warmup, then 1/sqrt((step + shift) / timescale), timescale = warmup.
Deno.test("learningRateAt: inverse_sqrt decays as transformers' get_inverse_sqrt_schedule", () => {
  const at = (step: number, warmupSteps: number) =>
    learningRateAt(step, { base: 1, schedule: "inverse_sqrt", warmupSteps, totalSteps: 0 });
  assert.equal(at(2, 4), 0.5); // warmup
  assert.equal(at(4, 4), 1);
  assert.equal(at(16, 4), 0.5);
  assert.equal(at(100, 4), 0.2);
  // no warmup: timescale 10,000
  assert.equal(at(0, 0), 1);
  assert.equal(at(30_000, 0), 0.5);
});

for (const name of ["adamw_cosine", "sgd"]) {
  Deno.test(`${name}: save after two steps, restore into a fresh optimizer, two more = uninterrupted`, async () => {
    await useBackend("wasm");
    const run = runNamed(name);
    await assertNoLeak(async () => {
      const straightParams = makeParams(fixture.params);
      const straight = new Optimizer(straightParams, configOf(run));
      for (let i = 0; i < 4; i++) await takeStep(straight, run, i);

      const firstParams = makeParams(fixture.params);
      const first = new Optimizer(firstParams, configOf(run));
      for (let i = 0; i < 2; i++) await takeStep(first, run, i);
      const saved: OptimizerState = await first.state();
      const savedParams = await readParams(firstParams);
      first.dispose();
      tf.dispose([...firstParams.values()]);

      const resumedParams = makeParams(
        Object.fromEntries(
          Object.entries(savedParams).map(([n, v]) => [n, { shape: fixture.params[n]!.shape, values: [...v] }]),
        ),
      );
      const resumed = Optimizer.restore(resumedParams, configOf(run), saved);
      assert.equal(resumed.stepCount, 2);
      for (let i = 2; i < 4; i++) await takeStep(resumed, run, i);

      assert.deepEqual(await readParams(resumedParams), await readParams(straightParams));
      assert.deepEqual(await resumed.state(), await straight.state());
      for (const [n, values] of Object.entries(run.steps[3]!.params)) {
        assertNear((await readParams(resumedParams))[n]!, values, `${name} resumed: ${n}`);
      }
      resumed.dispose();
      straight.dispose();
      tf.dispose([...resumedParams.values(), ...straightParams.values()]);
    });
  });
}

Deno.test("clipGradNorm reports a NaN or infinite norm as not finite and leaves the gradients unscaled", async () => {
  await useBackend("wasm");
  await assertNoLeak(async () => {
    for (const bad of [NaN, Infinity, -Infinity]) {
      const grads = new Map([["a", tf.tensor([1, bad, 3])], ["b", tf.tensor([[100, 200]])]]);
      const out = await clipGradNorm(grads, 1);
      assert.equal(out.finite, false, `${bad}`);
      assert.ok(!Number.isFinite(out.norm));
      assert.deepEqual([...await out.grads.get("b")!.data()], [100, 200]);
      assert.notEqual(out.grads.get("a"), grads.get("a"), "returns new tensors");
      tf.dispose([...grads.values(), ...out.grads.values()]);
    }
  });
});

Deno.test("clipGradNorm leaves its input intact and scales only when the norm exceeds maxNorm", async () => {
  await useBackend("wasm");
  await assertNoLeak(async () => {
    const grads = new Map([["a", tf.tensor([3, 0])], ["b", tf.tensor([4])]]);
    const big = await clipGradNorm(grads, 1);
    assert.equal(big.norm, 5);
    assertClose(await big.grads.get("a")!.data(), [3 / (5 + 1e-6), 0], 1e-7, "scaled a");
    assertClose(await big.grads.get("b")!.data(), [4 / (5 + 1e-6)], 1e-7, "scaled b");
    const small = await clipGradNorm(grads, 10);
    assert.deepEqual([...await small.grads.get("b")!.data()], [4]);
    assert.deepEqual([...await grads.get("a")!.data()], [3, 0]);
    const empty = await clipGradNorm(new Map(), 1);
    assert.deepEqual(empty, { grads: new Map(), norm: 0, finite: true });
    tf.dispose([...grads.values(), ...big.grads.values(), ...small.grads.values()]);
  });
});

Deno.test("restoring a state that does not fit the parameters is a clear error", async () => {
  await useBackend("wasm");
  await assertNoLeak(() => {
    const params = new Map([["x", tf.tidy(() => tf.variable(tf.zeros([4]), false))]]);
    const state = (tensors: [string, number[], number][], step = 1): OptimizerState => ({
      step,
      tensors: new Map(tensors.map(([n, shape, size]) => [n, { shape, values: new Float32Array(size) }])),
    });
    const adamw: OptimizerConfig = { name: "adamw", learningRate: 1e-3 };
    const restore = (s: OptimizerState, config = adamw) => Optimizer.restore(params, config, s).dispose();
    assert.throws(
      () => restore(state([["exp_avg/x", [3], 3], ["exp_avg_sq/x", [4], 4]])),
      { message: "Cannot restore optimizer state: 'exp_avg/x' has shape [3] but the parameter has [4]" },
    );
    assert.throws(
      () => restore(state([["exp_avg/x", [4], 4]])),
      { message: "Cannot restore optimizer state: 'exp_avg_sq/x' is missing (adamw at step 1)" },
    );
    assert.throws(
      () => restore(state([["exp_avg/x", [4], 4], ["exp_avg_sq/x", [4], 4], ["exp_avg/y", [4], 4]])),
      /Cannot restore optimizer state: 'exp_avg\/y' is not a state tensor of adamw at step 1 \(expected exp_avg\/x, exp_avg_sq\/x\)/,
    );
    assert.throws(
      () => restore(state([["exp_avg/x", [4], 4], ["exp_avg_sq/x", [4], 4]]), { name: "sgd", learningRate: 0.1 }),
      /'exp_avg\/x' is not a state tensor of sgd at step 1 \(expected none\)/,
    );
    assert.throws(
      () => restore(state([["momentum_buffer/x", [4], 5]]), { name: "sgd", learningRate: 0.1, momentum: 0.9 }),
      { message: "Cannot restore optimizer state: 'momentum_buffer/x' has 5 values but its shape [4] needs 4" },
    );
    assert.throws(() => restore(state([], -2)), /'step' must be an integer >= 0: current value is -2/);
    restore(state([], 0));
    tf.dispose([...params.values()]);
  });
});

Deno.test("a step checks its gradients and learning rate", async () => {
  await useBackend("wasm");
  await assertNoLeak(() => {
    const params = new Map([["x", tf.tidy(() => tf.variable(tf.zeros([2]), false))]]);
    const optimizer = new Optimizer(params, { name: "adamw", learningRate: 1e-3 });
    const g = tf.zeros([3]);
    assert.throws(() => optimizer.step(new Map(), 1e-3), /no gradient for parameter 'x'/);
    assert.throws(() => optimizer.step(new Map([["x", g]]), 1e-3), /gradient of 'x' has shape \[3\] but the parameter/);
    assert.throws(() => optimizer.step(new Map([["y", g]]), 1e-3), /'y' is not a parameter/);
    assert.throws(() => optimizer.step(new Map([["x", g]]), NaN), /learning rate must be finite/);
    assert.throws(() => new Optimizer(params, { name: "adamw", learningRate: 1, betas: [0.9, 1] }), /'betas'/);
    assert.throws(() => new Optimizer(params, { name: "adam" as "adamw", learningRate: 1 }), /'name' must be one of/);
    assert.equal(optimizer.stepCount, 0);
    g.dispose();
    tf.dispose([...params.values()]);
  });
});

Deno.test("steps leak no tensor: only the state is allocated, once, and dispose frees it", async () => {
  await useBackend("wasm");
  for (
    const config of [{ name: "adamw", learningRate: 1e-2, weightDecay: 0.1 }, {
      name: "sgd",
      learningRate: 0.1,
      momentum: 0.9,
      weightDecay: 0.01,
    }] satisfies OptimizerConfig[]
  ) {
    await assertNoLeak(async () => {
      const params = makeParams(fixture.params);
      const optimizer = new Optimizer(params, config);
      const grads = gradsAt(0);
      optimizer.step(grads, 1e-2);
      const afterFirst = tf.memory().numTensors;
      for (let i = 0; i < 3; i++) {
        optimizer.step(grads, 1e-2);
        assert.equal(tf.memory().numTensors, afterFirst, `${config.name} step ${i + 2}`);
      }
      const clipped = await clipGradNorm(grads, 0.1);
      assert.equal(tf.memory().numTensors, afterFirst + grads.size, "clipGradNorm keeps only its result");
      (await optimizer.state()).tensors.clear();
      assert.equal(tf.memory().numTensors, afterFirst + grads.size, "state() keeps nothing");
      optimizer.dispose();
      tf.dispose([...grads.values(), ...clipped.grads.values(), ...params.values()]);
    }, config.name);
  }
});
