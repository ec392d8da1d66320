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
    const c = await store.recordCompletionFeedback(`chatcmpl-${i}`, { label: i !== 4, annotator: "u1" });
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
