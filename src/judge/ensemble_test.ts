import assert from "node:assert/strict";
import { createEnsembleJudge, decideMajority } from "./ensemble.ts";
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

Deno.test("ensemble: the majority wins; without a majority it is a tie", async () => {
  assert.equal(await choiceOf([fixed("1", "a"), fixed("2", "a"), fixed("3", "b")]), "a");
  assert.equal(await choiceOf([fixed("1", "b"), fixed("2", "tie"), fixed("3", "b")]), "b");
  assert.equal(await choiceOf([fixed("1", "a"), fixed("2", "b"), fixed("3", "tie")]), "tie");
  assert.equal(await choiceOf([fixed("1", "a"), fixed("2", "b")]), "tie");
  assert.equal(await choiceOf([fixed("1", "tie"), fixed("2", "tie"), fixed("3", "a")]), "tie");
  // A failure is counted: a majority of all members still decides.
  assert.equal(await choiceOf([fixed("1", "a"), fixed("2", "a"), fixed("3", "fail")]), "a");
  // One failure that could not have made a majority anyway: a tie.
  const six = (["a", "b", "tie", "a", "b", "fail"] as const).map((c, i) => fixed(String(i), c));
  assert.equal(await choiceOf(six), "tie");
});

Deno.test("ensemble: failures never decide: all failed, or failures that could have made a majority", async () => {
  const rejects = (judges: Judge[], pattern: RegExp) =>
    assert.rejects(
      createEnsembleJudge(judges).judge(PAIR),
      (e: unknown) => e instanceof JudgeError && e.judgeId === "ensemble" && pattern.test(e.message),
    );
  await rejects([fixed("1", "fail"), fixed("2", "fail")], /every member failed: 1: failed \(network\), 2: failed/);
  await rejects([fixed("1", "a"), fixed("2", "b"), fixed("3", "fail")], /could have decided it/);
  await rejects([fixed("1", "a"), fixed("2", "fail"), fixed("3", "fail")], /could have decided it/);
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

Deno.test("decideMajority: the rule in full", () => {
  assert.equal(decideMajority(["a"]), "a");
  assert.equal(decideMajority(["failed"]), "undecided");
  assert.equal(decideMajority(["a", "failed"]), "undecided");
  assert.equal(decideMajority(["a", "a", "failed"]), "a");
  assert.equal(decideMajority(["a", "b", "tie", "failed"]), "tie"); // 2 of 4 is no majority either way
  assert.equal(decideMajority(["a", "b", "tie", "tie", "failed"]), "undecided");
  assert.equal(decideMajority(["a", "b", "a", "b", "tie"]), "tie");
});
