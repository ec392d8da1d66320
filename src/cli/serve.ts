/** `serve`: the Hono server on the shared KV, hot-swapping policy versions as the trainer publishes them. */
import { join } from "node:path";
import { z } from "zod";
import { describeBackend, initBackend } from "../model/backend.ts";
import { loadModel } from "../model/checkpoint.ts";
import { resolveModel } from "../model/hub.ts";
import { createApp } from "../server/app.ts";
import { PolicyHolder } from "../server/policy.ts";
import { type CheckpointStore, DirCheckpointStore, KvCheckpointStore, pollPointer } from "../store/checkpoints.ts";
import { PairStore } from "../store/pairs.ts";
import { buildJudge, openSharedKv } from "./_services.ts";
import { backendOption, log, numberOption, parseCommand, validate } from "./common.ts";

/** Usage text of the command. */
export const SERVE_USAGE = `Usage: deno task cli serve [options]

Serves the API on the shared KV. The policy is the published version the KV pointer names (polled;
a new version is swapped in without failing requests), or --model until one is published.

  --kv PATH|URL             the shared KV (default data/dpo.kv)
  --checkpoints dir:PATH|kv where policy versions are published (default dir:data/checkpoints)
  --model DIR|hf:...        the policy before any version is published
  --host HOST --port N      where to listen (default 127.0.0.1:8000)
  --api-key KEY             accepted bearer key (repeatable; also DPO_API_KEYS=k1,k2); one is made up if none
  --judge arithmetic|verifier  score responses so pairs are best against worst (optional)
  --verifier PATH           for --judge verifier
  --poll-ms MS              how often to look for a new policy version (default 2000)
  --rate-limit N            requests per minute per API key and instance (default 600)
  --pending-hours H         a pair awaiting judgment expires after H hours (default 168)
  --backend B               compute backend (default auto)
  --cache-dir DIR           where KV-stored versions are unpacked (default data/cache)`;

const Options = z.object({
  kv: z.string().default("data/dpo.kv"),
  checkpoints: z.string().regex(/^(dir:.+|kv)$/, "expected dir:PATH or kv").default("dir:data/checkpoints"),
  model: z.string().optional(),
  host: z.string().default("127.0.0.1"),
  port: numberOption((n) => n.int().min(0).max(65535)).default(8000),
  "api-key": z.array(z.string().min(8, "must be at least 8 characters")).default([]),
  judge: z.enum(["arithmetic", "verifier"]).optional(),
  verifier: z.string().optional(),
  "poll-ms": numberOption((n) => n.int().positive()).default(2000),
  "rate-limit": numberOption((n) => n.int().positive()).default(600),
  "pending-hours": numberOption((n) => n.positive()).default(168),
  backend: backendOption,
  "cache-dir": z.string().default("data/cache"),
});

/** The checkpoint store named by `--checkpoints`. */
export function openCheckpoints(kv: Deno.Kv, spec: string): CheckpointStore {
  return spec === "kv" ? new KvCheckpointStore(kv) : new DirCheckpointStore(kv, spec.slice("dir:".length));
}

/** Runs the command until SIGINT/SIGTERM. */
export async function runServe(args: string[]): Promise<void> {
  const values = parseCommand(args, {
    help: { type: "boolean", short: "h" },
    kv: { type: "string" },
    checkpoints: { type: "string" },
    model: { type: "string" },
    host: { type: "string" },
    port: { type: "string" },
    "api-key": { type: "string", multiple: true },
    judge: { type: "string" },
    verifier: { type: "string" },
    "poll-ms": { type: "string" },
    "rate-limit": { type: "string" },
    "pending-hours": { type: "string" },
    backend: { type: "string", default: "auto" },
    "cache-dir": { type: "string" },
  });
  if (values.help) return void console.log(SERVE_USAGE);
  const opts = validate(Options, values);
  const keys = [...opts["api-key"], ...(Deno.env.get("DPO_API_KEYS") ?? "").split(",").filter((k) => k.length > 0)];
  if (keys.length === 0) keys.push(`dpo-${crypto.randomUUID().replaceAll("-", "")}`);
  log(describeBackend(await initBackend(opts.backend)));
  const kv = await openSharedKv(opts.kv);
  const store = new PairStore(kv);
  const checkpoints = openCheckpoints(kv, opts.checkpoints);
  const load = async (version: number) => {
    const dir = await checkpoints.materialize(version, join(opts["cache-dir"], `policy-v${version}`));
    const { model, tokenizer } = await loadModel(dir, { trainable: false });
    return { model, tokenizer, version };
  };
  const current = await checkpoints.current();
  let initial;
  if (current) initial = await load(current.version);
  else {
    if (!opts.model) throw new Error("Cannot serve: no policy version is published yet and no --model was given");
    const { model, tokenizer } = await loadModel(await resolveModel(opts.model), { trainable: false });
    initial = { model, tokenizer, version: 0 };
  }
  const policy = new PolicyHolder(initial);
  const score = opts.judge ? (await buildJudge({ judge: opts.judge, verifier: opts.verifier })).score : undefined;
  const app = createApp({
    store,
    policy,
    apiKeys: keys,
    score,
    webhookSecret: Deno.env.get("DPO_WEBHOOK_SECRET"),
    limits: { requestsPerMinute: opts["rate-limit"] },
    pendingTtlMs: opts["pending-hours"] * 3600_000,
  });
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  const polling = pollPointer(kv, opts["poll-ms"], async (pointer) => {
    if (!pointer || pointer.version === policy.version) return;
    try {
      policy.swap(await load(pointer.version));
      log(`serving policy v${pointer.version}`);
    } catch (err) {
      log(`cannot load policy v${pointer.version}, still serving v${policy.version}: ${(err as Error).message}`);
    }
  }, stop.signal);
  // Pending pairs expire even when no judge process runs (human labeling only).
  const sweeper = setInterval(() => {
    store.expirePending().catch((err) => log(`cannot expire pending pairs: ${(err as Error).message}`));
  }, 60_000);
  const server = Deno.serve({
    hostname: opts.host,
    port: opts.port,
    signal: stop.signal,
    onListen: ({ hostname, port }) => {
      log(`listening on http://${hostname}:${port} (policy v${policy.version}, KV ${opts.kv})`);
      if (!opts["api-key"].length && !Deno.env.get("DPO_API_KEYS")) log(`API key: ${keys[0]}`);
    },
  }, app.fetch);
  try {
    await Promise.all([server.finished, polling]);
  } finally {
    clearInterval(sweeper);
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    policy.dispose();
    kv.close();
  }
}
