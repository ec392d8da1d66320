/**
 * Cold start of the serverless entry: from process start (`deno serve serverless.ts`) to the first 201 on
 * `POST /v1/preferences`, on a fresh KV file each run (modules already in Deno's cache, as on a warm host).
 *
 *   deno task bench:cold-start [--runs N]
 */
import { scriptArgs } from "./_args.ts";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const args = scriptArgs(import.meta.url, { runs: { type: "string", default: "7" } });
const runs = Number(args.values.runs);
if (!(Number.isInteger(runs) && runs > 0)) {
  throw new Error(`--runs must be a positive integer: got '${args.values.runs}'`);
}
const ROOT = fileURLToPath(new URL("..", import.meta.url));
const KEY = "cold-start-key-0001";

async function once(port: number): Promise<number> {
  const dir = await Deno.makeTempDir({ prefix: "cold_start_" });
  const started = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["serve", "-A", "--port", String(port), join(ROOT, "serverless.ts")],
    cwd: ROOT,
    env: { DPO_API_KEYS: KEY, DPO_KV: join(dir, "dpo.kv") },
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    for (;;) {
      const res = await fetch(`http://127.0.0.1:${port}/v1/preferences`, {
        method: "POST",
        headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
        body: JSON.stringify({ prompt: "1+1=", chosen: "2", rejected: "3" }),
      }).catch(() => null);
      if (res) {
        await res.body?.cancel();
        if (res.status === 201) return performance.now() - started;
        throw new Error(`POST /v1/preferences answered ${res.status}`);
      }
      await new Promise((r) => setTimeout(r, 2));
    }
  } finally {
    child.kill("SIGTERM");
    await child.status;
    await Deno.remove(dir, { recursive: true });
  }
}

await once(18_300); // the first run fills Deno's module cache; not counted
const times: number[] = [];
for (let i = 0; i < runs; i++) {
  const ms = await once(18_301 + i);
  times.push(ms);
  console.log(`run ${i + 1}: ${ms.toFixed(0)} ms from process start to the first 201`);
}
times.sort((a, b) => a - b);
console.log(
  `median ${times[Math.floor(times.length / 2)]!.toFixed(0)} ms, min ${times[0]!.toFixed(0)} ms over ${runs} runs`,
);
