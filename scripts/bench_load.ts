/**
 * `deno task bench:load`: requests per second and latency of the server under load, over loopback,
 * with the servers in processes of their own on one KV file (durable writes):
 *   - feedback: POST /v1/pairs/:id/feedback on distinct pending pairs (a versionstamp-checked commit each),
 *     on 1 and on 2 feedback-only instances (the load spread over them), then every verdict counted in KV;
 *   - preferences: POST /v1/preferences, one preference a request, likewise;
 *   - pairs: POST /v1/pairs with the tiny fixture model (generation + a commit), on one instance.
 * Every request also spends a token of its key's rate limit, drawn from KV in leased blocks.
 *
 *   deno task bench:load [--seconds 8] [--connections 32] [--pairs-connections 4] [--instances 1,2]
 *                        [--client auto|wrk|deno] [--skip-pairs]
 *
 * The load comes from wrk (Debian's `wrk`) on one instance when it is installed (`--client auto`, the
 * default), as it takes the least CPU from the cores the servers use; otherwise, and for several instances
 * (one client spreads the load over them), from a lean keep-alive HTTP client in this Deno process
 * (`_load_client.ts`). The client column says which.
 */
import { scriptArgs } from "./_args.ts";
import { fileURLToPath } from "node:url";
import { join } from "node:path";
import { PairStore } from "../src/store/pairs.ts";
import { type LoadRequest, type LoadResult, runLoad } from "./_load_client.ts";
import { type ServeProcess, startServe } from "./_serve_process.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const KEY = "bench-load-key-0001";
// Pending pairs made per second of a feedback run: more than a run answers, so that no pair is judged twice.
const PAIRS_PER_SECOND = 15_000;

function startServer(dir: string, withModel: boolean): Promise<ServeProcess> {
  return startServe([
    "--kv",
    join(dir, "dpo.kv"),
    "--checkpoints",
    `dir:${join(dir, "ckpts")}`,
    ...(withModel ? ["--model", join(ROOT, "tests/fixtures/gpt2_tiny"), "--backend", "wasm"] : ["--feedback-only"]),
    "--port",
    "0",
    "--rate-limit",
    "100000000",
  ], { DPO_API_KEYS: KEY });
}

/**
 * wrk's Lua script: POSTs feedback on the pending pair ids in turn (its argument names the file that lists
 * them), or one preference a request (its argument is "-"), and writes its figures to OUT when done.
 */
const WRK_SCRIPT = `
local ids, k = {}, 0
function init(args)
  if args[1] ~= "-" then for line in io.lines(args[1]) do ids[#ids + 1] = line end end
end
function request()
  k = k + 1
  local headers = { ["authorization"] = "Bearer KEY", ["content-type"] = "application/json" }
  if #ids > 0 then
    local choice = (k % 2 == 0) and "b" or "a"
    return wrk.format("POST", "/v1/pairs/" .. ids[(k - 1) % #ids + 1] .. "/feedback", headers,
      '{"choice":"' .. choice .. '","annotator":"bench"}')
  end
  return wrk.format("POST", "/v1/preferences", headers,
    '{"prompt":"' .. k .. '+1=","chosen":"' .. (k + 1) .. '","rejected":"' .. (k + 2) .. '"}')
end
function done(summary, latency, requests)
  local e = summary.errors
  local f = io.open([[OUT]], "w")
  f:write(string.format("%d %d %d %d %f %f\\n", summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99)))
  f:close()
end
`;

async function hasWrk(): Promise<boolean> {
  try {
    return (await new Deno.Command("wrk", { args: ["--version"], stdout: "null", stderr: "null" }).output()) !== null;
  } catch {
    return false;
  }
}

