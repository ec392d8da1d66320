import assert from "node:assert/strict";
import { buildJudge } from "./_services.ts";
import { UsageError } from "./common.ts";

Deno.test("buildJudge: an option for a judge the spec does not name is refused, naming that judge", async () => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ "hf-model": "meta-llama/Llama-3.1-8B-Instruct" }, /--hf-model is an option of the hf judge/],
    [{ "judge-token": "key-0123456789abcdef" }, /--judge-token is an option of the hf judge/],
    [{ "webhook-url": "https://labelers.example/hook" }, /--webhook-url is an option of the webhook judge/],
  ];
  for (const [flags, message] of cases) {
    await assert.rejects(buildJudge({ judge: "arithmetic", ...flags }), (e: unknown) => {
      assert.ok(e instanceof UsageError);
      assert.match((e as Error).message, message);
      return true;
    });
  }
  assert.equal((await buildJudge({ judge: "arithmetic" })).id, "arithmetic");
  await assert.rejects(buildJudge({ judge: "arithmetic,gpt" }), /unknown judge 'gpt'/);
});
