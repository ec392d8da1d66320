/**
 * The self-improving chatbot end to end, with real parts: `serve` and `worker` as processes on one KV file,
 * a chat app talking to the server with the official `openai` SDK over HTTP, its users' thumbs, edits and a
 * "try again", then published versions whose records hold that feedback, and a served model that now
 * prefers the answers users liked.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import OpenAI from "openai";
import { loadModel } from "../src/model/io/checkpoint.ts";
import { scorePairs } from "../src/model/logprobs.ts";
import { useBackend } from "../src/model/_test_utils.ts";
import { openCheckpoints } from "../src/store/open.ts";
import { PairStore } from "../src/store/pairs.ts";
import { ROOT, start as startProc, until } from "./_procs.ts";

const MODEL = join(ROOT, "tests/fixtures/gpt2_tiny");
const KEY = "chatbot-test-key-0001";

Deno.test({
  name: "chatbot: the openai SDK's conversations, thumbs, edits and a retry train the served model over HTTP",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await useBackend("wasm");
    const dir = await Deno.makeTempDir({ prefix: "chatbot_test_" });
    const checkpoints = `dir:${join(dir, "ckpts")}`;
    const common = ["--kv", "dpo.kv", "--checkpoints", checkpoints, "--model", MODEL, "--backend", "wasm"];
    const start = (d: string, args: string[]) => startProc(d, args, { DPO_API_KEYS: KEY });
    const server = start(dir, ["serve", ...common, "--port", "0", "--poll-ms", "200"]);
    const worker = start(dir, [
      "worker",
      ...common,
      "--kto-batch",
      "4",
      "--batch-size",
      "2",
      "--publish-every",
      "1",
      "--learning-rate",
      "5e-3",
      "--beta",
      "0.5",
      "--poll-ms",
      "100",
    ]);
    const procs = [server, worker];
    const kv = await Deno.openKv(join(dir, "dpo.kv"));
    try {
      const url = await until("the server to listen", () => {
        const m = /listening on (http:\/\/[\d.]+:\d+)/.exec(server.log.join(""));
        return Promise.resolve(m?.[1]);
      });
      const client = new OpenAI({ apiKey: KEY, baseURL: `${url}/v1`, maxRetries: 0 });
      const feedback = async (path: string, body: unknown) => {
        const res = await fetch(`${url}/v1/completions/${path}`, {
          method: "POST",
          headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
          body: JSON.stringify(body),
        });
        const text = await res.text();
        assert.ok(res.ok, `${path}: ${res.status} ${text}`);
        return JSON.parse(text);
      };

      // Sixteen conversations, each answered once; users like half of the answers.
      const answers: { id: string; prompt: string; text: string; up: boolean }[] = [];
      for (let i = 0; i < 16; i++) {
        const prompt = `Question ${i}: what do you think?`;
        const r = await client.chat.completions.create({
          model: "policy",
          messages: [{ role: "user", content: prompt }],
          max_tokens: 4,
          seed: i,
        });
        answers.push({ id: r.id, prompt, text: r.choices[0]!.message.content!, up: i % 2 === 0 });
      }
      for (const a of answers) await feedback(`${a.id}/feedback`, { label: a.up, annotator: "user-1" });
      // Two answers edited by their users, one asked again.
      const edits: string[] = [];
      for (const a of answers.slice(0, 2)) {
        edits.push(...(await feedback(`${a.id}/edit`, { text: " I think so." })).pairs);
      }
      await client.chat.completions.create({
        model: "policy",
        messages: [{ role: "user", content: answers[3]!.prompt }],
        max_tokens: 4,
        // @ts-ignore: this server's extension of the request
        replaces: answers[3]!.id,
      });

      // The worker trains all of it into published versions; every thumbs and edit is in one version's record.
      const store = new PairStore(kv);
      const trainedInto = await until("every thumbs to be trained", async () => {
        const into = await Promise.all(answers.map(async (a) => (await store.getCompletion(a.id))?.trainedInto));
        return into.every((v) => v !== undefined) ? into as number[] : undefined;
      });
      await until("the edits to be trained", async () => {
        const pairs = await Promise.all(edits.map((id) => store.get(id)));
        return pairs.every((p) => p?.status === "trained") || undefined;
      });
      const records = new Map<number, string[]>();
      const versions = new Set([
        ...trainedInto,
        ...(await Promise.all(edits.map(async (id) => (await store.get(id))!.trainedInto!))),
      ]);
      for (const v of versions) records.set(v, await store.records.trainedPairs(v));
      const listed = [...records.values()].flat();
      for (const id of [...answers.map((a) => a.id), ...edits]) {
        assert.equal(listed.filter((x) => x === id).length, 1, `${id} in exactly one version's record`);
      }
      assert.equal((await store.counts()).awaiting_judgment + (await store.counts()).identical, 1, "the retry's pair");

      // The served model, once it has every version: the liked answers gained on the disliked ones.
      const last = Math.max(...versions);
      await until("the server to serve the last version", async () => {
        const h = await (await fetch(`${url}/healthz`)).json();
        return h.policy_version >= last || undefined;
      });
      const served = openCheckpoints(kv, checkpoints);
      const current = (await served.current())!.version;
      const after = await loadModel(await served.materialize(current, join(dir, "served")), { trainable: false });
      const before = await loadModel(MODEL, { trainable: false });
      try {
        const tok = before.tokenizer;
        const rows = answers.map((a) => ({
          promptIds: tok.encode(
            tok.applyChatTemplate([{ role: "user", content: a.prompt }], { addGenerationPrompt: true }),
          ),
          completionIds: tok.encode(a.text),
        }));
        const options = { eosId: tok.eosTokenId, maxLength: before.model.contextLength };
        const [b, f] = [await scorePairs(before.model, rows, options), await scorePairs(after.model, rows, options)];
        const gain = (want: boolean) => {
          const g = answers.flatMap((a, i) => (a.up === want ? [f[i]!.logp - b[i]!.logp] : []));
          return g.reduce((x, y) => x + y, 0) / g.length;
        };
        assert.ok(gain(true) > gain(false), `liked answers gained ${gain(true)}, disliked ${gain(false)}`);
      } finally {
        after.model.dispose();
        before.model.dispose();
      }
    } catch (err) {
      for (const [name, p] of [["server", server], ["worker", worker]] as const) {
        console.error(`--- ${name} ---\n${p.log.join("").slice(-4000)}`);
      }
      throw err;
    } finally {
      kv.close();
      for (const p of procs) {
        try {
          p.child.kill("SIGTERM");
        } catch { /* gone */ }
        await p.child.status;
      }
      await Deno.remove(dir, { recursive: true });
    }
  },
});
