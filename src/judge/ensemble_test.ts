import assert from "node:assert/strict";
import { createEnsembleJudge, decideMajority, decideUnanimous } from "./ensemble.ts";
import { type Choice, type Judge, JudgeError } from "./types.ts";

function fixed(id: string, answer: Choice | "fail", score?: number): Judge {
  const judge: Judge = {
    id,
    kind: "verifier",
    judge(): Promise<never> | Promise<{ choice: Choice; latencyMs: number; judgeId: string }> {
      if (answer === "fail") return Promise.reject(new JudgeError(`${id} failed`, { judgeId: id, code: "network" }));
      return Promise.resolve({ choice: answer, latencyMs: 1, judgeId: id });
    },
  };
  if (score !== undefined) judge.score = () => Promise.resolve(score);
  return judge;
}

const PAIR = { prompt: "p", a: "x", b: "y" };

async function choiceOf(judges: Judge[]): Promise<Choice> {
  const verdict = await createEnsembleJudge(judges).judge(PAIR);
  if (verdict === "pending") throw new Error("unexpected pending");
  return verdict.choice;
}

Deno.test("ensemble majority: the members that voted a or b decide; abstentions and failures never veto", async () => {
  assert.equal(await choiceOf([fixed("1", "a"), fixed("2", "a"), fixed("3", "b")]), "a");
  assert.equal(await choiceOf([fixed("1", "b"), fixed("2", "tie"), fixed("3", "b")]), "b");
  assert.equal(await choiceOf([fixed("1", "a"), fixed("2", "b"), fixed("3", "tie")]), "tie");
  assert.equal(await choiceOf([fixed("1", "a"), fixed("2", "b")]), "tie");
  // --judge hf,arithmetic: the verifier's vote stands when the LLM abstains (tie) or fails.
  assert.equal(await choiceOf([fixed("hf", "tie"), fixed("arithmetic", "a")]), "a");
  assert.equal(await choiceOf([fixed("hf", "fail"), fixed("arithmetic", "b")]), "b");
  assert.equal(await choiceOf([fixed("1", "tie"), fixed("2", "tie"), fixed("3", "a")]), "a");
  assert.equal(await choiceOf([fixed("1", "tie"), fixed("2", "fail")]), "tie");
  await assert.rejects(
    createEnsembleJudge([fixed("1", "fail"), fixed("2", "fail")]).judge(PAIR),
    (e: unknown) =>
      e instanceof JudgeError && e.judgeId === "ensemble" &&
      /every member failed: 1: failed \(1 failed\), 2: failed/.test(e.message),
  );
});

Deno.test("ensemble unanimous: all members the same a or b; a failure is retried, any other split a tie", async () => {
  const unanimous = async (judges: Judge[]) => {
    const verdict = await createEnsembleJudge(judges, { rule: "unanimous" }).judge(PAIR);
    assert.ok(verdict !== "pending");
    return verdict.choice;
  };
  assert.equal(await unanimous([fixed("1", "a"), fixed("2", "a")]), "a");
  assert.equal(await unanimous([fixed("1", "a"), fixed("2", "tie")]), "tie");
  assert.equal(await unanimous([fixed("1", "tie"), fixed("2", "tie")]), "tie");
  await assert.rejects(
    createEnsembleJudge([fixed("1", "a"), fixed("2", "fail")], { rule: "unanimous" }).judge(PAIR),
    /a member failed and the rule is unanimous/,
  );
});

Deno.test("ensemble: every member's vote, latency and usage travel with the verdict", async () => {
  const usage = { requests: 2, promptTokens: 30, completionTokens: 7 };
  const llm: Judge = {
    id: "llm",
    kind: "hf",
    judge: () => Promise.resolve({ choice: "b", latencyMs: 40, judgeId: "llm", usage }),
  };
  const panel = createEnsembleJudge([fixed("x", "a"), llm, fixed("z", "fail")], { id: "panel" });
  const verdict = await panel.judge(PAIR);
  assert.ok(verdict !== "pending");
  assert.equal(verdict.judgeId, "panel");
  assert.equal(verdict.choice, "tie");
  assert.equal(verdict.agreed, false);
  assert.match(verdict.reason!, /x: a, llm: b, z: failed \(z failed\)/);
  assert.deepEqual(verdict.votes!.map((v) => [v.judgeId, v.choice, v.error]), [
    ["x", "a", undefined],
    ["llm", "b", undefined],
    ["z", "failed", "z failed"],
  ]);
  assert.equal(verdict.votes![1]!.latencyMs, 40);
  assert.deepEqual(verdict.votes![1]!.usage, usage);
  assert.deepEqual(verdict.usage, usage, "the ensemble's usage sums its members'");

  const same = await createEnsembleJudge([fixed("x", "a"), fixed("y", "a")]).judge(PAIR);
  assert.ok(same !== "pending");
  assert.equal(same.agreed, true);
  assert.equal(same.usage, undefined, "no member reported usage");
});

Deno.test("ensemble majority with weights: the heavier side wins, abstentions still do not veto", async () => {
  const weighted = async (judges: Judge[], weights: number[]) => {
    const verdict = await createEnsembleJudge(judges, { weights }).judge(PAIR);
    assert.ok(verdict !== "pending");
    return verdict.choice;
  };
  assert.equal(await weighted([fixed("hf", "b"), fixed("arithmetic", "a")], [1, 2]), "a");
  assert.equal(await weighted([fixed("1", "b"), fixed("2", "b"), fixed("3", "a")], [1, 1, 3]), "a");
  assert.equal(await weighted([fixed("1", "b"), fixed("2", "b"), fixed("3", "a")], [1, 1, 2]), "tie");
  assert.equal(await weighted([fixed("1", "tie"), fixed("2", "b")], [5, 0.5]), "b");
  assert.throws(() => createEnsembleJudge([fixed("1", "a")], { weights: [0] }), /one positive weight per member/);
  assert.throws(() => createEnsembleJudge([fixed("1", "a")], { weights: [1, 1] }), /one positive weight per member/);
});

Deno.test("ensemble: construction rules and the mean score", async () => {
  assert.throws(() => createEnsembleJudge([]), /at least one member/);
  assert.throws(() => createEnsembleJudge([fixed("a", "a"), fixed("a", "b")]), /'a' repeats/);
  const human: Judge = { id: "humans", kind: "webhook", judge: () => Promise.resolve("pending") };
  assert.throws(() => createEnsembleJudge([fixed("a", "a"), human]), /webhook judge 'humans'/);
  const scored = createEnsembleJudge([fixed("1", "a", 1), fixed("2", "a", 0)]);
  assert.equal(await scored.score!("p", "c"), 0.5);
  assert.equal(createEnsembleJudge([fixed("1", "a", 1), fixed("2", "a")]).score, undefined);
});

Deno.test("decideMajority and decideUnanimous: the rules in full", () => {
  assert.equal(decideMajority(["a"]), "a");
  assert.equal(decideMajority(["failed"]), "undecided");
  assert.equal(decideMajority(["a", "failed"]), "a");
  assert.equal(decideMajority(["a", "b", "tie", "failed"]), "tie");
  assert.equal(decideMajority(["a", "b", "b", "tie", "tie"]), "b");
  assert.equal(decideMajority(["tie", "tie"]), "tie");
  assert.equal(decideMajority(["a", "b", "b"], [3, 1, 1]), "a");
  assert.equal(decideUnanimous(["b", "b", "b"]), "b");
  assert.equal(decideUnanimous(["b", "b", "failed"]), "undecided");
  assert.equal(decideUnanimous(["b", "a"]), "tie");
});
