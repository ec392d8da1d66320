/**
 * `/metrics` read by Prometheus's own parser and linter (`promtool check metrics`, Debian's `prometheus`),
 * with every metric family present: pairs in several statuses, requests on many routes (a 404 among them),
 * the trainer's status, the judges' counters (an id with characters that need escaping), decoding counters.
 */
import assert from "node:assert/strict";
import { loadModel } from "../model/io/checkpoint.ts";
import { fixturePath, useBackend } from "../model/_test_utils.ts";
import { PairStore } from "../store/pairs.ts";
import { createApp } from "./app.ts";
import { PolicyHolder } from "./policy.ts";

const PROMTOOL = Deno.env.get("DPO_PROMTOOL") ?? "/usr/bin/promtool";
const hasPromtool = await Deno.stat(PROMTOOL).then(() => true, () => false);
const required = Deno.env.get("DPO_REQUIRE_PROMTOOL") === "1";
if (!hasPromtool && !required) {
  console.log(
    `metrics_test: skipped: no promtool at ${PROMTOOL} (apt-get install prometheus, or set DPO_PROMTOOL); ` +
      "DPO_REQUIRE_PROMTOOL=1 makes this a failure",
  );
}

const KEY = "metrics-test-key-0001";

Deno.test({
  name: "/metrics with every family present passes promtool check metrics (Prometheus's parser and linter)",
  ignore: !hasPromtool && !required,
  async fn() {
    if (!hasPromtool) {
      throw new Error(`Cannot check /metrics as DPO_REQUIRE_PROMTOOL=1 and promtool is not at ${PROMTOOL}`);
    }
    await useBackend("wasm");
    const kv = await Deno.openKv(":memory:");
    const store = new PairStore(kv);
    const loaded = await loadModel(fixturePath("gpt2_tiny"), { trainable: false });
    const policy = new PolicyHolder({ model: loaded.model, tokenizer: loaded.tokenizer, version: 3 });
    const app = createApp({ store, policy, apiKeys: [KEY] });
    const call = (method: string, path: string, body?: unknown) =>
      app.request(path, {
        method,
        headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    try {
      await store.importLabeled({ prompt: "1+1=", chosen: "2", rejected: "3" });
      const { pair } = await store.create({ prompt: "p", promptText: "p", responses: ["x", "y"], policyVersion: 3 });
      const odd = 'verifier:C:\\tasks\\"quoted".ts';
      await store.recordVerdict(pair.id, {
        choice: "a",
        judge: { kind: "ensemble", id: "ensemble" },
        latencyMs: 12,
        usage: { requests: 2, promptTokens: 30, completionTokens: 4 },
        votes: [
          { judgeId: odd, choice: "a", latencyMs: 1 },
          {
            judgeId: "hf:judge",
            choice: "b",
            latencyMs: 10,
            usage: { requests: 2, promptTokens: 30, completionTokens: 4 },
          },
        ],
      });
      await store.records.writeStatus({
        owner: "w",
        step: 5,
        policy_version: 3,
        ref_version: 1,
        leases_lost: 1,
        retired: 0,
        updated_at: Date.now(),
      });
      await store.records.recordGate({ at: Date.now(), step: 5, promoted: false });
      const statuses = await Promise.all([
        call("POST", "/v1/chat/completions", { messages: [{ role: "user", content: "Hi" }], max_tokens: 4 }),
        call("GET", "/v1/stats"),
        call("GET", "/v1/nowhere"),
        call("POST", "/v1/preferences", { prompt: "x" }),
      ].map(async (r) => {
        const res = await r;
        await res.body?.cancel();
        return res.status;
      }));
      assert.deepEqual(statuses, [200, 200, 404, 422]);

      const text = await (await call("GET", "/metrics")).text();
      for (
        const family of [
          "dpo_pairs",
          "dpo_http_requests_total",
          "dpo_judge_votes_agreed_total",
          "dpo_trainer_step",
          "dpo_gate_decisions_total",
        ]
      ) {
        assert.match(text, new RegExp(`^# TYPE ${family} `, "m"), `${family} is present`);
      }
      const check = new Deno.Command(PROMTOOL, {
        args: ["check", "metrics"],
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
      })
        .spawn();
      const writer = check.stdin.getWriter();
      await writer.write(new TextEncoder().encode(text));
      await writer.close();
      const out = await check.output();
      const report = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, `promtool check metrics failed:\n${report}\n--- the exposition:\n${text}`);
      assert.equal(report.trim(), "", `promtool has lint findings:\n${report}`);
    } finally {
      policy.dispose();
      kv.close();
    }
  },
});
