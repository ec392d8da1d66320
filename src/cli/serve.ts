/** `serve`: the Hono server on the shared KV, hot-swapping policy versions as the trainer publishes them. */
import { z } from "zod";
import { startServerRole } from "../roles/serve.ts";
import { openCheckpoints, openSharedKv } from "../store/open.ts";
import { PairStore } from "../store/pairs.ts";
import { buildJudge } from "./_services.ts";
import { checkKeyLengths, MIN_KEY_LENGTH } from "../server/http.ts";
import { splitKeys } from "./_keys.ts";
import { log, UsageError } from "./common.ts";
import { flag, number, optionsUsage, parseOptions, SHARED, text, withEnv } from "./_options.ts";

const OWN_OPTIONS = {
  kv: SHARED.kv,
  checkpoints: SHARED.checkpoints,
  model: { ...SHARED.model, help: "the policy before any version is published" },
  "feedback-only": flag("serve no policy, whatever is published"),
  host: text("HOST", "where to listen", z.string().min(1).default("127.0.0.1")),
  port: number("N", "port; 0 picks a free one", (n) => n.int().min(0).max(65535), 8000),
  "api-key": text(
    "KEY",
    `accepted bearer key, ${MIN_KEY_LENGTH} characters or more (repeatable; also DPO_API_KEYS=k1,k2; ` +
      "DPO_LABEL_KEYS=k1,k2: keys for the dashboard and label page only); one is made up if none",
    z.array(z.string().min(MIN_KEY_LENGTH, `every key must have at least ${MIN_KEY_LENGTH} characters`)).default([]),
    { multiple: true },
  ),
  judge: text(
    "J[,J...]",
    "score sampled responses so that pairs are best against worst: a judge that can score (a task's name, " +
      "verifier:PATH with score()), or several",
  ),
  "poll-ms": number("MS", "how often to look for a new policy version", (n) => n.int().positive(), 2000),
  "rate-limit": number(
    "N",
    "requests per minute per API key, counted in KV across instances",
    (n) => n.int().positive(),
    600,
  ),
  "pending-hours": number("H", "a pair awaiting judgment expires after H hours", (n) => n.positive(), 168),
  backend: SHARED.backend,
  "cache-dir": text("DIR", "where KV-stored versions are unpacked", z.string().min(1).default("data/cache")),
};

// Not the keys (DPO_API_KEYS, a list, is read below) nor --cache-dir (DPO_CACHE_DIR is the hub's cache).
export const OPTIONS = withEnv(OWN_OPTIONS, ["api-key", "cache-dir"]);

/** Usage text of the command. */
export const SERVE_USAGE = `Usage: deno task cli serve [options]

Serves the API on the shared KV. The policy is the published version the KV pointer names (polled;
a new version is swapped in without failing requests), or --model until one is published. With
--feedback-only, or with no --model and no version published, it serves no policy: preferences,
client-supplied pairs, feedback, export, stats, metrics and the pages work; sampling and chat answer
503; no model code (TF.js) is loaded.

${optionsUsage(OPTIONS)}`;

/** The scoring function of the judge `spec` names; a judge that cannot score is a UsageError. */
async function scorer(spec: string) {
  const judge = await buildJudge({ judge: spec, settings: {} });
  if (!judge.score) {
    throw new UsageError(
      `--judge ${spec}: serve uses its judge only to score responses, and '${judge.id}' cannot score ` +
        "(arithmetic or verifier:PATH exporting score can; judge pairs with the judge command)",
    );
  }
  return judge.score.bind(judge);
}

/** Runs the command until SIGINT/SIGTERM. */
export async function runServe(args: string[]): Promise<void> {
  const parsed = parseOptions(args, OPTIONS);
  if (parsed.help) return void console.log(SERVE_USAGE);
  const opts = parsed.values;
  const keys = [...opts["api-key"], ...checkKeyLengths(splitKeys(Deno.env.get("DPO_API_KEYS")), "DPO_API_KEYS")];
  const labelKeys = checkKeyLengths(splitKeys(Deno.env.get("DPO_LABEL_KEYS")), "DPO_LABEL_KEYS");
  if (keys.length === 0) keys.push(`dpo-${crypto.randomUUID().replaceAll("-", "")}`);
  if (opts["feedback-only"] && opts.model) throw new UsageError("--feedback-only serves no model: drop --model");
  const score = opts.judge ? await scorer(opts.judge) : undefined;
  const kv = await openSharedKv(opts.kv);
  const checkpoints = openCheckpoints(kv, opts.checkpoints);
  const feedbackOnly = opts["feedback-only"] || (!opts.model && (await checkpoints.current()) === null);
  if (!feedbackOnly) {
    // Imported here: a feedback-only server never loads TF.js.
    const { describeBackend, initBackend } = await import("../model/kernels/backend.ts");
    log(describeBackend(await initBackend(opts.backend)));
  }
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  try {
    const server = await startServerRole({
      kv,
      store: new PairStore(kv),
      checkpoints,
      model: opts.model,
      feedbackOnly,
      host: opts.host,
      port: opts.port,
      pollMs: opts["poll-ms"],
      cacheDir: opts["cache-dir"],
      app: {
        apiKeys: keys,
        labelKeys,
        score,
        webhookSecret: Deno.env.get("DPO_WEBHOOK_SECRET"),
        limits: { requestsPerMinute: opts["rate-limit"] },
        pendingTtlMs: opts["pending-hours"] * 3600_000,
      },
      signal: stop.signal,
      log,
    });
    const serving = server.policy ? `policy v${server.policy.version}` : "feedback-only, no policy";
    log(`listening on ${server.url} (${serving}, KV ${opts.kv})`);
    if (!opts["api-key"].length && !Deno.env.get("DPO_API_KEYS")) log(`API key: ${keys[0]}`);
    await server.finished;
  } finally {
    stop.abort();
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    kv.close();
  }
}
