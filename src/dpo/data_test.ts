import assert from "node:assert/strict";
import { loadTokenizer } from "../model/tokenizer.ts";
import { fixturePath } from "../model/_test_utils.ts";
import { readPreferences } from "./data.ts";

const tokenizer = await loadTokenizer(fixturePath("gpt2_tiny"));
const opts = { onBadLine: "fail" as const, maxLength: 64 };

Deno.test("standard and conversational lines become the same token-id pairs", () => {
  const standard = JSON.stringify({
    prompt: "user: 2+2=\nassistant:",
    chosen: "assistant: 4\n",
    rejected: "assistant: 5\n",
  });
  const messages = (answer: string) => [{ role: "assistant", content: answer }];
  const prompt = [{ role: "user", content: "2+2=" }];
  const explicit = JSON.stringify({ prompt, chosen: messages("4"), rejected: messages("5") });
  const implicit = JSON.stringify({ chosen: [...prompt, ...messages("4")], rejected: [...prompt, ...messages("5")] });
  const { pairs } = readPreferences([explicit, "", implicit].join("\n"), tokenizer, "mem", opts);
  assert.equal(pairs.length, 2);
  assert.deepEqual(pairs[0], pairs[1]);
  // The template renders "role: content\n" per message and "assistant:" as the generation prompt.
  assert.equal(tokenizer.decode(pairs[0]!.promptIds), "user: 2+2=\nassistant:");
  assert.equal(tokenizer.decode(pairs[0]!.chosenIds), " 4\n");
  assert.equal(tokenizer.decode(pairs[0]!.rejectedIds), " 5\n");
  const std = readPreferences(standard, tokenizer, "mem", opts).pairs[0]!;
  assert.equal(tokenizer.decode(std.rejectedIds), "assistant: 5\n");
});

Deno.test("bad lines are named by number, and skipped only when asked", () => {
  const good = JSON.stringify({ prompt: "a", chosen: "b", rejected: "c" });
  const lines = [
    good,
    "{oops",
    JSON.stringify({ prompt: "a", chosen: "b" }),
    JSON.stringify({ prompt: "a", chosen: "b", rejected: "b" }),
    JSON.stringify({ prompt: "a", chosen: "b ".repeat(80), rejected: "c" }),
  ];
  assert.throws(
    () => readPreferences(lines.join("\n"), tokenizer, "d.jsonl", opts),
    /Cannot read 'd\.jsonl' line 2: not valid JSON/,
  );
  const { pairs, bad } = readPreferences(lines.join("\n"), tokenizer, "d.jsonl", { ...opts, onBadLine: "skip" });
  assert.equal(pairs.length, 1);
  assert.deepEqual(bad.map((b) => b.line), [2, 3, 4, 5]);
  assert.match(bad[1]!.problem, /expected \{"prompt", "chosen", "rejected"\}/);
  assert.match(bad[2]!.problem, /chosen and rejected are the same/);
  assert.match(bad[3]!.problem, /more than max_length 64/);
});