/** Load from wrk on one instance: feedback on `ids`, or preferences when `ids` is undefined. */
async function wrkLoad(url: string, ids: string[] | undefined, dir: string, seconds: number, connections: number) {
  const idsFile = join(dir, "ids.txt");
  if (ids) await Deno.writeTextFile(idsFile, ids.join("\n") + "\n");
  const script = join(dir, "load.lua");
  const out = join(dir, "wrk.out");
  await Deno.writeTextFile(script, WRK_SCRIPT.replace("KEY", KEY).replace("OUT", out));
  const run = await new Deno.Command("wrk", {
    args: ["-t1", `-c${connections}`, `-d${seconds}s`, "-s", script, url, "--", ids ? idsFile : "-"],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!run.success) throw new Error(`wrk failed: ${new TextDecoder().decode(run.stderr)}`);
  const [requests, durationUs, status, socket, p50Us, p99Us] = (await Deno.readTextFile(out)).trim().split(" ")
    .map(Number) as [number, number, number, number, number, number];
  return {
    rps: requests / (durationUs / 1e6),
    p50: p50Us / 1000,
    p99: p99Us / 1000,
    errors: status + socket,
    n: requests,
  } satisfies LoadResult;
}

async function main(): Promise<void> {
  const { values } = scriptArgs(import.meta.url, {
    seconds: { type: "string", default: "8" },
    connections: { type: "string", default: "32" },
    "pairs-connections": { type: "string", default: "4" },
    instances: { type: "string", default: "1,2" },
    client: { type: "string", default: "auto" },
    "skip-pairs": { type: "boolean", default: false },
  });
  const seconds = Number(values.seconds);
  const connections = Number(values.connections);
  const counts = values.instances!.split(",").map(Number);
  if (counts.some((n) => !Number.isInteger(n) || n < 1)) throw new Error(`--instances must list positive integers`);
  if (!["auto", "wrk", "deno"].includes(values.client!)) throw new Error(`--client must be auto, wrk or deno`);
  const wrk = values.client !== "deno" && await hasWrk();
  if (values.client === "wrk" && !wrk) throw new Error("--client wrk: wrk is not installed (apt-get install wrk)");
  const headers = { authorization: `Bearer ${KEY}` };
  console.log(
    `# servers in processes of their own on one KV file; load over loopback from ${
      wrk ? "wrk (one instance) and " : ""
    }a keep-alive Deno client; ${navigator.hardwareConcurrency} cores`,
  );
  const row = (name: string, client: string, c: number, r: LoadResult, lost: string) =>
    console.log(
      `${name.padEnd(44)} ${client.padEnd(4)} ${String(c).padStart(3)} conn ${r.rps.toFixed(0).padStart(6)} req/s   ` +
        `p50 ${r.p50.toFixed(1).padStart(5)} ms   p99 ${r.p99.toFixed(1).padStart(5)} ms   ` +
        `${r.errors} errors of ${r.n}   lost ${lost}`,
    );
  // 2xx answers whose write KV does not hold. wrk stops with requests on their way, whose writes may land
  // unanswered: those show as stored beyond the answers, never as lost.
  const lostOf = (r: LoadResult, stored: number) => {
    const ok = r.n - r.errors;
    return ok >= stored ? String(ok - stored) : `0 (${stored - ok} more stored, answered after the stop)`;
  };
  const settle = () => new Promise((resolve) => setTimeout(resolve, 500));
  for (const n of counts) {
    const dir = await Deno.makeTempDir({ prefix: "bench_load_" });
    // Pending pairs to give feedback on, written straight into the KV file before the servers start.
    const kv = await Deno.openKv(join(dir, "dpo.kv"));
    const store = new PairStore(kv);
    const ids: string[] = [];
    const total = Math.ceil(seconds * PAIRS_PER_SECOND);
    for (let i = 0; i < total; i += 100) {
      const made = await Promise.all(
        Array.from(
          { length: Math.min(100, total - i) },
          (_, j) =>
            store.create({ prompt: `p${i + j}`, promptText: `p${i + j}`, responses: ["a", "b"], policyVersion: 0 }),
        ),
      );
      ids.push(...made.map((r) => r.pair.id));
    }
    const servers = [];
    for (let k = 0; k < n; k++) servers.push(await startServer(dir, false));
    const urls = servers.map((x) => x.url);
    const client = wrk && n === 1 ? "wrk" : "deno";
    const load = (next: (k: number) => LoadRequest, wrkIds: string[] | undefined) =>
      client === "wrk"
        ? wrkLoad(urls[0]!, wrkIds, dir, seconds, connections)
        : runLoad({ urls, seconds, connections, headers, next });
    try {
      const feedback = await load((k) => ({
        path: `/v1/pairs/${ids[k % ids.length]}/feedback`,
        body: JSON.stringify({ choice: k % 2 ? "a" : "b", annotator: "bench" }),
      }), ids);
      await settle();
      // Every verdict answered 200 is in KV: a lost write would show as fewer labeled pairs than answers.
      const judged = await store.counts();
      row(
        `POST /v1/pairs/:id/feedback, ${n} instance(s)`,
        client,
        connections,
        feedback,
        lostOf(feedback, judged.labeled + judged.tie),
      );
      const prefs = await load((k) => ({
        path: "/v1/preferences",
        body: JSON.stringify({ prompt: `${k}+1=`, chosen: `${k + 1}`, rejected: `${k + 2}` }),
      }), undefined);
      await settle();
      const after = await store.counts();
      row(
        `POST /v1/preferences, ${n} instance(s)`,
        client,
        connections,
        prefs,
        lostOf(prefs, after.labeled - judged.labeled),
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
  if (values["skip-pairs"]) return;
  const dir = await Deno.makeTempDir({ prefix: "bench_load_" });
  const { child, url } = await startServer(dir, true);
  try {
    const pairConnections = Number(values["pairs-connections"]);
    const pairs = await runLoad({
      urls: [url],
      seconds,
      connections: pairConnections,
      headers,
      next: () => ({
        path: "/v1/pairs",
        body: JSON.stringify({ prompt: "What is 2+2? Answer:", n: 2, max_new_tokens: 8 }),
      }),
    });
    row("POST /v1/pairs (tiny model), 1 instance", "deno", pairConnections, pairs, "-");
  } finally {
    child.kill("SIGTERM");
    await child.status;
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) await main();
