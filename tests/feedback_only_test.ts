/**
 * Feedback endpoints without a model, as a team with its own LLM runs them: three `serve --feedback-only`
 * processes and the serverless entry under `deno serve`, all on one KV file. Client-supplied pairs and
 * preferences go in through every instance, verdicts come back signed (Standard Webhooks), with a label key
 * (as the label page sends them) and with an API key; an Idempotency-Key reused on another instance returns
 * the first pair; one rate limit holds across all four; the export holds everything; no instance loaded TF.js.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Webhook } from "standardwebhooks";
import { verdictToken } from "../src/judge/webhook.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const KEY = "feedback-only-key-0001";
const LIMITED = "feedback-only-key-0002";
const LABEL = "feedback-only-label-0001";
const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const RATE = 30;

interface Instance {
  child: Deno.ChildProcess;
  log: string[];
  url: string;
}

async function launch(dir: string, args: string[], listening: RegExp): Promise<Instance> {
  const child = new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: {
      DPO_API_KEYS: `${KEY},${LIMITED}`,
      DPO_LABEL_KEYS: LABEL,
      DPO_WEBHOOK_SECRET: SECRET,
      DPO_KV: join(dir, "dpo.kv"),
      DPO_RATE_LIMIT: String(RATE),
    },
  }).spawn();
  const log: string[] = [];
  for (const stream of [child.stdout, child.stderr]) {
    stream.pipeThrough(new TextDecoderStream()).pipeTo(new WritableStream({ write: (t) => void log.push(t) }));
  }
  const end = Date.now() + 30_000;
  while (Date.now() < end) {
    const m = listening.exec(log.join(""));
    if (m) return { child, log, url: m[1]!.replace("0.0.0.0", "127.0.0.1").replace(/\/$/, "") };
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill("SIGKILL");
  throw new Error(`an instance did not start: ${log.join("")}`);
}

Deno.test({
  name: "feedback-only: three serve processes and the serverless entry on one KV, no model anywhere",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "feedback_only_" });
    const instances: Instance[] = [];
    try {
      for (let i = 0; i < 3; i++) {
        instances.push(
          await launch(dir, [
            "run",
            "-A",
            "main.ts",
            "serve",
            "--feedback-only",
            "--kv",
            join(dir, "dpo.kv"),
            "--port",
            "0",
            "--rate-limit",
            String(RATE),
          ], /listening on (http:\/\/[\d.]+:\d+)/),
        );
      }
      instances.push(
        await launch(dir, ["serve", "-A", "--port", "0", "serverless.ts"], /Listening on (http:\/\/[\d.:]+\/?)/),
      );
      const call = async (i: number, method: string, path: string, body?: unknown, headers = {}) => {
        const res = await fetch(instances[i % instances.length]!.url + path, {
          method,
          headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json", ...headers },
          body: typeof body === "string" ? body : body === undefined ? undefined : JSON.stringify(body),
        });
        return { status: res.status, body: await res.json().catch(() => null) };
      };

      // Each instance takes a client's pair and a preference.
      const pairs: { id: string; a: string }[] = [];
      for (let i = 0; i < 4; i++) {
        const created = await call(i, "POST", "/v1/pairs", {
          messages: [{ role: "user", content: `Question ${i}` }],
          responses: [`answer ${i}`, `another answer ${i}`],
          model: "their-llm",
        }, { "idempotency-key": `pair-${i}` });
        assert.equal(created.status, 201, JSON.stringify(created.body));
        pairs.push(created.body);
        const pref = await call(i, "POST", "/v1/preferences", { prompt: `${i}+1=`, chosen: `${i + 1}`, rejected: "0" });
        assert.equal(pref.status, 201);
      }
      // The same Idempotency-Key on another instance: the first pair, not a second one.
      const replay = await call(2, "POST", "/v1/pairs", {
        messages: [{ role: "user", content: "Question 0" }],
        responses: ["answer 0", "another answer 0"],
        model: "their-llm",
      }, { "idempotency-key": "pair-0" });
      assert.deepEqual([replay.status, replay.body.id], [200, pairs[0]!.id]);

      // Verdicts: signed by the labelers' system, with a label key (the label page), with an API key.
      const signedBody = JSON.stringify({
        choice: "a",
        annotator: "vendor",
        pair_id: pairs[0]!.id,
        token: await verdictToken(SECRET, pairs[0]!.id),
      });
      const at = new Date();
      const signature = new Webhook(SECRET).sign("msg_1", at, signedBody);
      const signed = await fetch(`${instances[1]!.url}/v1/pairs/${pairs[0]!.id}/feedback`, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "webhook-id": "msg_1",
          "webhook-timestamp": String(Math.floor(at.getTime() / 1000)),
          "webhook-signature": signature,
        },
        body: signedBody,
      });
      assert.equal(signed.status, 200, await signed.text());
      const byPage = await call(2, "POST", `/v1/pairs/${pairs[1]!.id}/feedback`, { choice: "b", annotator: "ann" }, {
        authorization: `Bearer ${LABEL}`,
      });
      assert.equal(byPage.status, 200);
      for (const p of pairs.slice(2)) {
        assert.equal((await call(3, "POST", `/v1/pairs/${p.id}/feedback`, { choice: "a" })).status, 200);
      }

      // Everything is in the export, from any instance: 4 judged pairs and 4 preferences, once each.
      const exported = await fetch(`${instances[0]!.url}/v1/export`, { headers: { authorization: `Bearer ${KEY}` } });
      const rows = (await exported.text()).trim().split("\n").map((l) => JSON.parse(l));
      assert.equal(rows.length, 8);
      const stats = await call(1, "GET", "/v1/stats");
      assert.deepEqual([stats.body.pairs.labeled, stats.body.pairs.awaiting_judgment], [8, 0]);

      // One rate limit across the four (its own key, so that the calls above do not count): counted in KV.
      const intoMinute = Date.now() % 60_000;
      if (intoMinute > 40_000) await new Promise((r) => setTimeout(r, 60_100 - intoMinute));
      let allowed = 0;
      for (let i = 0; i < RATE + 5; i++) {
        const r = await call(i, "GET", "/v1/stats", undefined, { authorization: `Bearer ${LIMITED}` });
        if (r.status === 429) break;
        assert.equal(r.status, 200);
        allowed++;
      }
      assert.equal(allowed, RATE, "the limit is one across the instances, not one per instance");

      // Routes that need a policy say so; no instance loaded TF.js.
      assert.equal((await call(0, "POST", "/v1/pairs", { prompt: "Hi" })).status, 503);
      for (const instance of instances) {
        const health = await (await fetch(`${instance.url}/healthz`)).json();
        assert.deepEqual([health.policy_version, health.model_code], [null, false], instance.url);
      }
    } catch (err) {
      for (const instance of instances) console.error(`--- ${instance.url} ---\n${instance.log.join("").slice(-3000)}`);
      throw err;
    } finally {
      for (const instance of instances) {
        try {
          instance.child.kill("SIGTERM");
        } catch { /* gone */ }
        await instance.child.status;
      }
      await Deno.remove(dir, { recursive: true });
    }
  },
});
