import assert from "node:assert/strict";
import { isAbsolute, relative } from "node:path";
import { arithmeticVerifier } from "../tasks/arithmetic.ts";
import { JudgeError } from "./types.ts";
import { createVerifierJudge, loadVerifierModule } from "./verifier.ts";

async function withModule(source: string, fn: (path: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "verifier_test_" });
  try {
    const path = `${dir}/verifier.ts`;
    await Deno.writeTextFile(path, source);
    await fn(path);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("verifier: a user module's score decides, equal scores are a tie", async () => {
  const source = `export function score(prompt: string, completion: string): number {
    return completion.includes(prompt.toUpperCase()) ? 1 : 0;
  }`;
  await withModule(source, async (path) => {
    const judge = createVerifierJudge(await loadVerifierModule(path), { id: "shout" });
    assert.equal(judge.kind, "verifier");
    const win = await judge.judge({ prompt: "hi", a: "HI!", b: "hi" });
    assert.ok(win !== "pending");
    assert.equal(win.choice, "a");
    assert.equal(win.judgeId, "shout");
    assert.ok(win.latencyMs >= 0);
    const tie = await judge.judge({ prompt: "hi", a: "no", b: "nope" });
    assert.equal(tie !== "pending" && tie.choice, "tie");
    assert.equal(await judge.score!("hi", "HI"), 1);
  });
});

Deno.test("verifier: compare may return a choice or a number; async works", async () => {
  const source = `export async function compare(_p: string, a: string, b: string) {
    return a.length === 99 ? "b" : a.length - b.length;
  }`;
  await withModule(source, async (path) => {
    const url = new URL(`file://${path}`).href;
    const judge = createVerifierJudge(await loadVerifierModule(url));
    assert.equal(judge.score, undefined);
    const longer = await judge.judge({ prompt: "p", a: "long", b: "x" });
    assert.equal(longer !== "pending" && longer.choice, "a");
    const shorter = await judge.judge({ prompt: "p", a: "x", b: "long" });
    assert.equal(shorter !== "pending" && shorter.choice, "b");
    const same = await judge.judge({ prompt: "p", a: "ab", b: "cd" });
    assert.equal(same !== "pending" && same.choice, "tie");
    const explicit = await judge.judge({ prompt: "p", a: "y".repeat(99), b: "x" });
    assert.equal(explicit !== "pending" && explicit.choice, "b");
  });
});

Deno.test("verifier: relative paths resolve against the working directory", async () => {
  await withModule("export const score = () => 0.5;", async (path) => {
    const relativePath = relative(Deno.cwd(), path);
    assert.ok(!isAbsolute(relativePath));
    const module = await loadVerifierModule(relativePath);
    assert.equal(typeof module.score, "function");
  });
});

Deno.test("verifier: modules without the right exports are refused clearly", async () => {
  await withModule("export const check = () => 1;", async (path) => {
    await assert.rejects(
      loadVerifierModule(path),
      /must export 'score\(prompt, completion\)' or 'compare\(prompt, a, b\)': current exports are \[check\]/,
    );
  });
  await withModule("export const score = 3;", async (path) => {
    await assert.rejects(loadVerifierModule(path), /export 'score' must be a function: current type is number/);
  });
  await assert.rejects(
    loadVerifierModule("/nonexistent/verifier.ts"),
    /Cannot load verifier module '\/nonexistent\/verifier.ts'/,
  );
});

Deno.test("verifier: bad results and thrown errors become JudgeErrors, never labels", async () => {
  const pair = { prompt: "p", a: "x", b: "y" };
  const reject = (judge: ReturnType<typeof createVerifierJudge>, code: string) =>
    assert.rejects(judge.judge(pair), (e: unknown) => e instanceof JudgeError && e.code === code);
  await reject(createVerifierJudge({ score: () => Number.NaN }), "invalid");
  await reject(createVerifierJudge({ compare: () => "A" as never }), "invalid");
  await reject(
    createVerifierJudge({
      compare: () => {
        throw new Error("bug in user code");
      },
    }),
    "failed",
  );
  const aborted = new AbortController();
  aborted.abort();
  await assert.rejects(
    createVerifierJudge({ score: () => 1 }).judge(pair, aborted.signal),
    (e: unknown) => e instanceof JudgeError && e.code === "aborted",
  );
});

Deno.test("verifier: the built-in arithmetic checker as a judge", async () => {
  const judge = createVerifierJudge(arithmeticVerifier, { id: "arithmetic" });
  const verdict = await judge.judge({ prompt: "What is 37+48? Answer:", a: " 84", b: " 85" });
  assert.equal(verdict !== "pending" && verdict.choice, "b");
});
