/**
 * The serverless entry: a module whose default export is `{ fetch }`, as `deno serve` and serverless hosts
 * run it (`deno serve -A serverless.ts`). Feedback only: no model, no TF.js; the routes that need a policy
 * answer 503. Configured from the environment alone, and start-up does nothing but open the KV:
 *
 * - `DPO_KV`: the shared KV, a remote URL (token in `DENO_KV_ACCESS_TOKEN`) or a file (default data/dpo.kv);
 * - `DPO_API_KEYS` (required), `DPO_LABEL_KEYS`: comma-separated bearer keys, 16 characters or more;
 * - `DPO_WEBHOOK_SECRET`: accept signed verdicts (Standard Webhooks);
 * - `DPO_RATE_LIMIT`: requests per minute per key, counted in KV across every instance (default 600);
 * - `DPO_PENDING_HOURS`: how long a pair awaits judgment (default 168).
 */
import { createApp } from "./src/server/app.ts";
import { openSharedKv } from "./src/store/open.ts";
import { PairStore } from "./src/store/pairs.ts";

const env = (name: string) => Deno.env.get(name) || undefined;
const keys = (name: string) => (env(name) ?? "").split(",").map((k) => k.trim()).filter((k) => k !== "");
const positive = (name: string, fallback: number) => {
  const value = Number(env(name) ?? fallback);
  if (!(Number.isFinite(value) && value > 0)) throw new Error(`Cannot start: ${name} must be a positive number`);
  return value;
};

const apiKeys = keys("DPO_API_KEYS");
if (apiKeys.length === 0) throw new Error("Cannot start: set DPO_API_KEYS (comma-separated, 16 characters or more)");
const kv = await openSharedKv(env("DPO_KV") ?? "data/dpo.kv");
const app = createApp({
  store: new PairStore(kv),
  apiKeys,
  labelKeys: keys("DPO_LABEL_KEYS"),
  webhookSecret: env("DPO_WEBHOOK_SECRET"),
  limits: { requestsPerMinute: positive("DPO_RATE_LIMIT", 600) },
  pendingTtlMs: positive("DPO_PENDING_HOURS", 168) * 3600_000,
});

export default { fetch: app.fetch } satisfies Deno.ServeDefaultExport;
