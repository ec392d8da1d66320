import assert from "node:assert/strict";
import { loadModel } from "../model/io/checkpoint.ts";
import { loadTokenizer } from "../model/io/tokenizer.ts";
import { assertClose, assertNoLeak, fixturePath, readExpected, useBackend } from "../model/_test_utils.ts";
import { parseDpoConfig } from "./config.ts";
import { readKtoExamples, readPreferences } from "./data.ts";
import { DpoTrainer } from "./trainer.ts";

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
  assert.equal(pairs[0]!.eosId, undefined, "a template that ends turns with text: eos ends the answer, as before");
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

Deno.test("a conversational answer ends with the template's end-of-turn, once, and scores as PyTorch does", async () => {
  await useBackend("wasm");
  // llama_tiny: ChatML, eos <|endoftext|> = 316, <|im_end|> = 318; PyTorch scored chat.answer_ids + [318].
  const { chat } = await readExpected("llama_tiny");
  const policy = await loadModel(fixturePath("llama_tiny"));
  const reference = await loadModel(fixturePath("llama_tiny"), { trainable: false });
  const trainer = new DpoTrainer({
    policy: policy.model,
    reference: reference.model,
    config: parseDpoConfig({}),
    eosId: policy.tokenizer.eosTokenId,
  });
  try {
    const tok = policy.tokenizer;
    const answer = (content: string) => [{ role: "assistant", content }];
    const text = tok.decode(chat!.answer_ids); // "The answer is 19."
    const line = JSON.stringify({ prompt: chat!.messages, chosen: answer(text), rejected: answer("20") });
    const standard = JSON.stringify({ prompt: chat!.text, chosen: text, rejected: "20" });
    const [conversational, plain] = readPreferences([line, standard].join("\n"), tok, "mem", opts).pairs;
    assert.deepEqual(conversational!.promptIds, chat!.ids);
    // The template renders "…19.<|im_end|>\n": the answer keeps neither the "\n" nor a second terminator.
    assert.deepEqual(conversational!.chosenIds, chat!.answer_ids);
    assert.deepEqual(conversational!.rejectedIds, tok.encode("20"));
    assert.equal(conversational!.eosId, chat!.end_token_id);
    assert.equal(plain!.eosId, undefined, "a plain-text prompt's answers still end with eos");
    const kto = JSON.stringify({ prompt: chat!.messages, completion: answer(text), label: true });
    const [thumb] = readKtoExamples(kto, tok, "mem", opts).examples;
    assert.deepEqual([thumb!.completionIds, thumb!.eosId], [chat!.answer_ids, chat!.end_token_id], "KTO alike");
    await assertNoLeak(async () => {
      const refs = await trainer.referenceLogps([conversational!]);
      assertClose(refs.chosen, [chat!.logp_sum], 1e-4, "the answer scored up to <|im_end|>");
    });
  } finally {
    policy.model.dispose();
    reference.model.dispose();
    trainer.optimizer.dispose();
  }
});
