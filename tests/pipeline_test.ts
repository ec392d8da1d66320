/**
 * The product end to end, with real parts: server, judge and trainer as separate processes on one KV
 * file, HTTP on loopback, kill -9 of the trainer and of the server in the middle of the work.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { type Proc, ROOT, start as startProc, until } from "./_procs.ts";

const MODEL = join(ROOT, "tests/fixtures/gpt2_tiny");
const KEY = "pipeline-test-key";

function start(dir: string, args: string[]): Proc {
  return startProc(dir, args, { DPO_API_KEYS: KEY });
}

async function stopProc(p: Proc, signal: Deno.Signal = "SIGTERM"): Promise<void> {
  try {
    p.child.kill(signal);
  } catch { /* already gone */ }
  await p.child.status;
}

async function startServer(dir: string, checkpoints: string): Promise<{ proc: Proc; url: string }> {
  const proc = start(dir, [
    "serve",
    "--kv",
    "dpo.kv",
    "--checkpoints",
    checkpoints,
    "--model",
    MODEL,
    "--port",
    "0",
    "--poll-ms",
    "200",
    "--backend",
    "wasm",
  ]);
  const url = await until("the server to listen", () => {
    const m = /listening on (http:\/\/[\d.]+:\d+)/.exec(proc.log.join(""));
    return Promise.resolve(m?.[1]);
  });
  return { proc, url };
}

function startWorker(dir: string, checkpoints: string): Proc {
  return start(dir, [
    "worker",
    "--kv",
    "dpo.kv",
    "--checkpoints",
    checkpoints,
    "--model",
    MODEL,
    "--batch-size",
    "2",
    "--publish-every",
    "1",
    "--learning-rate",
    "1e-3",
    "--poll-ms",
    "100",
    "--backend",
    "wasm",
  ]);
}

async function api(url: string, path: string, body?: unknown) {
  const res = await fetch(url + path, {
    method: body === undefined ? "GET" : "POST",
    headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json();
  if (!res.ok) throw new Error(`${path}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

const prefs = (from: number, n: number) =>
  Array.from({ length: n }, (_, i) => ({
    prompt: `${from + i}+1=`,
    chosen: String(from + i + 1),
    rejected: String(from + i + 2),
  }));

// dir: versions on a shared filesystem; kv: weights in KV itself, so the roles share nothing but KV.
for (const checkpoints of ["dir:ckpts", "kv"]) {
  Deno.test({
    name:
      `serve, judge and train as processes on one KV (${checkpoints} checkpoints): pairs flow, versions hot-swap, kill -9 loses nothing`,
    sanitizeResources: false,
    sanitizeOps: false,
    async fn() {
      const dir = await Deno.makeTempDir({ prefix: "pipeline_" });
      let server = await startServer(dir, checkpoints);
      let worker = startWorker(dir, checkpoints);
      const judge = start(dir, ["judge", "--kv", "dpo.kv", "--poll-ms", "100"]);
      try {
        // A pair sampled by the server is judged by the judge process. The random model's answers are
        // almost always both wrong (a tie), but one of them can be right by chance: then the pair is
        // labeled and trained on too, and one preference fewer keeps the totals below the same.
        const sampled = await api(server.url, "/v1/pairs", { prompt: "What is 2+3? Answer:", max_new_tokens: 4 });
        const judged = await until("the judge's verdict", async () => {
          const p = await api(server.url, `/v1/pairs/${sampled.id}`);
          return p.status === "awaiting_judgment" ? undefined : p;
        });
        assert.ok(["tie", "labeled"].includes(judged.status), judged.status);

        // Labeled pairs are trained on and published; the server swaps the new version in.
        await api(server.url, "/v1/preferences", prefs(0, judged.status === "labeled" ? 3 : 4));
        await until(
          "4 trained pairs",
          async () => (await api(server.url, "/v1/stats")).pairs.trained === 4 || undefined,
        );
        await until("the server to serve a published version", async () => {
          const h = await (await fetch(`${server.url}/healthz`)).json();
          return h.policy_version >= 1 || undefined;
        });

        // kill -9 the trainer while it works, restart it: every pair is trained exactly once, and at once
        // (the production lease of 300 s is far longer than the restart; the fence voids it).
        await api(server.url, "/v1/preferences", prefs(10, 8));
        await until(
          "the trainer to be busy",
          () => Promise.resolve(worker.log.join("").match(/"step":3/) ? true : undefined),
        );
        await stopProc(worker, "SIGKILL");
        worker = startWorker(dir, checkpoints);
        await until(
          "12 trained pairs",
          async () => (await api(server.url, "/v1/stats")).pairs.trained === 12 || undefined,
        );

        // kill -9 the server, restart it: the state is all in KV and the checkpoint store.
        await stopProc(server.proc, "SIGKILL");
        server = await startServer(dir, checkpoints);
        const stats = await api(server.url, "/v1/stats");
        assert.equal(stats.pairs.trained, 12);
        assert.equal(stats.pairs.labeled, 0);
        assert.ok(stats.policy_version >= 2, `served version ${stats.policy_version}`);

        // Roll back to the oldest kept version: the server swaps it in at its next poll.
        const listed = start(dir, ["versions", "--kv", "dpo.kv", "--checkpoints", checkpoints, "--json"]);
        assert.equal((await listed.child.status).code, 0, listed.log.join(""));
        const kept = listed.log.join("").trim().split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
        assert.equal(kept.filter((v) => v.served).length, 1);
        const oldest = kept[0].version as number;
        const rollback = start(dir, [
          "versions",
          "--kv",
          "dpo.kv",
          "--checkpoints",
          checkpoints,
          "--rollback",
          `${oldest}`,
        ]);
        assert.equal((await rollback.child.status).code, 0, rollback.log.join(""));
        await until("the server to serve the rolled-back version", async () => {
          const h = await (await fetch(`${server.url}/healthz`)).json();
          return h.policy_version === oldest || undefined;
        });
      } catch (err) {
        for (const [name, p] of [["worker", worker], ["judge", judge], ["server", server.proc]] as const) {
          console.error(`--- ${name} log ---\n${p.log.join("").slice(-3000)}`);
        }
        throw err;
      } finally {
        await Promise.all([stopProc(worker), stopProc(judge), stopProc(server.proc)]);
      }
      // No pair is in two published versions: trained exactly once.
      const kv = await Deno.openKv(join(dir, "dpo.kv"));
      try {
        const seen = new Map<string, number>();
        for await (const e of kv.list<string[]>({ prefix: ["trained_pairs"] })) {
          for (const id of e.value) seen.set(id, (seen.get(id) ?? 0) + 1);
        }
        assert.equal(seen.size, 12);
        assert.deepEqual([...new Set(seen.values())], [1], "a pair published in two versions");
      } finally {
        kv.close();
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}
