/**
 * Preference losses over [batch] tensors of sequence log-probs, one pure function per
 * `loss_type`, with TRL's definitions and metric names. All functions are synchronous:
 * call them inside `tf.tidy` or a gradient closure.
 */
import * as tf from "../model/tf.ts";

/** Pairwise loss types (`sft` is the NLL of the chosen completions, not a pairwise loss). */
export const LOSS_TYPES = ["sigmoid", "ipo", "hinge", "robust", "sft"] as const;

/** A `loss_type` name. */
export type LossType = typeof LOSS_TYPES[number];

/** Sequence log-probs of a batch of pairs: [B] each; lengths count completion tokens + eos. */
export interface PairLogps {
  policyChosen: tf.Tensor1D;
  policyRejected: tf.Tensor1D;
  refChosen: tf.Tensor1D;
  refRejected: tf.Tensor1D;
  chosenLengths: tf.Tensor1D;
  rejectedLengths: tf.Tensor1D;
}

/** Settings shared by the pairwise losses (TRL's names in the config). */
export interface LossSettings {
  /** β: the strength of the implicit KL constraint. */
  beta: number;
  /** ε: the assumed rate of flipped labels (cDPO and robust DPO). */
  labelSmoothing: number;
}

const logSigmoid = (x: tf.Tensor) => tf.neg(tf.softplus(tf.neg(x))); // tf.logSigmoid's gradient is broken

/** Per-pair losses from z = (π_c − π_r) − (ref_c − ref_r): [B] -> [B]. */
export const PAIR_LOSSES: Record<Exclude<LossType, "sft">, (z: tf.Tensor1D, s: LossSettings) => tf.Tensor1D> = {
  /** DPO; with label smoothing ε, conservative DPO: −(1−ε) log σ(βz) − ε log σ(−βz). */
  sigmoid: (z, { beta, labelSmoothing: e }) =>
    tf.sub(tf.mul(logSigmoid(tf.mul(z, beta)), -(1 - e)), tf.mul(logSigmoid(tf.mul(z, -beta)), e)),
  /** IPO: (z − 1/(2β))², on length-normalized log-probs. */
  ipo: (z, { beta }) => tf.square(tf.sub(z, 1 / (2 * beta))),
  /** SLiC hinge: relu(1 − βz). */
  hinge: (z, { beta }) => tf.relu(tf.sub(1, tf.mul(z, beta))),
  /** Robust DPO: (−(1−ε) log σ(βz) + ε log σ(−βz)) / (1 − 2ε). */
  robust: (z, { beta, labelSmoothing: e }) =>
    tf.div(
      tf.add(tf.mul(logSigmoid(tf.mul(z, beta)), -(1 - e)), tf.mul(logSigmoid(tf.mul(z, -beta)), e)),
      1 - 2 * e,
    ),
};

/** Options of `preferenceLoss`. */
export interface PreferenceLossOptions extends LossSettings {
  /** One or several loss types; several are summed with `lossWeights`. */
  lossTypes: LossType[];
  /** A weight per loss type; default 1 each. */
  lossWeights?: number[];
  /** Divide every log-prob by its length first (always on when `ipo` is among the types, as in TRL). */
  lengthNormalize?: boolean;
}

/** The scalar loss and the per-pair rewards behind TRL's `rewards/*` metrics. */
export interface PreferenceLoss {
  loss: tf.Scalar;
  /** β (π_c − ref_c) and β (π_r − ref_r) per pair: [B]. */
  chosenRewards: tf.Tensor1D;
  rejectedRewards: tf.Tensor1D;
  /** The log-probs the losses saw (normalized when length normalization is on): [B]. */
  chosenLogps: tf.Tensor1D;
  rejectedLogps: tf.Tensor1D;
}

/** Whether a configuration compares length-normalized log-probs. */
export function usesLengthNormalization(
  options: Pick<PreferenceLossOptions, "lossTypes" | "lengthNormalize">,
): boolean {
  return (options.lengthNormalize ?? false) || options.lossTypes.includes("ipo");
}

