import assert from "node:assert/strict";
import { ConflictError, NotFoundError, StoreCorruptError, StoreInputError } from "./pairs.ts";
import { completionKey } from "./keys.ts";
import { memoryStore } from "./_test_helpers.ts";

Deno.test("a completion takes one feedback, listed newest first and counted", async () => {
  const { kv, store, clock } = await memoryStore();
  using _ = kv;
  const messages = [{ role: "user", content: "hi" }];
  for (let i = 0; i < 5; i++) {
    await store.recordCompletion({
      id: `chatcmpl-${i}`,
      messages,
      promptText: "user: hi\n",
      text: `t${i}`,
      policyVersion: 2,
    });
  }
  await assert.rejects(
    store.recordCompletion({ id: "chatcmpl-0", prompt: "x", text: "y", policyVersion: 2 }),
    (err) => err instanceof ConflictError && /already exists/.test(err.message),
  );
  await assert.rejects(
    store.recordCompletion({ id: "c", prompt: "x", messages, text: "y", policyVersion: 2 }),
    (err) => err instanceof StoreInputError && /exactly one of 'prompt' and 'messages'/.test(err.message),
  );

  for (const i of [3, 0, 4]) {
    clock.advance(10);
    const { completion: c } = await store.recordCompletionFeedback(`chatcmpl-${i}`, {
      label: i !== 4,
      annotator: "u1",
    });
    assert.deepEqual(c.feedback, { label: i !== 4, annotator: "u1", at: clock.t });
  }
  await assert.rejects(
    store.recordCompletionFeedback("chatcmpl-3", { label: false }),
    (err) => err instanceof ConflictError && /already has feedback/.test(err.message),
  );
  assert.equal((await store.getCompletion("chatcmpl-3"))?.feedback?.label, true, "the first feedback stays");
  await assert.rejects(store.recordCompletionFeedback("nope", { label: true }), NotFoundError);

  const first = await store.listCompletionFeedback({ limit: 2 });
  assert.deepEqual(first.completions.map((c) => c.id), ["chatcmpl-4", "chatcmpl-0"]);
  const rest = await store.listCompletionFeedback({ limit: 2, cursor: first.cursor });
  assert.deepEqual(rest.completions.map((c) => c.id), ["chatcmpl-3"]);
  assert.equal(rest.cursor, undefined);
  assert.deepEqual(await store.feedbackCounts(), { desirable: 2, undesirable: 1 });

  await kv.set(completionKey("chatcmpl-1"), { id: "chatcmpl-1", text: 5 });
  await assert.rejects(store.getCompletion("chatcmpl-1"), StoreCorruptError);
});

Deno.test("signals: opposite thumbs on two answers to one conversation make one labeled pair, in the feedback's commit", async () => {
  const { kv, store, clock } = await memoryStore();
  using _ = kv;
  const messages = [{ role: "user", content: "What is 2+2?" }];
  const answer = (id: string, text: string, promptText = "user: What is 2+2?\n") =>
    store.recordCompletion({ id, messages, promptText, text, policyVersion: 3 });
  await answer("a", " 4");
  await answer("b", " 5");
  await answer("c", " 5 "); // the same text as b, blanks aside
  await answer("other", " 6", "user: something else\n");
  assert.deepEqual((await store.recordCompletionFeedback("b", { label: false })).pairs, [], "no partner yet");
  assert.deepEqual((await store.recordCompletionFeedback("other", { label: true })).pairs, [], "another conversation");
  clock.advance(5);
  const up = await store.recordCompletionFeedback("a", { label: true, annotator: "ann" });
  assert.equal(up.pairs.length, 1);
  const pair = (await store.get(up.pairs[0]!))!;
  assert.deepEqual([pair.status, pair.responses, pair.chosen, pair.policyVersion], ["labeled", [" 4", " 5"], 0, 3]);
  assert.deepEqual(pair.messages, messages);
  assert.deepEqual([pair.verdict!.judge, pair.verdict!.annotator], [{ kind: "human", id: "feedback:thumbs" }, "ann"]);
  assert.equal((await store.getCompletion("b"))!.thumbsPair, pair.id);
  // c's thumbs down finds no partner: a, the only thumbs up, is in a pair already.
  assert.deepEqual((await store.recordCompletionFeedback("c", { label: false })).pairs, [], "each answer pairs once");
  assert.equal((await store.counts()).labeled, 1);
});

Deno.test("signals: an edit is chosen over the answer; a pick among n choices over each other choice", async () => {
  const { kv, store } = await memoryStore();
  using _ = kv;
  const base = { prompt: "Write a haiku", promptText: "Write a haiku", policyVersion: 1 };
  await store.recordCompletion({ id: "x", ...base, text: "an old pond" });
  const edited = await store.recordCompletionEdit("x", { text: "an old silent pond", annotator: "ann" });
  const editPair = (await store.get(edited.pairs[0]!))!;
  assert.deepEqual([editPair.responses, editPair.verdict!.judge.id], [
    ["an old silent pond", "an old pond"],
    "feedback:edit",
  ]);
  await assert.rejects(store.recordCompletionEdit("x", { text: "again" }), ConflictError);
  await store.recordCompletion({ id: "y", ...base, text: "frog" });
  await assert.rejects(store.recordCompletionEdit("y", { text: " frog " }), StoreInputError);
  await assert.rejects(store.recordCompletionEdit("nope", { text: "z" }), NotFoundError);

  for (const [id, text] of [["r", "one"], ["r-1", "two"], ["r-2", "one"], ["r-3", "three"]]) {
    await store.recordCompletion({ id: id!, ...base, text: text! });
  }
  const ids = ["r", "r-1", "r-2", "r-3", "r-4"];
  const picked = await store.recordChoice(ids, "r-1", "ann");
  const pairs = await Promise.all(picked.pairs.map((id) => store.get(id)));
  assert.deepEqual(pairs.map((p) => p!.responses), [["two", "one"], ["two", "one"], ["two", "three"]]);
  assert.ok(pairs.every((p) => p!.verdict!.judge.id === "feedback:choice"));
  await assert.rejects(store.recordChoice(ids, "r-3"), ConflictError, "one pick per response");
  await assert.rejects(store.recordChoice(["y"], "y"), StoreInputError);
  assert.equal((await store.counts()).labeled, 4);
});
