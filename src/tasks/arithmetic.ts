/**
 * The built-in verifiable task: "What is 37+48? Answer:" prompts and a checker that scores 1 when the first
 * number of the completion is the true answer. Which problems are held out is a property of the problem (a
 * hash), not of the seed, so training prompts never contain an evaluation problem whatever seeds are used.
 */

import type { Prompt } from "../judge/types.ts";
import type { Task } from "./task.ts";

/** The operators the task can ask about. */
export type ArithmeticOp = "+" | "-" | "*";

/** One problem: `x op y`, with its answer. */
export interface ArithmeticProblem {
  x: number;
  op: ArithmeticOp;
  y: number;
  answer: number;
}

/** Options of the prompt generators. */
export interface ArithmeticTaskOptions {
  /** Seed of the pseudo-random generator. Default 0. */
  seed?: number;
  /** Smallest operand. Default 0. */
  minOperand?: number;
  /** Largest operand. Default 99. */
  maxOperand?: number;
  /** Operators to draw from. Default ["+"]. */
  ops?: ArithmeticOp[];
  /** Fraction of all problems reserved for evaluation. Default 0.1. */
  heldOutFraction?: number;
}

/** Which problems a generator draws: the training ones or the held-out ones. */
export type ArithmeticSplit = "train" | "heldout";

/** Formats a problem as a prompt: `What is 37+48? Answer:`. */
export function formatArithmeticPrompt(problem: Pick<ArithmeticProblem, "x" | "op" | "y">): string {
  return `What is ${problem.x}${problem.op}${problem.y}? Answer:`;
}

/** Computes `x op y`. */
export function solve(x: number, op: ArithmeticOp, y: number): number {
  return op === "+" ? x + y : op === "-" ? x - y : x * y;
}

const PROMPT_PATTERN = /what\s+is\s+(-?\d+)\s*([+\-*×x])\s*(-?\d+)\s*\?/gi;

/**
 * Reads the problem out of a prompt (the last "What is x op y?" in it, so that few-shot prompts work; for a
 * conversation, the last user message). Throws when there is none.
 */
export function parseArithmeticPrompt(prompt: Prompt): ArithmeticProblem {
  const text = normalizeMinus(typeof prompt === "string" ? prompt : lastUserContent(prompt));
  const matches = [...text.matchAll(PROMPT_PATTERN)];
  const last = matches.at(-1);
  if (last === undefined) {
    throw new Error(
      `Cannot check the answer as the prompt has no 'What is x+y?' question: current prompt is ${
        JSON.stringify(text.slice(0, 200))
      }`,
    );
  }
  const x = Number(last[1]);
  const op: ArithmeticOp = last[2] === "+" ? "+" : last[2] === "-" ? "-" : "*";
  const y = Number(last[3]);
  return { x, op, y, answer: solve(x, op, y) };
}

/**
 * The first number in a text, or undefined. Skips leading text and spaces, reads a leading minus sign,
 * accepts thousands separators ("1,234") and ignores trailing text ("85. The answer is...").
 * A decimal ("85.5") is returned as such, so that it never counts as the integer before its point.
 */
export function parseFirstNumber(text: string): number | undefined {
  const match = /(-?)(\d[\d,]*)(?:\.(\d+))?/.exec(normalizeMinus(text));
  if (match === null) return undefined;
  const [, sign, rawDigits, fraction] = match as unknown as [string, string, string, string | undefined];
  let digits = rawDigits;
  let decimals = fraction;
  if (/^\d{1,3}(?:,\d{3})+$/.test(rawDigits)) {
    digits = rawDigits.replaceAll(",", ""); // "1,234"
  } else if (rawDigits.includes(",")) {
    digits = rawDigits.split(",")[0]!; // "85, 86" or "12,34": the number ends at the comma
    decimals = undefined;
  }
  const value = Number(`${sign}${digits}${decimals === undefined ? "" : `.${decimals}`}`);
  return Object.is(value, -0) ? 0 : value;
}

/** The checker: 1 when the first number of the completion is the true answer, else 0. */
export function score(prompt: Prompt, completion: string): number {
  const { answer } = parseArithmeticPrompt(prompt);
  return parseFirstNumber(completion) === answer ? 1 : 0;
}

/** The built-in verifier module, in the shape `loadVerifierModule` returns for user modules. */
export const arithmeticVerifier = { score } as const;

/** Whether a problem belongs to the held-out split (a fixed hash of the problem, independent of any seed). */
export function isHeldOut(problem: Pick<ArithmeticProblem, "x" | "op" | "y">, heldOutFraction = 0.1): boolean {
  return fnv1a(`${problem.x}${problem.op}${problem.y}`) / 2 ** 32 < heldOutFraction;
}

/** How many two-digit additions (operands 0–99, the built-in task) the held-out split holds. */
export function heldOutAdditions(heldOutFraction = 0.1): number {
  let n = 0;
  for (let x = 0; x <= 99; x++) for (let y = 0; y <= 99; y++) if (isHeldOut({ x, op: "+", y }, heldOutFraction)) n++;
  return n;
}

