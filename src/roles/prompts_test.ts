import assert from "node:assert/strict";
import { join } from "node:path";
import { isHeldOut, parseArithmeticPrompt } from "../tasks/arithmetic.ts";
import { loadPromptSource, parsePromptFile } from "./prompts.ts";

Deno.test("prompt files: one prompt per line, or JSON lines with a prompt; problems name the line", () => {
  assert.deepEqual(parsePromptFile("Hello\n\n  Two words \r\nlast", "p.txt", false), ["Hello", "  Two words ", "last"]);
  assert.deepEqual(parsePromptFile('{"prompt": "a"}\n\n{"prompt": "b", "id": 2}\n', "p.jsonl", true), ["a", "b"]);
  const conversation = [{ role: "system", content: "Be brief." }, { role: "user", content: "Hi" }];
  assert.deepEqual(parsePromptFile(JSON.stringify({ prompt: conversation }), "c.jsonl", true), [conversation]);
  assert.throws(
    () => parsePromptFile(JSON.stringify({ prompt: [{ role: "robot", content: "x" }] }), "c.jsonl", true),
    /'c\.jsonl' line 1: expected \{"prompt": string or \[\{"role", "content"\}\]\}: 'prompt' Invalid input/,
  );
  assert.throws(() => parsePromptFile('{"prompt": "a"}\n{oops', "p.jsonl", true), /'p\.jsonl' line 2: not valid JSON/);
  assert.throws(
    () => parsePromptFile('{"text": "a"}', "p.jsonl", true),
    /'p\.jsonl' line 1: expected \{"prompt": string or \[\{"role", "content"\}\]\}: 'prompt'/,
  );
  assert.throws(
    () => parsePromptFile("\n \n", "p.txt", false),
    /Cannot use prompt file 'p\.txt' as it holds no prompt/,
  );
});

Deno.test("prompt sources: the arithmetic task never feeds a held-out problem; a file is cycled", async () => {
  const arithmetic = await loadPromptSource("arithmetic", 7);
  for (let i = 0; i < 200; i++) assert.equal(isHeldOut(parseArithmeticPrompt(arithmetic.next())), false);
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "prompts.jsonl");
    await Deno.writeTextFile(path, '{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c"}\n');
    const file = await loadPromptSource(path, 1);
    assert.deepEqual(Array.from({ length: 4 }, file.next), ["b", "c", "a", "b"]);
    assert.match(file.description, /3 prompts from .*prompts\.jsonl/);
    await assert.rejects(loadPromptSource(join(dir, "missing.txt"), 0), /Cannot read prompt file '.*missing\.txt'/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