/** The combined preference loss of a batch: Σ weight · mean over pairs (sft: token-weighted NLL). */
export function preferenceLoss(logps: PairLogps, options: PreferenceLossOptions): PreferenceLoss {
  const normalize = usesLengthNormalization(options);
  const norm = (t: tf.Tensor1D, lengths: tf.Tensor1D) => (normalize ? tf.div(t, lengths) as tf.Tensor1D : t);
  const pc = norm(logps.policyChosen, logps.chosenLengths);
  const pr = norm(logps.policyRejected, logps.rejectedLengths);
  const rc = norm(logps.refChosen, logps.chosenLengths);
  const rr = norm(logps.refRejected, logps.rejectedLengths);
  const chosenRatio = tf.sub(pc, rc) as tf.Tensor1D;
  const rejectedRatio = tf.sub(pr, rr) as tf.Tensor1D;
  const z = tf.sub(chosenRatio, rejectedRatio) as tf.Tensor1D;
  const weights = options.lossWeights ?? options.lossTypes.map(() => 1);
  if (weights.length !== options.lossTypes.length) {
    throw new Error(
      `Cannot combine losses: 'loss_weights' needs one weight per loss type (${options.lossTypes.length}): current length is ${weights.length}`,
    );
  }
  let loss = tf.scalar(0);
  options.lossTypes.forEach((type, i) => {
    const term = type === "sft"
      // Token-weighted NLL of the chosen completions over the batch (unnormalized log-probs).
      ? tf.div(tf.neg(tf.sum(logps.policyChosen)), tf.sum(logps.chosenLengths))
      : tf.mean(PAIR_LOSSES[type](z, options));
    loss = tf.add(loss, tf.mul(term, weights[i]!));
  });
  return {
    loss,
    chosenRewards: tf.mul(chosenRatio, options.beta) as tf.Tensor1D,
    rejectedRewards: tf.mul(rejectedRatio, options.beta) as tf.Tensor1D,
    chosenLogps: pc,
    rejectedLogps: pr,
  };
}

/** Unpaired binary feedback: sequence log-probs [N] with a label each, and the mismatched pairs for the KL term. */
export interface KtoLogps {
  policy: tf.Tensor1D;
  ref: tf.Tensor1D;
  /** 1 for desirable, 0 for undesirable: [N]. */
  desirable: tf.Tensor1D;
  /**
   * Log-probs of prompt i with the completion of example (i+1) mod N, under policy and reference;
   * computed outside the gradient closure, so that the reference point carries no gradient.
   */
  klPolicy: tf.Tensor1D;
  klRef: tf.Tensor1D;
}

/** KTO's weights (TRL's `desirable_weight`, `undesirable_weight`). */
export interface KtoSettings {
  beta: number;
  desirableWeight: number;
  undesirableWeight: number;
}

/**
 * KTO (Ethayarajh et al.), as TRL computes it: the reference point z0 = max(0, mean KL estimate); desirable examples lose 1 − σ(β(r − z0)), undesirable 1 − σ(β(z0 − r)),
 * each times its weight; the loss is the mean over all examples.
 */
export function ktoLoss(logps: KtoLogps, s: KtoSettings): { loss: tf.Scalar; kl: tf.Scalar; rewards: tf.Tensor1D } {
  const ratio = tf.sub(logps.policy, logps.ref) as tf.Tensor1D;
  const kl = tf.maximum(tf.mean(tf.sub(logps.klPolicy, logps.klRef)), 0) as tf.Scalar;
  const good = tf.sub(1, tf.sigmoid(tf.mul(tf.sub(ratio, kl), s.beta)));
  const bad = tf.sub(1, tf.sigmoid(tf.mul(tf.sub(kl, ratio), s.beta)));
  const d = logps.desirable;
  const losses = tf.add(
    tf.mul(tf.mul(good, d), s.desirableWeight),
    tf.mul(tf.mul(bad, tf.sub(1, d)), s.undesirableWeight),
  );
  return { loss: tf.mean(losses) as tf.Scalar, kl, rewards: tf.mul(ratio, s.beta) as tf.Tensor1D };
}
