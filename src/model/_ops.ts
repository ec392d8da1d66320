/**
 * Ops with hand-written gradients. TF.js keeps every intermediate of a composed op, and the
 * gradient of every intermediate, alive until the whole backward pass ends; one op with its own
 * gradient keeps only what it saves. LayerNorm and GELU composed from primitives made up most
 * of a training step's peak memory.
 */
import * as tf from "./tf.ts";

/**
 * A typed `tf.customGrad` whose forward and backward each run in their own tidy, so that only the
 * value, the saved tensors and the input gradients outlive them. (TF.js runs a custom gradient
 * outside any tidy: its temporaries would otherwise live until the whole backward pass ends.)
 */
export function customOp(
  forward: (inputs: tf.Tensor[]) => { value: tf.Tensor; saved: tf.Tensor[] },
  backward: (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor[],
): (...inputs: tf.Tensor[]) => tf.Tensor {
  const op = tf.customGrad(
    ((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
      const save = args.pop() as tf.GradSaveFunc;
      const [value, ...saved] = tf.tidy(() => {
        const out = forward(args as tf.Tensor[]);
        return [out.value, ...out.saved];
      });
      save(saved);
      return { value: value!, gradFunc: (dy: tf.Tensor, s: tf.Tensor[]) => tf.tidy(() => backward(dy, s)) };
    }) as Parameters<typeof tf.customGrad>[0],
  );
  return (...inputs) => op(...inputs);
}

/** LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * weight + bias. */
export function layerNorm<R extends tf.Rank>(
  x: tf.Tensor<R>,
  weight: tf.Tensor1D | tf.Variable,
  bias: tf.Tensor1D | tf.Variable,
  eps: number,
): tf.Tensor<R> {
  const op = customOp(([xi, w, b]) => {
    const mean = tf.mean(xi!, -1, true); // [..., 1]
    const centered = tf.sub(xi!, mean);
    const rstd = tf.rsqrt(tf.add(tf.mean(tf.square(centered), -1, true), eps)); // [..., 1]
    const xhat = tf.mul(centered, rstd); // [..., C]
    return { value: tf.add(tf.mul(xhat, w!), b!), saved: [xhat, rstd, w!] };
  }, (dy, [xhat, rstd, w]) => {
    const rows = [-1, xhat!.shape[xhat!.rank - 1]!];
    const dxhat = tf.mul(dy, w!); // [..., C]
    // dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    const projection = tf.mul(xhat!, tf.mean(tf.mul(dxhat, xhat!), -1, true));
    const dx = tf.mul(rstd!, tf.sub(tf.sub(dxhat, tf.mean(dxhat, -1, true)), projection));
    const dw = tf.sum(tf.reshape(tf.mul(dy, xhat!), rows), 0);
    const db = tf.sum(tf.reshape(dy, rows), 0);
    return [dx, dw, db];
  });
  return op(x, weight, bias) as tf.Tensor<R>;
}

const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);
const INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);

/** GELU, tanh approximation (`gelu_new`): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
export function geluTanh<T extends tf.Tensor>(x: T): T {
  const op = customOp(([xi]) => {
    const x = xi!;
    const t = tf.tanh(tf.mul(tf.mul(x, tf.add(tf.mul(tf.square(x), 0.044715), 1)), SQRT_2_OVER_PI));
    return { value: tf.mul(tf.mul(x, 0.5), tf.add(t, 1)), saved: [x, t] };
  }, (dy, [x, t]) => {
    // d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    const du = tf.mul(tf.add(tf.mul(tf.square(x!), 3 * 0.044715), 1), SQRT_2_OVER_PI);
    const dt = tf.mul(tf.mul(tf.mul(x!, 0.5), tf.sub(1, tf.square(t!))), du);
    return [tf.mul(dy, tf.add(tf.mul(tf.add(t!, 1), 0.5), dt))];
  });
  return op(x) as T;
}

/** Exact GELU: 0.5 x (1 + erf(x / sqrt 2)). */
export function geluExact<T extends tf.Tensor>(x: T): T {
  const op = customOp(([xi]) => {
    const cdf = tf.mul(tf.add(tf.erf(tf.mul(xi!, Math.SQRT1_2)), 1), 0.5);
    return { value: tf.mul(xi!, cdf), saved: [xi!, cdf] };
  }, (dy, [x, cdf]) => {
    // d/dx = cdf(x) + x pdf(x)
    const pdf = tf.mul(tf.exp(tf.mul(tf.square(x!), -0.5)), INV_SQRT_2PI);
    return [tf.mul(dy, tf.add(cdf!, tf.mul(x!, pdf)))];
  });
  return op(x) as T;
}
