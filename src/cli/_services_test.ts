import assert from "node:assert/strict";
import { z } from "zod";
import { JUDGE_KINDS, JUDGE_SETTINGS } from "../judge/registry.ts";
import { buildJudge, JUDGE_OPTIONS, judgeChoice } from "./_services.ts";
import { UsageError } from "./common.ts";
import { parseOptions } from "./_options.ts";

Deno.test("buildJudge: a setting for a judge the spec does not name is refused, naming that judge", async () => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ hf_model: "meta-llama/Llama-3.1-8B-Instruct" }, /^--hf-model is an option of the hf judge/],
    [{ judge_token: "key-0123456789abcdef" }, /^--judge-token is an option of the hf judge/],
    [{ webhook_url: "https://labelers.example/hook" }, /^--webhook-url is an option of the webhook judge/],
  ];
  for (const [settings, message] of cases) {
    await assert.rejects(buildJudge({ judge: "arithmetic", settings }), (e: unknown) => {
      assert.ok(e instanceof UsageError);
      assert.match((e as Error).message, message);
      return true;
    });
  }
  assert.equal((await buildJudge({ judge: "arithmetic", settings: {} })).id, "arithmetic");
  await assert.rejects(buildJudge({ judge: "arithmetic,gpt", settings: {} }), /unknown judge 'gpt'/);
  // From the environment, which every command shares, such a setting is not this command's mistake.
  const fromEnv = { judge: "arithmetic", settings: { judge_token: "key-0123456789abcdef" } };
  assert.equal((await buildJudge({ ...fromEnv, origin: { judge_token: "DPO_JUDGE_TOKEN" } })).id, "arithmetic");
  await assert.rejects(
    buildJudge({ judge: "hf", settings: {} }),
    /: --judge hf needs --hf-model or --hf-endpoint$/,
  );
});

Deno.test("judge registry: every kind's settings are declared, taken by one kind, and are options of the commands", () => {
  const taken = Object.values(JUDGE_KINDS).flatMap((k) => [...k.settings]);
  assert.deepEqual([...taken].sort(), Object.keys(JUDGE_SETTINGS).sort(), "a setting no kind takes, or two kinds take");
  for (const key of Object.keys(JUDGE_SETTINGS)) assert.ok(`${key.replaceAll("_", "-")}` in JUDGE_OPTIONS, key);
  const parsed = parseOptions(["--judge", "hf", "--hf-model", "m"], JUDGE_OPTIONS, () => undefined);
  assert.ok(!parsed.help);
  assert.deepEqual(judgeChoice(parsed.values, parsed.origin), {
    judge: "hf",
    settings: { hf_model: "m" },
    ensembleRule: "majority",
    origin: { hf_model: "--hf-model" },
  });
  for (const s of Object.values(JUDGE_SETTINGS)) assert.ok(s.schema instanceof z.ZodType);
});
