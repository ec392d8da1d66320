/** Choosing the next token from logits: greedy, temperature, top-k, top-p; seeded. */

/** How the next token is chosen; names as in Hugging Face's GenerationConfig. */
export interface SamplingParams {
  /** Divides the logits; 0 means greedy (argmax). Default 1. */
  temperature?: number;
  /** Keep only the k most likely tokens; 0 keeps all. Default 0. */
  topK?: number;
  /** Keep the smallest set of tokens whose probability reaches p; 1 keeps all. Default 1. */
  topP?: number;
}

/** A seeded uniform generator on [0, 1): SplitMix32 seeding into sfc32. */
export function createRng(seed: number): () => number {
  let s = seed >>> 0;
  const split = () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = split(), b = split(), c = split(), d = split();
  return () => {
    const t = (((a + b) >>> 0) + d) >>> 0;
    d = (d + 1) >>> 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) >>> 0;
    c = ((c << 21) | (c >>> 11)) >>> 0;
    c = (c + t) >>> 0;
    return t / 4294967296;
  };
}

/** Index of the largest value (the first one on ties). */
export function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i]! > values[best]!) best = i;
  return best;
}

/** Picks a token id from one row of logits. */
export function sampleToken(logits: Float32Array, params: SamplingParams, rng: () => number): number {
  const temperature = params.temperature ?? 1;
  const topK = params.topK ?? 0;
  const topP = params.topP ?? 1;
  if (temperature === 0 || topK === 1) return argmax(logits);
  let threshold = -Infinity;
  if (topK > 0 && topK < logits.length) {
    const sorted = Float32Array.from(logits).sort();
    threshold = sorted[logits.length - topK]!;
  }
  let ids: number[] = [];
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) {
    if (logits[i]! >= threshold && logits[i]! > -Infinity) {
      ids.push(i);
      if (logits[i]! > max) max = logits[i]!;
    }
  }
  let probs = ids.map((i) => Math.exp((logits[i]! - max) / temperature));
  let total = probs.reduce((a, b) => a + b, 0);
  if (topP < 1) {
    const order = ids.map((_, j) => j).sort((x, y) => probs[y]! - probs[x]!);
    const keptIds: number[] = [];
    const keptProbs: number[] = [];
    let mass = 0;
    for (const j of order) {
      keptIds.push(ids[j]!);
      keptProbs.push(probs[j]!);
      mass += probs[j]! / total;
      if (mass >= topP) break;
    }
    ids = keptIds;
    probs = keptProbs;
    total = probs.reduce((a, b) => a + b, 0);
  }
  let r = rng() * total;
  for (let j = 0; j < ids.length; j++) {
    r -= probs[j]!;
    if (r < 0) return ids[j]!;
  }
  return ids[ids.length - 1]!;
}
