import assert from "node:assert/strict";
import { loadTokenizer } from "../model/tokenizer.ts";
import { fixturePath, readExpected } from "../model/_test_utils.ts";
import { PairStore } from "../store/pairs.ts";
import { encodeStoredPair } from "./online.ts";

Deno.test("encodeStoredPair: a conversation's answers end with the end-of-turn, a plain prompt's with eos", async () => {
  // llama_tiny: ChatML with <|im_end|> = 318 after each turn, eos <|endoftext|> = 316.
  const { chat } = await readExpected("llama_tiny");
  const chatml = await loadTokenizer(fixturePath("llama_tiny"));
  const plainTemplate = await loadTokenizer(fixturePath("gpt2_tiny")); // "role: content\n": no end-of-turn token
  const kv = await Deno.openKv(":memory:");
  try {
    const store = new PairStore(kv);
    const answer = chatml.decode(chat!.answer_ids);
    const { pair: conversation } = await store.importLabeled({
      messages: chat!.messages,
      promptText: chat!.text,
      chosen: answer,
      rejected: "20",
    });
    const encoded = encodeStoredPair(chatml, conversation, 64);
    assert.deepEqual(encoded, {
      promptIds: chat!.ids,
      chosenIds: chat!.answer_ids,
      rejectedIds: chatml.encode("20"),
      eosId: 318,
    });
    const room = 64 - chat!.ids.length - 1;
    assert.equal(room, 16);
    const long = (await store.importLabeled({
      messages: chat!.messages,
      promptText: chat!.text,
      chosen: answer.repeat(4),
      rejected: "20",
    })).pair;
    assert.equal(encodeStoredPair(chatml, long, 64).chosenIds.length, room, "cut to fit, the terminator still scored");

    const { pair: plain } = await store.importLabeled({ prompt: "What is 12+7?", chosen: "19", rejected: "20" });
    assert.equal(encodeStoredPair(chatml, plain, 64).eosId, undefined, "plain text ends with the trainer's eos");
    assert.equal(encodeStoredPair(plainTemplate, conversation, 64).eosId, undefined, "no end-of-turn token: eos");
  } finally {
    kv.close();
  }
});
