/**
 * Which two of n sampled responses a judge sees: never two that are the same text (blanks aside). With
 * a scorer, the best against the worst among texts that differ from the best; otherwise two different
 * texts at random. `null` when all n are the same text: there is nothing to judge.
 */
import { sameText } from "../store/schema.ts";

/** Two indices of different texts (best first when `scores` are given), or `null` when all are the same. */
export function pickCandidates(
  responses: readonly string[],
  scores?: readonly number[],
  random: () => number = Math.random,
): [number, number] | null {
  const differ = (i: number) => responses.flatMap((r, j) => (sameText(r, responses[i]!) ? [] : [j]));
  if (scores !== undefined) {
    const best = scores.indexOf(Math.max(...scores));
    const others = differ(best);
    if (others.length === 0) return null;
    const worst = others.reduce((w, j) => (scores[j]! < scores[w]! ? j : w));
    if (scores[worst]! < scores[best]!) return [best, worst];
    // Every score the same: no order to prefer, so two different texts at random as below.
  }
  const a = Math.floor(random() * responses.length);
  const others = differ(a);
  if (others.length === 0) return null;
  return [a, others[Math.floor(random() * others.length)]!];
}
