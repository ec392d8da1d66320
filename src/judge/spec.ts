/**
 * The one way every command names its judge: `J[,J...]`, each `J` one of
 *
 * - a task's name (`arithmetic`, see `src/tasks/registry.ts`): that task's checker as a verifier;
 * - `verifier:PATH`: a module exporting `score(prompt, completion)` or `compare(prompt, a, b)`;
 * - `hf`: an LLM judge (its model, endpoint and key are options of their own);
 * - `webhook`: people, through a signed webhook (alone only: a person's answer arrives later);
 *
 * optionally followed by `*W`, the member's weight in an ensemble's `majority` rule (default 1). Several
 * make an ensemble. `human` alone (where a command allows it) means no automated judge: pairs wait for the
 * label page or the feedback API.
 */

import { findTask } from "../tasks/registry.ts";
import { JUDGE_KINDS, type JudgeKindName, type JudgeSpecMember } from "./registry.ts";

export type { JudgeSpecMember };

/** A parsed judge spec: `human` (no automated judge) or its members (several: an ensemble). */
export type JudgeSpec = { human: true } | { human: false; members: JudgeSpecMember[] };

/** One line for usage texts. */
export const JUDGE_SPEC_SYNTAX = `${
  Object.values(JUDGE_KINDS).map((k) => k.syntax).join(" | ")
}, comma-separated for an ensemble, *W a weight`;

// The kinds a spec names by their name alone (`hf`), not by a task's name or with a `:ARG`.
const NAMED = Object.keys(JUDGE_KINDS).filter((kind) => JUDGE_KINDS[kind as JudgeKindName].syntax === kind);

/** Parses a judge spec; throws a `TypeError` whose message (no "Cannot", for callers to prefix) names the part that is wrong. */
export function parseJudgeSpec(spec: string, options: { allowHuman?: boolean } = {}): JudgeSpec {
  const text = spec.trim();
  if (text === "human") {
    if (options.allowHuman) return { human: true };
    throw new TypeError("'human' means no judge process (pairs wait for people), which this command cannot use");
  }
  const parts = text.split(",").map((s) => s.trim());
  const members = parts.map((part): JudgeSpecMember => {
    const star = part.lastIndexOf("*");
    const name = star < 0 ? part : part.slice(0, star).trim();
    const weight = star < 0 ? 1 : Number(part.slice(star + 1));
    if (!(Number.isFinite(weight) && weight > 0)) {
      throw new TypeError(`judge '${part}': the weight after '*' must be a positive number`);
    }
    if (name.startsWith("verifier:")) {
      const path = name.slice("verifier:".length).trim();
      if (path === "") throw new TypeError("judge 'verifier:' names no module: expected verifier:PATH");
      return { kind: "verifier", path, weight };
    }
    if (name === "verifier") {
      throw new TypeError("judge 'verifier' names no module: expected verifier:PATH");
    }
    if (findTask(name)) return { kind: "task", task: name, weight };
    if (NAMED.includes(name)) return { kind: name as JudgeKindName, weight };
    if (name === "human") throw new TypeError("judge 'human' cannot be in an ensemble: it only stands alone");
    throw new TypeError(`unknown judge '${name}': expected ${JUDGE_SPEC_SYNTAX}`);
  });
  for (const m of members.length > 1 ? members : []) {
    const alone = (JUDGE_KINDS[m.kind] as { alone?: string }).alone;
    if (alone) throw new TypeError(`judge '${m.kind}' cannot be in an ensemble: ${alone}`);
  }
  if (members.length === 1 && members[0]!.weight !== 1) {
    throw new TypeError(`judge '${text}': a weight only means something in an ensemble`);
  }
  return { human: false, members };
}
