import assert from "node:assert/strict";
import * as tf from "../model/tf.ts";
import { assertClose, assertNoLeak, fixturePath, useBackend } from "../model/_test_utils.ts";
import { readDpoExpected } from "./_fixtures.ts";
import { ktoLoss, LOSS_TYPES, preferenceLoss } from "./losses.ts";

function relClose(actual: number, expected: number, rel: number, what: string): void {
  const tol = rel * Math.max(1, Math.abs(expected));
  assert.ok(Math.abs(actual - expected) <= tol, `${what}: ${actual} != ${expected} (tolerance ${tol})`);
}

Deno.test("every loss type and its metrics match PyTorch's, from the same log-probs", async () => {
  await useBackend("wasm");
  const expected = await readDpoExpected();
  const p = expected.pairs;
  // A loss type registered without a PyTorch reference would pass this test untested: every one needs a case.
  const covered = new Set(expected.losses.flatMap((c) => (Array.isArray(c.loss_type) ? c.loss_type : [c.loss_type])));
  for (const type of LOSS_TYPES) assert.ok(covered.has(type), `no PyTorch reference case for loss type '${type}'`);
  await assertNoLeak(async () => {
    for (const c of expected.losses) {
      const out = tf.tidy(() => {
        const r = preferenceLoss({
          policyChosen: tf.tensor1d(p.map((x) => x.policy_chosen_logp)),
          policyRejected: tf.tensor1d(p.map((x) => x.policy_rejected_logp)),
          refChosen: tf.tensor1d(p.map((x) => x.ref_chosen_logp)),
          refRejected: tf.tensor1d(p.map((x) => x.ref_rejected_logp)),
          chosenLengths: tf.tensor1d(p.map((x) => x.chosen_len)),
          rejectedLengths: tf.tensor1d(p.map((x) => x.rejected_len)),
        }, {
          beta: c.beta,
          labelSmoothing: c.label_smoothing,
          lossTypes: Array.isArray(c.loss_type) ? c.loss_type : [c.loss_type],
          lossWeights: c.loss_weights,
          lengthNormalize: c.length_normalize,
        });
        return [r.loss, r.chosenRewards, r.rejectedRewards, r.chosenLogps, r.rejectedLogps];
      });
      const [loss, rc, rr, lc, lr] = await Promise.all(out.map((t) => t.data()));
      tf.dispose(out);
      relClose(loss![0]!, c.loss, 1e-5, `${c.name}: loss`);
      const mean = (xs: ArrayLike<number>) => Array.from(xs).reduce((a, b) => a + b, 0) / xs.length;
      const m = c.metrics;
      relClose(mean(rc!), m["rewards/chosen"]!, 1e-5, `${c.name}: rewards/chosen`);
      relClose(mean(rr!), m["rewards/rejected"]!, 1e-5, `${c.name}: rewards/rejected`);
      relClose(mean(Array.from(rc!, (x, i) => x - rr![i]!)), m["rewards/margins"]!, 1e-5, `${c.name}: margins`);
      relClose(mean(Array.from(rc!, (x, i) => (x > rr![i]! ? 1 : 0))), m["rewards/accuracies"]!, 0, `${c.name}: acc`);
      relClose(mean(lc!), m["logps/chosen"]!, 1e-5, `${c.name}: logps/chosen`);
      relClose(mean(lr!), m["logps/rejected"]!, 1e-5, `${c.name}: logps/rejected`);
    }
  }, "losses");
});

Deno.test("the loss is ln 2 when the policy equals the reference", () => {
  const loss = tf.tidy(() => {
    const same = tf.tensor1d([-3, -10.5, -0.25]);
    return preferenceLoss({
      policyChosen: same,
      policyRejected: tf.tensor1d([-4, -2, -8]),
      refChosen: same,
      refRejected: tf.tensor1d([-4, -2, -8]),
      chosenLengths: tf.tensor1d([2, 5, 1]),
      rejectedLengths: tf.tensor1d([3, 1, 4]),
    }, { beta: 0.1, labelSmoothing: 0, lossTypes: ["sigmoid"] }).loss;
  });
  assertClose(loss.dataSync(), [Math.LN2], 1e-7, "loss");
  loss.dispose();
});

Deno.test("mismatched loss weights are a clear error", () => {
  const t = tf.tensor1d([0]);
  const logps = {
    policyChosen: t,
    policyRejected: t,
    refChosen: t,
    refRejected: t,
    chosenLengths: t,
    rejectedLengths: t,
  };
  assert.throws(
    () =>
      tf.tidy(() =>
        preferenceLoss(logps, { beta: 0.1, labelSmoothing: 0, lossTypes: ["sigmoid"], lossWeights: [1, 2] }).loss
      ),
    /'loss_weights' needs one weight per loss type \(1\): current length is 2/,
  );
  t.dispose();
});

Deno.test("KTO matches PyTorch, with a positive and with a clamped reference point", async () => {
  const kto = JSON.parse(await Deno.readTextFile(fixturePath("dpo/expected.json"))).kto as {
    beta: number;
    desirable_weight: number;
    undesirable_weight: number;
    examples: { label: boolean; policy_logp: number; ref_logp: number; kl_policy_logp: number; kl_ref_logp: number }[];
    kl: number;
    loss: number;
    trl_rotation: { kl_logratios: number[]; kl: number; loss: number };
  };
  const ex = kto.examples;
  const settings = { beta: kto.beta, desirableWeight: kto.desirable_weight, undesirableWeight: kto.undesirable_weight };
  const run = (klPolicy: number[], klRef: number[]) =>
    tf.tidy(() => {
      const r = ktoLoss({
        policy: tf.tensor1d(ex.map((e) => e.policy_logp)),
        ref: tf.tensor1d(ex.map((e) => e.ref_logp)),
        desirable: tf.tensor1d(ex.map((e) => (e.label ? 1 : 0))),
        klPolicy: tf.tensor1d(klPolicy),
        klRef: tf.tensor1d(klRef),
      }, settings);
      return [r.loss, r.kl];
    });
  const [loss, kl] = run(ex.map((e) => e.kl_policy_logp), ex.map((e) => e.kl_ref_logp));
  relClose(loss!.dataSync()[0]!, kto.loss, 1e-5, "KTO loss");
  relClose(kl!.dataSync()[0]!, kto.kl, 1e-5, "KTO reference point");
  // TRL's own pairing gives a negative KL estimate here, which the reference point clamps to 0.
  const rot = kto.trl_rotation;
  const [loss2, kl2] = run(rot.kl_logratios, rot.kl_logratios.map(() => 0));
  relClose(loss2!.dataSync()[0]!, rot.loss, 1e-5, "KTO loss, clamped");
  assert.equal(kl2!.dataSync()[0], rot.kl);
  tf.dispose([loss!, kl!, loss2!, kl2!]);
});
