/**
 * `deno task bench:load`: requests per second and latency of the server under load, over loopback,
 * with the servers in processes of their own on one KV file (durable writes):
 *   - feedback: POST /v1/pairs/:id/feedback on distinct pending pairs (a versionstamp-checked commit each),
 *     on 1 and on 2 feedback-only instances (the load spread over them), then every verdict counted in KV;
 *   - preferences: POST /v1/preferences, one preference a request, likewise;
 *   - pairs: POST /v1/pairs with the tiny fixture model (generation + a commit), on one instance.
 * Every request also counts against its key's rate limit in KV (a commit and a read).
 *
 *   deno task bench:load [--seconds 10] [--connections 32] [--pairs-connections 4] [--instances 1,2]
 *
 * The load comes from a Deno fetch client in this process (wrk, when installed, for one instance's feedback).
 */
import { scriptArgs } from "./_args.ts";
import { fileURLToPath } from "node:url";
import { join } from "node:path";
import { PairStore } from "../src/store/pairs.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const KEY = "bench-load-key-0001";

async function startServer(dir: string, withModel: boolean): Promise<{ child: Deno.ChildProcess; url: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      join(ROOT, "main.ts"),
      "serve",
      "--kv",
      join(dir, "dpo.kv"),
      "--checkpoints",
      `dir:${join(dir, "ckpts")}`,
      ...(withModel ? ["--model", join(ROOT, "tests/fixtures/gpt2_tiny"), "--backend", "wasm"] : ["--feedback-only"]),
      "--port",
      "0",
      "--rate-limit",
      "100000000",
    ],
    env: { DPO_API_KEYS: KEY },
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (true) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`the server exited:\n${text}`);
    text += value;
    const m = /listening on (http:\/\/[\d.]+:\d+)/.exec(text);
    if (m) {
      // Keep draining the server's log so it never blocks on a full pipe.
      (async () => {
        while (!(await reader.read()).done);
      })();
      return { child, url: m[1]! };
    }
  }
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

/** Runs `connections` request loops for `seconds`; `next` makes each request. */
async function load(
  seconds: number,
  connections: number,
  next: () => Promise<Response>,
): Promise<{ rps: number; p50: number; p99: number; errors: number; n: number }> {
  const latencies: number[] = [];
  let errors = 0;
  const end = performance.now() + seconds * 1000;
  await Promise.all(Array.from({ length: connections }, async () => {
    while (performance.now() < end) {
      const t = performance.now();
      const res = await next();
      await res.arrayBuffer();
      latencies.push(performance.now() - t);
      if (!res.ok) {
        errors++;
        if (errors === 1) console.error(`first error: ${res.status} ${await res.clone().text()}`);
      }
    }
  }));
  latencies.sort((a, b) => a - b);
  return {
    rps: latencies.length / seconds,
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    errors,
    n: latencies.length,
  };
}

/** wrk's Lua script: each thread POSTs feedback on its own share of the pending pair ids, in turn. */
const WRK_SCRIPT = `
local ids, n, step = {}, 0, 0
function setup(thread)
  thread:set("slot", n)
  n = n + 1
end
function init(args)
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
  threads = tonumber(args[2])
end
function request()
  local id = ids[(step * threads + slot) % #ids + 1]
  step = step + 1
  return wrk.format("POST", "/v1/pairs/" .. id .. "/feedback",
    { ["authorization"] = "Bearer KEY", ["content-type"] = "application/json" }, '{"choice":"a"}')
end
`;

async function hasWrk(): Promise<boolean> {
  try {
    return (await new Deno.Command("wrk", { args: ["--version"], stdout: "null", stderr: "null" }).output()) !== null;
  } catch {
    return false;
  }
}

