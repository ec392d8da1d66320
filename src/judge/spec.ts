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

import { findTask, TASK_NAMES } from "../tasks/registry.ts";

/** The kinds a judge spec names. */
export const JUDGE_SPEC_KINDS = ["task", "verifier", "hf", "webhook"] as const;

/** One member of a judge spec. */
export interface JudgeSpecMember {
  kind: (typeof JUDGE_SPEC_KINDS)[number];
  /** The module, for `verifier`. */
  path?: string;
  /** The task, for `task`. */
  task?: string;
  /** Weight in an ensemble's majority (default 1). */
  weight: number;
}

/** A parsed judge spec: `human` (no automated judge) or its members (several: an ensemble). */
export type JudgeSpec = { human: true } | { human: false; members: JudgeSpecMember[] };

/** One line for usage texts. */
export const JUDGE_SPEC_SYNTAX = `${
  TASK_NAMES.join(" | ")
} | verifier:PATH | hf | webhook, comma-separated for an ensemble, *W a weight`;

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
    if (name === "hf" || name === "webhook") return { kind: name, weight };
    if (name === "human") throw new TypeError("judge 'human' cannot be in an ensemble: it only stands alone");
    throw new TypeError(`unknown judge '${name}': expected ${JUDGE_SPEC_SYNTAX}`);
  });
  if (members.length > 1 && members.some((m) => m.kind === "webhook")) {
    throw new TypeError("judge 'webhook' cannot be in an ensemble: a person's verdict arrives later");
  }
  if (members.length === 1 && members[0]!.weight !== 1) {
    throw new TypeError(`judge '${text}': a weight only means something in an ensemble`);
  }
  return { human: false, members };
}
