/**
 * The optimizer side of a DPO step: AdamW and SGD with the update rules of `torch.optim`, global-norm
 * gradient clipping as `torch.nn.utils.clip_grad_norm_`, and the warmup schedules of Hugging Face
 * transformers. Checked against PyTorch by tests/fixtures/optimizer (scripts/make_optimizer_fixtures.py).
 */
import * as tf from "../model/tf.ts";
import { type AdamWStep, heapSumOfSquares, WasmAdamW } from "./_optimizer_wasm.ts";

/** The update rules on offer. */
export type OptimizerName = "adamw" | "sgd";

/** Hyperparameters of an optimizer; options that do not apply to `name` are ignored. */
export interface OptimizerConfig {
  /** Which update rule: `torch.optim.AdamW` or `torch.optim.SGD`. */
  name: OptimizerName;
  /** Base learning rate, the value a schedule multiplies (`step` takes the lr to use). */
  learningRate: number;
  /** Weight decay: decoupled for AdamW (p ← p·(1 − lr·wd)), added to the gradient for SGD. Default 0 (HF). */
  weightDecay?: number;
  /** AdamW's (β1, β2). Default [0.9, 0.999]. */
  betas?: [number, number];
  /** AdamW's ε, added to the bias-corrected sqrt(v). Default 1e-8. */
  eps?: number;
  /** SGD's momentum μ (0 keeps no buffer). Default 0. */
  momentum?: number;
}

/** One state tensor, as read back from the device. */
export interface StateTensor {
  /** Shape of the tensor (equal to its parameter's). */
  shape: number[];
  /** Values in row-major order; a copy owned by the caller. */
  values: Float32Array;
}

/** Everything an optimizer needs to resume exactly: `exp_avg/<p>`, `exp_avg_sq/<p>` or `momentum_buffer/<p>`. */
export interface OptimizerState {
  /** Steps taken so far (AdamW's bias correction depends on it). */
  step: number;
  /** State tensors by name; empty before the first step, as in torch. */
  tensors: Map<string, StateTensor>;
}

type Resolved = Required<OptimizerConfig>;

const DEFAULTS = { weightDecay: 0, betas: [0.9, 0.999] as [number, number], eps: 1e-8, momentum: 0 };

/** Names of the state tensors an update rule keeps per parameter (after the first step). */
const SLOTS: Record<OptimizerName, (config: Resolved) => string[]> = {
  adamw: () => ["exp_avg", "exp_avg_sq"],
  sgd: (config) => config.momentum !== 0 ? ["momentum_buffer"] : [],
};

/**
 * One update of a parameter, synchronous and run inside the caller's tidy. `slot` returns the state
 * tensor of that kind for this parameter, or undefined before the first step; `set` stores a new value.
 */
type Update = (args: {
  config: Resolved;
  p: tf.Variable;
  g: tf.Tensor;
  lr: number;
  t: number;
  slot: (kind: string) => tf.Tensor | undefined;
  set: (kind: string, value: tf.Tensor) => void;
}) => tf.Tensor;

const UPDATES: Record<OptimizerName, Update> = {
  // torch.optim.adamw._single_tensor_adamw, in the same order of operations.
  adamw: ({ config, p, g, lr, t, slot, set }) => {
    const [beta1, beta2] = config.betas;
    const decayed = config.weightDecay !== 0 ? tf.mul(p, 1 - lr * config.weightDecay) : p;
    const m0 = slot("exp_avg") ?? tf.zerosLike(p);
    const v0 = slot("exp_avg_sq") ?? tf.zerosLike(p);
    const m = tf.add(tf.mul(m0, beta1), tf.mul(g, 1 - beta1));
    const v = tf.add(tf.mul(v0, beta2), tf.mul(tf.square(g), 1 - beta2));
    set("exp_avg", m);
    set("exp_avg_sq", v);
    const stepSize = lr / (1 - beta1 ** t);
    const denom = tf.add(tf.div(tf.sqrt(v), Math.sqrt(1 - beta2 ** t)), config.eps);
    return tf.sub(decayed, tf.mul(tf.div(m, denom), stepSize));
  },
  // torch.optim.sgd._single_tensor_sgd without dampening or Nesterov: the first buffer is the gradient.
  sgd: ({ config, p, g, lr, slot, set }) => {
    let d = config.weightDecay !== 0 ? tf.add(g, tf.mul(p, config.weightDecay)) : g;
    if (config.momentum !== 0) {
      const buf = slot("momentum_buffer");
      d = buf === undefined ? d : tf.add(tf.mul(buf, config.momentum), d);
      set("momentum_buffer", d);
    }
    return tf.sub(p, tf.mul(d, lr));
  },
};

