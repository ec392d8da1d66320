import assert from "node:assert/strict";
import {
  arithmeticTask,
  createArithmeticPrompts,
  formatArithmeticPrompt,
  heldOutAdditions,
  heldOutArithmeticPrompts,
  isHeldOut,
  parseArithmeticPrompt,
  parseFirstNumber,
  score,
} from "./arithmetic.ts";

Deno.test("arithmetic score: the first number of the completion must be the answer", () => {
  const prompt = "What is 37+48? Answer:";
  const cases: [string, number][] = [
    ["85", 1],
    [" 85", 1],
    ["\n  85\n", 1],
    ["85.", 1],
    ["85, I think.", 1],
    ["85 because 37+48=85", 1],
    ["The answer is 85.", 1],
    ["85.0", 1],
    ["85.5", 0],
    ["84", 0],
    ["8 5", 0],
    ["850", 0],
    ["-85", 0],
    ["37+48=85", 0], // the first number is 37
    ["", 0],
    ["eighty-five", 0],
  ];
  for (const [completion, expected] of cases) {
    assert.equal(score(prompt, completion), expected, JSON.stringify(completion));
  }
});

Deno.test("arithmetic score: negative answers, products and thousands", () => {
  assert.equal(score("What is 3-10? Answer:", " -7"), 1);
  assert.equal(score("What is 3-10? Answer:", " \u22127"), 1); // Unicode minus
  assert.equal(score("What is 3-10? Answer:", " 7"), 0);
  assert.equal(score("What is -4+4? Answer:", " 0"), 1);
  assert.equal(score("What is -4+4? Answer:", " -0"), 1);
  assert.equal(score("What is 99*99? Answer:", " 9801"), 1);
  assert.equal(score("What is 99*99? Answer:", " 9,801"), 1);
  assert.equal(score("What is 12x3? Answer:", "36"), 1);
  assert.equal(score("What is 999*999? Answer:", "998,001 exactly"), 1);
});

Deno.test("arithmetic prompts: few-shot and chat prompts ask the last question", () => {
  const fewShot = "What is 1+1? Answer: 2\nWhat is 2+3? Answer: 5\nWhat is 10+20? Answer:";
  assert.equal(parseArithmeticPrompt(fewShot).answer, 30);
  const chat = [
    { role: "system", content: "What is 1+1?" },
    { role: "user", content: "what is 6 * 7 ?" },
    { role: "assistant", content: "Thinking" },
  ];
  assert.deepEqual(parseArithmeticPrompt(chat), { x: 6, op: "*", y: 7, answer: 42 });
  assert.throws(() => score("Tell me a joke", "42"), /has no 'What is x\+y\?' question/);
});

Deno.test("parseFirstNumber: edge cases", () => {
  assert.equal(parseFirstNumber("abc"), undefined);
  assert.equal(parseFirstNumber("x=-12!"), -12);
  assert.equal(parseFirstNumber("1,234,567"), 1234567);
  assert.equal(parseFirstNumber("12,34"), 12);
  assert.equal(parseFirstNumber("3.25 apples"), 3.25);
  assert.equal(parseFirstNumber("007"), 7);
});

Deno.test("arithmetic prompts: deterministic per seed, and held-out problems never appear in training", () => {
  const a = createArithmeticPrompts({ seed: 7 });
  const b = createArithmeticPrompts({ seed: 7 });
  const train = Array.from({ length: 2000 }, () => a());
  assert.deepEqual(Array.from({ length: 2000 }, () => b()), train);
  assert.notDeepEqual(Array.from({ length: 50 }, createArithmeticPrompts({ seed: 8 })), train.slice(0, 50));
  for (const prompt of train) {
    assert.match(prompt, /^What is \d{1,2}\+\d{1,2}\? Answer:$/);
    assert.ok(!isHeldOut(parseArithmeticPrompt(prompt)));
  }
  const heldOut = heldOutArithmeticPrompts(100, { seed: 1 });
  assert.equal(new Set(heldOut).size, 100);
  assert.deepEqual(heldOutArithmeticPrompts(100, { seed: 1 }), heldOut);
  for (const prompt of heldOut) assert.ok(isHeldOut(parseArithmeticPrompt(prompt)));
  const trainSet = new Set(train);
  assert.ok(heldOut.every((p) => !trainSet.has(p)));
});

Deno.test("arithmetic prompts: options are checked", () => {
  assert.equal(formatArithmeticPrompt({ x: 37, op: "+", y: 48 }), "What is 37+48? Answer:");
  const mixed = createArithmeticPrompts({ ops: ["-", "*"], minOperand: 1, maxOperand: 9, seed: 3 });
  for (let i = 0; i < 50; i++) assert.match(mixed(), /^What is \d[-*]\d\? Answer:$/);
  assert.throws(() => createArithmeticPrompts({ minOperand: 5, maxOperand: 1 }), /must not exceed 'maxOperand'/);
  assert.throws(() => createArithmeticPrompts({ ops: [] }), /'ops' must not be empty/);
  assert.throws(() => createArithmeticPrompts({ heldOutFraction: 2 }), /'heldOutFraction' must be in \[0, 1\]/);
  assert.throws(() => heldOutArithmeticPrompts(50, { maxOperand: 9 }), /distinct held-out/);
  assert.throws(() => createArithmeticPrompts({ split: "heldout", heldOutFraction: 0 })(), /split is empty/);
});

Deno.test("arithmeticTask: one addition in five held out, the one-in-ten split first and in its order, never trained on", () => {
  assert.equal(arithmeticTask.heldOutSize, heldOutAdditions(0.2));
  assert.ok(arithmeticTask.heldOutSize > 1900, `${arithmeticTask.heldOutSize}`);
  const all = arithmeticTask.heldOut(arithmeticTask.heldOutSize);
  assert.equal(new Set(all).size, all.length);
  assert.deepEqual(all.slice(0, heldOutAdditions()), heldOutArithmeticPrompts(heldOutAdditions(), { maxOperand: 99 }));
  assert.deepEqual(arithmeticTask.heldOut(300), all.slice(0, 300));
  assert.deepEqual(arithmeticTask.heldOut(1500), all.slice(0, 1500));
  for (const prompt of all) assert.ok(isHeldOut(parseArithmeticPrompt(prompt), 0.2), prompt);
  const train = arithmeticTask.trainingPrompts(3);
  const held = new Set(all);
  for (let i = 0; i < 2000; i++) assert.ok(!held.has(train() as string));
});