/** Returns a function that yields an endless deterministic stream of prompts from one split. */
export function createArithmeticPrompts(
  options: ArithmeticTaskOptions & { split?: ArithmeticSplit } = {},
): () => string {
  const { seed, minOperand, maxOperand, ops, heldOutFraction } = resolveOptions(options);
  const wantHeldOut = (options.split ?? "train") === "heldout";
  const random = mulberry32(seed);
  const draw = () => minOperand + Math.floor(random() * (maxOperand - minOperand + 1));
  return () => {
    // Rejection sampling; the split's share of problems bounds the expected number of draws.
    for (let i = 0; i < 100_000; i++) {
      const problem = { x: draw(), op: ops[Math.floor(random() * ops.length)]!, y: draw() };
      if (isHeldOut(problem, heldOutFraction) === wantHeldOut) return formatArithmeticPrompt(problem);
    }
    throw new Error(
      `Cannot draw a ${options.split ?? "train"} arithmetic prompt as the split is empty: ` +
        `current 'heldOutFraction' is ${heldOutFraction}`,
    );
  };
}

/** `count` distinct held-out prompts, the same for the same options. */
export function heldOutArithmeticPrompts(count: number, options: ArithmeticTaskOptions = {}): string[] {
  const next = createArithmeticPrompts({ ...options, split: "heldout" });
  const seen = new Set<string>();
  for (let draws = 0; seen.size < count; draws++) {
    if (draws > 100 * count + 1000) {
      throw new Error(
        `Cannot draw ${count} distinct held-out arithmetic prompts as the held-out split is smaller: ` +
          `got ${seen.size}; widen the operand range or raise 'heldOutFraction'`,
      );
    }
    seen.add(next());
  }
  return [...seen];
}

/** A small seeded pseudo-random generator (mulberry32) returning floats in [0, 1). */
export function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

function resolveOptions(options: ArithmeticTaskOptions): Required<ArithmeticTaskOptions> {
  const resolved = {
    seed: options.seed ?? 0,
    minOperand: options.minOperand ?? 0,
    maxOperand: options.maxOperand ?? 99,
    ops: options.ops ?? ["+"],
    heldOutFraction: options.heldOutFraction ?? 0.1,
  };
  if (!Number.isInteger(resolved.minOperand) || !Number.isInteger(resolved.maxOperand)) {
    throw new RangeError(
      `Cannot generate arithmetic prompts as operands must be integers: current range is ${resolved.minOperand}..${resolved.maxOperand}`,
    );
  }
  if (resolved.minOperand > resolved.maxOperand) {
    throw new RangeError(
      `Cannot generate arithmetic prompts as 'minOperand' must not exceed 'maxOperand': current range is ${resolved.minOperand}..${resolved.maxOperand}`,
    );
  }
  if (resolved.ops.length === 0) {
    throw new RangeError("Cannot generate arithmetic prompts as 'ops' must not be empty: current value is []");
  }
  if (!(resolved.heldOutFraction >= 0 && resolved.heldOutFraction <= 1)) {
    throw new RangeError(
      `Cannot generate arithmetic prompts as 'heldOutFraction' must be in [0, 1]: current value is ${resolved.heldOutFraction}`,
    );
  }
  return resolved;
}

function lastUserContent(messages: { role: string; content: string }[]): string {
  return messages.findLast((m) => m.role === "user")?.content ?? "";
}

function normalizeMinus(text: string): string {
  return text.replaceAll("\u2212", "-"); // the Unicode minus sign some tokenizers and models produce
}

function fnv1a(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  // FNV's high bits barely move for short, similar strings; murmur3's finalizer mixes them.
  hash = Math.imul(hash ^ (hash >>> 16), 0x85ebca6b);
  hash = Math.imul(hash ^ (hash >>> 13), 0xc2b2ae35);
  return (hash ^ (hash >>> 16)) >>> 0;
}

/**
 * The built-in task's held-out split: one two-digit addition in five (1,991 of the 10,000), so that the gate and the
 * evaluation can each take enough prompts to tell versions a point apart. Its first 962 prompts are the one-in-ten
 * split (what `bench:learning` and the base model's script evaluate on), in the same order; the rest follow.
 */
const TASK_HELD_OUT_FRACTION = 0.2;

function taskHeldOut(count: number): string[] {
  const range = { minOperand: 0, maxOperand: 99 };
  const first = heldOutArithmeticPrompts(Math.min(count, heldOutAdditions()), range);
  if (count <= first.length) return first;
  const seen = new Set(first);
  const wider = heldOutArithmeticPrompts(heldOutAdditions(TASK_HELD_OUT_FRACTION), {
    ...range,
    heldOutFraction: TASK_HELD_OUT_FRACTION,
  });
  return [...first, ...wider.filter((p) => !seen.has(p))].slice(0, count);
}

/** The built-in task: two-digit additions, one problem in five held out. */
export const arithmeticTask: Task = {
  name: "arithmetic",
  description: "arithmetic (two-digit additions, training split)",
  trainingPrompts: (seed) =>
    createArithmeticPrompts({
      seed,
      minOperand: 0,
      maxOperand: 99,
      split: "train",
      heldOutFraction: TASK_HELD_OUT_FRACTION,
    }),
  heldOutSize: heldOutAdditions(TASK_HELD_OUT_FRACTION),
  heldOut: taskHeldOut,
  score,
  // Answers are at most four characters ("198"), a token or two each.
  answerTokens: 6,
};