/** Options of `new Optimizer`. */
export interface OptimizerOptions {
  /**
   * AdamW on the wasm backend as one WebAssembly SIMD loop per parameter over the wasm heap
   * (`_optimizer_wasm.ts`), its two moments in a memory of their own (not on the 4 GiB heap), the
   * parameter updated in place. Default true; false keeps the composed TF.js ops (the path every other
   * backend takes).
   */
  fused?: boolean;
}

/** AdamW or SGD over named float32 variables, updated in place; call `dispose` to free its state. */
export class Optimizer {
  #step = 0;
  readonly config: Readonly<Resolved>;
  readonly #params: Map<string, tf.Variable>;
  /** State on the device (the composed path). */
  readonly #slots = new Map<string, tf.Variable>();
  /** The fused path, with its state. */
  readonly #fused: WasmAdamW | undefined;

  /** Keeps `params` (not copied, not owned) and validates `config`. */
  constructor(params: Map<string, tf.Variable>, config: OptimizerConfig, options: OptimizerOptions = {}) {
    this.config = resolveConfig(config);
    this.#fused = (options.fused ?? true) && this.config.name === "adamw" ? WasmAdamW.create() : undefined;
    for (const [name, p] of params) {
      if (p.dtype !== "float32") {
        throw new Error(`Cannot optimize parameter '${name}' as it must be float32: current dtype is ${p.dtype}`);
      }
    }
    this.#params = new Map(params);
  }

  /** Whether updates take the fused WebAssembly path (`OptimizerOptions.fused`, AdamW on the wasm backend). */
  get fused(): boolean {
    return this.#fused !== undefined;
  }

  /** Steps taken so far (set by `load`). */
  get stepCount(): number {
    return this.#step;
  }

  /** Builds an optimizer over `params` and loads `state` into it (see `load`). */
  static restore(
    params: Map<string, tf.Variable>,
    config: OptimizerConfig,
    state: OptimizerState,
    options: OptimizerOptions = {},
  ): Optimizer {
    const optimizer = new Optimizer(params, config, options);
    optimizer.load(state);
    return optimizer;
  }

  /**
   * Applies one update with learning rate `lr` (the scheduled value, see `learningRateAt`) to the
   * gradients times `gradScale` (a clipping coefficient, see `clipCoefficient`; default 1). `grads`
   * needs exactly one gradient per parameter, of its shape; they are read, not disposed.
   */
  step(grads: Map<string, tf.Tensor>, lr: number, gradScale = 1): void {
    if (!(Number.isFinite(lr) && lr >= 0)) {
      throw new Error(
        `Cannot take an optimizer step as the learning rate must be finite and >= 0: current value is ${lr}`,
      );
    }
    for (const name of grads.keys()) {
      if (!this.#params.has(name)) throw new Error(`Cannot take an optimizer step: '${name}' is not a parameter`);
    }
    for (const [name, p] of this.#params) {
      const g = grads.get(name);
      if (g === undefined) throw new Error(`Cannot take an optimizer step: no gradient for parameter '${name}'`);
      if (!sameShape(g.shape, p.shape)) {
        throw new Error(
          `Cannot take an optimizer step: the gradient of '${name}' has shape ${
            shapeText(g.shape)
          } but the parameter has ${shapeText(p.shape)}`,
        );
      }
    }
    if (!(Number.isFinite(gradScale) && gradScale > 0)) {
      throw new Error(
        `Cannot take an optimizer step as 'gradScale' must be finite and > 0: current value is ${gradScale}`,
      );
    }
    const t = this.#step + 1;
    const update = UPDATES[this.config.name];
    const fused = this.#fused && this.#adamWStep(lr, t, gradScale);
    // One tidy per parameter: temporaries of the whole model at once would not fit next to it.
    for (const [name, p] of this.#params) {
      if (fused) {
        this.#fused!.update(name, p, grads.get(name)!, fused);
        continue;
      }
      tf.tidy(() => {
        const slot = (kind: string) => this.#slots.get(`${kind}/${name}`);
        const set = (kind: string, value: tf.Tensor) => {
          const v = this.#slots.get(`${kind}/${name}`);
          if (v === undefined) this.#slots.set(`${kind}/${name}`, tf.variable(value, false));
          else v.assign(value);
        };
        const g = gradScale === 1 ? grads.get(name)! : tf.mul(grads.get(name)!, gradScale);
        p.assign(update({ config: this.config, p, g, lr, t, slot, set }));
      });
    }
    this.#step = t;
  }

  /**
   * UPDATES.adamw's operations in the same order, its constants folded (the clipping scale into β's
   * complements): composed, the update is ~12 ops per parameter, each allocating a parameter-sized tensor.
   */
  #adamWStep(lr: number, t: number, gradScale: number): AdamWStep {
    const [beta1, beta2] = this.config.betas;
    return {
      beta1,
      beta2,
      c1: (1 - beta1) * gradScale,
      c2: (1 - beta2) * gradScale * gradScale,
      decay: 1 - lr * this.config.weightDecay,
      stepSize: lr / (1 - beta1 ** t),
      inv: 1 / Math.sqrt(1 - beta2 ** t),
      eps: this.config.eps,
    };
  }

