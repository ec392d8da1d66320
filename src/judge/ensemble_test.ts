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
      /every member failed: 1: failed \(network\), 2: failed/.test(e.message),
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

Deno.test("ensemble: agreement statistics for the dashboard", async () => {
  const judges = [fixed("x", "a"), fixed("y", "a"), fixed("z", "a")];
  const unanimous = createEnsembleJudge(judges, { id: "panel" });
  const verdict = await unanimous.judge(PAIR);
  assert.ok(verdict !== "pending");
  assert.equal(verdict.judgeId, "panel");
  assert.match(verdict.reason!, /x: a, y: a, z: a/);
  assert.equal(verdict.agreed, true);
  assert.equal(unanimous.agreement().unanimousFraction, 1);

  const split = createEnsembleJudge([fixed("x", "a"), fixed("y", "a"), fixed("z", "b")]);
  const splitVerdict = await split.judge(PAIR);
  assert.ok(splitVerdict !== "pending");
  assert.equal(splitVerdict.choice, "a");
  assert.equal(splitVerdict.agreed, false);
  await split.judge(PAIR);
  const stats = split.agreement();
  assert.equal(stats.verdicts, 2);
  assert.equal(stats.unanimous, 0);
  assert.equal(stats.unanimousFraction, 0);
  assert.deepEqual(stats.members.z, { agreed: 0, answered: 2, failed: 0 });
  assert.deepEqual(stats.members.x, { agreed: 2, answered: 2, failed: 0 });

  const withFailure = createEnsembleJudge([fixed("x", "a"), fixed("y", "a"), fixed("z", "fail")]);
  assert.equal((await withFailure.judge(PAIR) as { agreed?: boolean }).agreed, false);
  assert.equal(withFailure.agreement().unanimous, 0); // a failure is not agreement
  assert.equal(createEnsembleJudge(judges).agreement().unanimousFraction, 0);
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
  assert.equal(decideUnanimous(["b", "b", "b"]), "b");
  assert.equal(decideUnanimous(["b", "b", "failed"]), "undecided");
  assert.equal(decideUnanimous(["b", "a"]), "tie");
});
