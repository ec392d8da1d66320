/**
 * A programmatic judge: a module that scores one completion or compares two. Verifiable tasks (arithmetic,
 * unit tests, regexes) get exact labels without any model or human in the loop.
 */

import { isAbsolute, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { type Choice, type Judge, JudgeError, type JudgeInput, type Prompt, type Verdict } from "./types.ts";

/**
 * What a verifier module exports: `score` (higher is better; equal scores are a tie) and/or `compare`
 * ("a", "b", "tie", or a number: positive means a is better, negative b, zero a tie). The prompt is passed as
 * the server received it: a string, or an array of `{role, content}` messages.
 */
export interface VerifierModule {
  score?: (prompt: Prompt, completion: string) => number | Promise<number>;
  compare?: (prompt: Prompt, a: string, b: string) => Choice | number | Promise<Choice | number>;
}

/** Options of `createVerifierJudge`. */
export interface VerifierJudgeOptions {
  /** The judge's id in verdicts and metrics. Default "verifier". */
  id?: string;
}

/** Dynamic-imports a verifier module from a path (relative to the working directory) or URL and checks its exports. */
export async function loadVerifierModule(pathOrUrl: string): Promise<VerifierModule> {
  const specifier = toSpecifier(pathOrUrl);
  let module: Record<string, unknown>;
  try {
    module = await import(specifier);
  } catch (err) {
    throw new Error(`Cannot load verifier module '${pathOrUrl}': ${(err as Error).message}`, { cause: err });
  }
  return validateVerifierModule(module, pathOrUrl);
}

/** Checks that a module exports a `score` or `compare` function, and returns just those. */
export function validateVerifierModule(module: Record<string, unknown>, name: string): VerifierModule {
  const exported = Object.keys(module).sort();
  for (const key of ["score", "compare"] as const) {
    if (key in module && typeof module[key] !== "function") {
      throw new TypeError(
        `Cannot use verifier module '${name}' as its export '${key}' must be a function: current type is ${typeof module[
          key
        ]}`,
      );
    }
  }
  if (typeof module.score !== "function" && typeof module.compare !== "function") {
    throw new TypeError(
      `Cannot use verifier module '${name}' as it must export 'score(prompt, completion)' or ` +
        `'compare(prompt, a, b)': current exports are [${exported.join(", ")}]`,
    );
  }
  return {
    score: module.score as VerifierModule["score"],
    compare: module.compare as VerifierModule["compare"],
  };
}

/** Creates a judge over a verifier module; it prefers `compare` when the module has both. */
export function createVerifierJudge(module: VerifierModule, options: VerifierJudgeOptions = {}): Judge {
  const id = options.id ?? "verifier";
  const { score, compare } = module;
  if (score === undefined && compare === undefined) {
    throw new TypeError(`Cannot create verifier judge '${id}' as its module has neither 'score' nor 'compare'`);
  }

  async function scoreOne(prompt: Prompt, completion: string): Promise<number> {
    const value = await call(() => score!(prompt, completion));
    if (typeof value !== "number" || Number.isNaN(value)) {
      throw new JudgeError(
        `Cannot judge with verifier '${id}' as 'score' must return a number: current value is ${String(value)}`,
        { judgeId: id, code: "invalid" },
      );
    }
    return value;
  }

  async function decide(input: JudgeInput): Promise<Choice> {
    if (compare !== undefined) return toChoice(await call(() => compare(input.prompt, input.a, input.b)));
    const [sa, sb] = await Promise.all([scoreOne(input.prompt, input.a), scoreOne(input.prompt, input.b)]);
    return sa > sb ? "a" : sb > sa ? "b" : "tie";
  }

  async function call<T>(fn: () => T | Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof JudgeError) throw err;
      throw new JudgeError(`Cannot judge with verifier '${id}' as it threw: ${(err as Error)?.message ?? err}`, {
        judgeId: id,
        code: "failed",
        cause: err,
      });
    }
  }

  function toChoice(value: unknown): Choice {
    if (value === "a" || value === "b" || value === "tie") return value;
    if (typeof value === "number" && !Number.isNaN(value)) return value > 0 ? "a" : value < 0 ? "b" : "tie";
    throw new JudgeError(
      `Cannot judge with verifier '${id}' as 'compare' must return "a", "b", "tie" or a number: ` +
        `current value is ${JSON.stringify(value) ?? String(value)}`,
      { judgeId: id, code: "invalid" },
    );
  }

  const judge: Judge = {
    id,
    kind: "verifier",
    async judge(input: JudgeInput, signal?: AbortSignal): Promise<Verdict> {
      if (signal?.aborted) {
        throw new JudgeError(`Cannot judge with verifier '${id}' as the request was aborted`, {
          judgeId: id,
          code: "aborted",
          cause: signal.reason,
        });
      }
      const start = performance.now();
      const choice = await decide(input);
      return { choice, latencyMs: performance.now() - start, judgeId: id };
    },
  };
  if (score !== undefined) judge.score = scoreOne;
  return judge;
}

function toSpecifier(pathOrUrl: string): string {
  // A scheme of two letters or more is a URL; "C:\..." is a Windows path.
  if (/^[a-z][a-z0-9+.-]+:/i.test(pathOrUrl)) return pathOrUrl;
  return pathToFileURL(isAbsolute(pathOrUrl) ? pathOrUrl : resolve(Deno.cwd(), pathOrUrl)).href;
}