  /** Copies the step count and every state tensor off the device (a consistent snapshot, even if `step` runs meanwhile). */
  async state(): Promise<OptimizerState> {
    const step = this.#step;
    const snapshot = [...this.#slots].map(([name, v]) => [name, tf.clone(v)] as const);
    const tensors = new Map<string, StateTensor>();
    for (const [name, values] of this.#fused?.moments() ?? []) {
      tensors.set(name, {
        shape: [...this.#params.get(name.slice(name.indexOf("/") + 1))!.shape],
        values,
      });
    }
    try {
      for (const [name, t] of snapshot) {
        tensors.set(name, { shape: [...t.shape], values: new Float32Array(await t.data()) });
      }
    } finally {
      tf.dispose(snapshot.map(([, t]) => t));
    }
    return { step, tensors };
  }

  /** Replaces the step count and state with `state`, after checking every name and shape; nothing changes on error. */
  load(state: OptimizerState): void {
    const fail = (why: string): never => {
      throw new Error(`Cannot restore optimizer state: ${why}`);
    };
    if (!(Number.isInteger(state.step) && state.step >= 0)) {
      fail(`'step' must be an integer >= 0: current value is ${state.step}`);
    }
    const expected = new Map<string, tf.Variable>();
    if (state.step > 0) {
      for (const [name, p] of this.#params) {
        for (const kind of SLOTS[this.config.name](this.config)) expected.set(`${kind}/${name}`, p);
      }
    }
    for (const [name, t] of state.tensors) {
      const p = expected.get(name);
      if (p === undefined) {
        const known = expected.size > 0 ? `expected ${[...expected.keys()].join(", ")}` : "expected none";
        fail(`'${name}' is not a state tensor of ${this.config.name} at step ${state.step} (${known})`);
      } else if (!sameShape(t.shape, p.shape)) {
        fail(`'${name}' has shape ${shapeText(t.shape)} but the parameter has ${shapeText(p.shape)}`);
      } else if (t.values.length !== p.size) {
        fail(`'${name}' has ${t.values.length} values but its shape ${shapeText(t.shape)} needs ${p.size}`);
      }
    }
    for (const name of expected.keys()) {
      if (!state.tensors.has(name)) fail(`'${name}' is missing (${this.config.name} at step ${state.step})`);
    }
    this.dispose();
    if (this.#fused && state.step > 0) {
      for (const name of this.#params.keys()) {
        const moment = (kind: string) => state.tensors.get(`${kind}/${name}`)!.values;
        this.#fused.setMoments(name, moment("exp_avg"), moment("exp_avg_sq"));
      }
    } else {
      for (const [name, t] of state.tensors) {
        this.#slots.set(name, tf.tidy(() => tf.variable(tf.tensor(t.values, t.shape, "float32"), false)));
      }
    }
    this.#step = state.step;
  }

  /** Frees the state tensors (the parameters belong to the caller). */
  dispose(): void {
    tf.dispose([...this.#slots.values()]);
    this.#slots.clear();
    this.#fused?.clear();
  }
}

/** What `clipGradNorm` returns. */
export interface ClippedGrads {
  /** New tensors owned by the caller: scaled copies, or unscaled copies when no clipping applied. */
  grads: Map<string, tf.Tensor>;
  /** The global L2 norm before clipping, sqrt(Σ‖g‖²). */
  norm: number;
  /** False when the norm is NaN or ±Inf: skip the update, as the grads are unusable. */
  finite: boolean;
}

/**
 * Clips gradients to a global L2 norm of `maxNorm`, as `torch.nn.utils.clip_grad_norm_`: scales by
 * maxNorm / (norm + 1e-6) when that is below 1. The input tensors are left untouched and still owned by
 * the caller (dispose them) unless `consume` is set, which disposes each input once its result exists;
 * the returned tensors are new, also the caller's, and are never scaled when the norm is not finite.
 */
export async function clipGradNorm(
  grads: Map<string, tf.Tensor>,
  maxNorm: number,
  options: { consume?: boolean } = {},
): Promise<ClippedGrads> {
  checkMaxNorm(maxNorm);
  const norm = await globalNorm([...grads.values()]);
  const finite = Number.isFinite(norm);
  const coef = clipCoefficient(norm, maxNorm);
  const out = new Map<string, tf.Tensor>();
  for (const [name, g] of grads) {
    out.set(name, tf.tidy(() => (coef !== 1 ? tf.mul(g, coef) : tf.clone(g))));
    // With `consume`, each input goes as soon as its copy exists: never two full sets of gradients.
    if (options.consume) g.dispose();
  }
  return { grads: out, norm, finite };
}

/**
 * What `clip_grad_norm_` multiplies the gradients by for a global norm `norm`: maxNorm / (norm + 1e-6)
 * when that is below 1, else 1 (also for a norm that is not finite: such a step is skipped).
 */
export function clipCoefficient(norm: number, maxNorm: number): number {
  checkMaxNorm(maxNorm);
  const coef = maxNorm / (norm + 1e-6);
  return Number.isFinite(norm) && coef < 1 ? coef : 1;
}

function checkMaxNorm(maxNorm: number): void {
  if (!(Number.isFinite(maxNorm) && maxNorm > 0)) {
    throw new Error(`Cannot clip gradients as 'maxNorm' must be finite and > 0: current value is ${maxNorm}`);
  }
}

/** The global L2 norm sqrt(Σ‖g‖²) of `tensors`, accumulated in float64; NaN or Infinity when one is not finite. */
export async function globalNorm(tensors: tf.Tensor[]): Promise<number> {
  if (tensors.length === 0) return 0;
  // On the wasm heap in place: no squared copy, no device round trip.
  const onHeap = heapSumOfSquares(tensors);
  if (onHeap !== undefined) return Math.sqrt(onHeap);
  // Per-tensor sums of squares in float32, summed in float64 here: one read of the device.
  // One tidy per tensor: the squares of every gradient at once would double the gradients' memory.
  const perTensor = tensors.map((g) => tf.tidy(() => tf.sum(tf.square(g))));
  const sums = tf.stack(perTensor);
  tf.dispose(perTensor);
  const parts = await sums.data<"float32">();
  sums.dispose();
  return Math.sqrt(parts.reduce((a, b) => a + b, 0));
}

/** A learning-rate schedule of Hugging Face transformers, each with linear warmup from 0. */
export type LrSchedule = "constant" | "linear" | "cosine" | "inverse_sqrt";

/** Options for `learningRateAt`. */
export interface LearningRateOptions {
  /** The peak learning rate (the optimizer's `learningRate`). */
  base: number;
  /**
   * `get_constant_schedule_with_warmup`, `get_linear_schedule_with_warmup`, `get_cosine_schedule_with_warmup` or
   * `get_inverse_sqrt_schedule` (timescale: the warmup steps; it ignores `totalSteps`).
   */
  schedule: LrSchedule;
  /** Steps of linear warmup from 0 to `base`. */
  warmupSteps: number;
  /** Planned optimizer steps (transformers' `num_training_steps`). */
  totalSteps: number;
}

// transformers/optimization.py: _get_{constant,linear,cosine}_schedule_with_warmup_lr_lambda.
const LAMBDAS: Record<LrSchedule, (step: number, warmup: number, total: number) => number> = {
  constant: () => 1,
  linear: (step, warmup, total) => Math.max(0, (total - step) / Math.max(1, total - warmup)),
  cosine: (step, warmup, total) => {
    const progress = (step - warmup) / Math.max(1, total - warmup);
    return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * 0.5 * 2 * progress)));
  },
  // get_inverse_sqrt_schedule: timescale = the warmup steps (10,000 without warmup); no planned end needed.
  inverse_sqrt: (step, warmup) => {
    const timescale = warmup > 0 ? warmup : 10_000;
    return 1 / Math.sqrt((step + timescale - warmup) / timescale);
  },
};

/**
 * The learning rate for the optimizer step with 0-based index `step` (0 for the first step, so with
 * warmup the first step uses lr 0), as HF's LambdaLR gives it: base · lambda(step). Like transformers,
 * nothing is clamped past `totalSteps`: linear stays at 0, cosine (half a cycle) rises again.
 */
export function learningRateAt(step: number, options: LearningRateOptions): number {
  const { base, schedule, warmupSteps, totalSteps } = options;
  const fail = (rule: string, value: unknown): never => {
    throw new Error(`Cannot compute the learning rate as ${rule}: current value is ${value}`);
  };
  if (!(Number.isInteger(step) && step >= 0)) fail("'step' must be an integer >= 0", step);
  if (!(Number.isFinite(base) && base >= 0)) fail("'base' must be finite and >= 0", base);
  if (!Object.hasOwn(LAMBDAS, schedule)) fail(`'schedule' must be one of ${Object.keys(LAMBDAS).join(", ")}`, schedule);
  if (!(Number.isInteger(warmupSteps) && warmupSteps >= 0)) fail("'warmupSteps' must be an integer >= 0", warmupSteps);
  if (!(Number.isInteger(totalSteps) && totalSteps >= 0)) fail("'totalSteps' must be an integer >= 0", totalSteps);
  if (step < warmupSteps) return base * (step / Math.max(1, warmupSteps));
  return base * LAMBDAS[schedule](step, warmupSteps, totalSteps);
}

function resolveConfig(config: OptimizerConfig): Resolved {
  const resolved: Resolved = {
    name: config.name,
    learningRate: config.learningRate,
    weightDecay: config.weightDecay ?? DEFAULTS.weightDecay,
    betas: config.betas ?? DEFAULTS.betas,
    eps: config.eps ?? DEFAULTS.eps,
    momentum: config.momentum ?? DEFAULTS.momentum,
  };
  const fail = (rule: string, value: unknown): never => {
    throw new Error(`Cannot create the optimizer as ${rule}: current value is ${value}`);
  };
  if (!Object.hasOwn(UPDATES, resolved.name)) {
    fail(`'name' must be one of ${Object.keys(UPDATES).join(", ")}`, resolved.name);
  }
  if (!(Number.isFinite(resolved.learningRate) && resolved.learningRate >= 0)) {
    fail("'learningRate' must be finite and >= 0", resolved.learningRate);
  }
  if (!(Number.isFinite(resolved.weightDecay) && resolved.weightDecay >= 0)) {
    fail("'weightDecay' must be finite and >= 0", resolved.weightDecay);
  }
  const [b1, b2] = resolved.betas;
  if (!(resolved.betas.length === 2 && b1 >= 0 && b1 < 1 && b2 >= 0 && b2 < 1)) {
    fail("'betas' must be two numbers in [0, 1)", `[${resolved.betas}]`);
  }
  if (!(Number.isFinite(resolved.eps) && resolved.eps >= 0)) fail("'eps' must be finite and >= 0", resolved.eps);
  if (!(Number.isFinite(resolved.momentum) && resolved.momentum >= 0)) {
    fail("'momentum' must be finite and >= 0", resolved.momentum);
  }
  return { ...resolved, betas: [b1, b2] };
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

function shapeText(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}
