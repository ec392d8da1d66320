/** The DPO fixtures made by scripts/make_dpo_fixtures.py (PyTorch), typed for the tests. */
import { fixturePath } from "../model/_test_utils.ts";
import type { LossType } from "./losses.ts";
import type { PreferencePair } from "./trainer.ts";

/** One pair with the log-probs PyTorch computed for it. */
export interface FixturePair {
  prompt: string;
  chosen: string;
  rejected: string;
  prompt_ids: number[];
  chosen_ids: number[];
  rejected_ids: number[];
  chosen_len: number;
  rejected_len: number;
  policy_chosen_logp: number;
  policy_rejected_logp: number;
  ref_chosen_logp: number;
  ref_rejected_logp: number;
}

/** One loss configuration with its loss and metrics. */
export interface FixtureLoss {
  name: string;
  loss_type: LossType | LossType[];
  loss_weights?: number[];
  beta: number;
  label_smoothing: number;
  length_normalize: boolean;
  loss: number;
  metrics: Record<string, number>;
}

/** The schema of tests/fixtures/dpo/expected.json (the parts the tests read). */
export interface DpoExpected {
  eos_token_id: number;
  pairs: FixturePair[];
  losses: FixtureLoss[];
  equal: { loss: number };
  sgd_step: {
    loss: number;
    lr: number;
    max_norm: number;
    grad_norm: number;
    params: Record<string, { shape: number[]; values: number[] }>;
  };
  sgd_step_unclipped: {
    lr: number;
    max_norm: number;
    grad_norm: number;
    params: Record<string, { shape: number[]; values: number[] }>;
  };
}

/** Reads tests/fixtures/dpo/expected.json. */
export async function readDpoExpected(): Promise<DpoExpected> {
  return JSON.parse(await Deno.readTextFile(fixturePath("dpo/expected.json")));
}

/** The fixture pairs as token ids. */
export function fixturePairs(expected: DpoExpected): PreferencePair[] {
  return expected.pairs.map((p) => ({ promptIds: p.prompt_ids, chosenIds: p.chosen_ids, rejectedIds: p.rejected_ids }));
}
