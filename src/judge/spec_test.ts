import assert from "node:assert/strict";
import { parseJudgeSpec } from "./spec.ts";

Deno.test("judge spec: one syntax for every command, weights for ensembles, clear errors", () => {
  assert.deepEqual(parseJudgeSpec("arithmetic"), {
    human: false,
    members: [{ kind: "task", task: "arithmetic", weight: 1 }],
  });
  assert.deepEqual(parseJudgeSpec(" hf*1 , verifier:./checks/my task.ts*2.5,arithmetic "), {
    human: false,
    members: [
      { kind: "hf", weight: 1 },
      { kind: "verifier", path: "./checks/my task.ts", weight: 2.5 },
      { kind: "task", task: "arithmetic", weight: 1 },
    ],
  });
  assert.deepEqual(parseJudgeSpec("webhook"), { human: false, members: [{ kind: "webhook", weight: 1 }] });
  assert.deepEqual(parseJudgeSpec("human", { allowHuman: true }), { human: true });
  const refused: [string, RegExp][] = [
    ["human", /no judge process/],
    ["hf,human", /'human' cannot be in an ensemble/],
    ["hf,webhook", /'webhook' cannot be in an ensemble/],
    ["verifier", /verifier:PATH/],
    ["verifier:", /verifier:PATH/],
    ["gpt4", /unknown judge 'gpt4': expected arithmetic \| verifier:PATH/],
    ["hf*0,arithmetic", /positive number/],
    ["hf*x,arithmetic", /positive number/],
    ["hf*2", /only means something in an ensemble/],
    ["", /unknown judge ''/],
  ];
  for (const [spec, message] of refused) assert.throws(() => parseJudgeSpec(spec), message, spec);
});