/** Feedback load from wrk: requests/s, p50 and p99 from its latency distribution, non-2xx count. */
async function wrkFeedback(url: string, ids: string[], dir: string, seconds: number, connections: number) {
  const threads = 1;
  await Deno.writeTextFile(join(dir, "ids.txt"), ids.join("\n") + "\n");
  await Deno.writeTextFile(join(dir, "feedback.lua"), WRK_SCRIPT.replace("KEY", KEY));
  const out = await new Deno.Command("wrk", {
    args: [
      `-t${threads}`,
      `-c${connections}`,
      `-d${seconds}s`,
      "--latency",
      "-s",
      join(dir, "feedback.lua"),
      url,
      "--",
      join(dir, "ids.txt"),
      String(threads),
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  const ms = (label: string) => {
    const m = new RegExp(`${label}%\\s+([\\d.]+)(us|ms|s)`).exec(text);
    if (!m) return NaN;
    return Number(m[1]) * ({ us: 0.001, ms: 1, s: 1000 } as Record<string, number>)[m[2]!]!;
  };
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(text)?.[1]);
  const n = Number(/(\d+) requests in/.exec(text)?.[1]);
  const errors = Number(/Non-2xx or 3xx responses: (\d+)/.exec(text)?.[1] ?? 0);
  return { rps, p50: ms("50"), p99: ms("99"), errors, n };
}

async function main(): Promise<void> {
  const { values } = scriptArgs(import.meta.url, {
    seconds: { type: "string", default: "10" },
    connections: { type: "string", default: "32" },
    "pairs-connections": { type: "string", default: "4" },
    instances: { type: "string", default: "1,2" },
  });
  const seconds = Number(values.seconds);
  const connections = Number(values.connections);
  const counts = values.instances!.split(",").map(Number);
  if (counts.some((n) => !Number.isInteger(n) || n < 1)) throw new Error(`--instances must list positive integers`);
  const headers = { authorization: `Bearer ${KEY}`, "content-type": "application/json" };
  const useWrk = await hasWrk();
  console.log(
    `# load from ${useWrk ? "wrk (one instance's feedback), else " : ""}a Deno fetch client in this ` +
      `process; servers in processes of their own on one KV file; ${navigator.hardwareConcurrency} cores`,
  );
  const row = (name: string, c: number, r: Awaited<ReturnType<typeof load>>, lost: number | string) =>
    console.log(
      `${name.padEnd(40)} ${String(c).padStart(4)} conn ${r.rps.toFixed(0).padStart(7)} req/s   p50 ${
        r.p50.toFixed(1).padStart(6)
      } ms   p99 ${r.p99.toFixed(1).padStart(6)} ms   ${r.errors} errors of ${r.n}   lost ${lost}`,
    );
  for (const n of counts) {
    const dir = await Deno.makeTempDir({ prefix: "bench_load_" });
    // Pending pairs to give feedback on, written straight into the KV file before the servers start.
    const kv = await Deno.openKv(join(dir, "dpo.kv"));
    const store = new PairStore(kv);
    const ids: string[] = [];
    for (let i = 0; i < Math.ceil(seconds * 6000); i++) {
      ids.push(
        (await store.create({ prompt: `p${i}`, promptText: `p${i}`, responses: ["a", "b"], policyVersion: 0 }))
          .pair.id,
      );
    }
    const servers = [];
    for (let k = 0; k < n; k++) servers.push(await startServer(dir, false));
    const urls = servers.map((x) => x.url);
    try {
      let i = 0;
      const feedback = useWrk && n === 1 ? await wrkFeedback(urls[0]!, ids, dir, seconds, connections) : await load(
        seconds,
        connections,
        () => {
          const k = i++;
          return fetch(`${urls[k % n]}/v1/pairs/${ids[k % ids.length]}/feedback`, {
            method: "POST",
            headers,
            body: JSON.stringify({ choice: k % 2 ? "a" : "b", annotator: "bench" }),
          });
        },
      );
      // Every verdict answered 200 is in KV: a lost write would show as fewer labeled pairs than answers.
      const judged = await store.counts();
      const labeledByFeedback = judged.labeled + judged.tie;
      row(
        `POST /v1/pairs/:id/feedback, ${n} instance(s)`,
        connections,
        feedback,
        feedback.n - feedback.errors - labeledByFeedback,
      );
      let j = 0;
      const prefs = await load(seconds, connections, () => {
        const k = j++;
        return fetch(`${urls[k % n]}/v1/preferences`, {
          method: "POST",
          headers,
          body: JSON.stringify({ prompt: `${k}+1=`, chosen: `${k + 1}`, rejected: `${k + 2}` }),
        });
      });
      const after = await store.counts();
      row(
        `POST /v1/preferences, ${n} instance(s)`,
        connections,
        prefs,
        prefs.n - prefs.errors - (after.labeled - judged.labeled),
      );
    } finally {
      kv.close();
      for (const x of servers) {
        x.child.kill("SIGTERM");
        await x.child.status;
      }
      await Deno.remove(dir, { recursive: true });
    }
  }
  const dir = await Deno.makeTempDir({ prefix: "bench_load_" });
  const { child, url } = await startServer(dir, true);
  try {
    const pairConnections = Number(values["pairs-connections"]);
    const pairs = await load(seconds, pairConnections, () =>
      fetch(`${url}/v1/pairs`, {
        method: "POST",
        headers,
        body: JSON.stringify({ prompt: "What is 2+2? Answer:", n: 2, max_new_tokens: 8 }),
      }));
    row("POST /v1/pairs (tiny model), 1 instance", pairConnections, pairs, "-");
  } finally {
    child.kill("SIGTERM");
    await child.status;
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) await main();
