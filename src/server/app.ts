/**
 * The Hono app: the edge every request crosses (one error shape, request counting, auth, signed verdicts,
 * body and rate limits), the pages, and the routes by resource, each a module of `routes/`: pairs,
 * preferences, the OpenAI chat API, completion feedback, export, and what operators look at.
 * Stateless: everything lives in KV (the store) and the policy holder, so any number of instances
 * can serve the same KV. `createApp(deps)` builds it; `main.ts` serves it.
 */
import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { HTTPException } from "hono/http-exception";
import { verifyWebhook, WebhookVerificationError } from "../judge/webhook.ts";
import { ConflictError, NotFoundError, StoreInputError, StoreLimitError } from "../store/errors.ts";
import { errorBody, httpError, rateLimit, requireApiKey } from "./http.ts";
import { Metrics } from "./metrics.ts";
import { DASHBOARD_PAGE } from "./pages/dashboard.ts";
import { LABEL_PAGE } from "./pages/label.ts";
import type { StaticPage } from "./pages/_page.ts";
import type { PolicyHolder } from "./policy.ts";
import { chatRoutes, openAiErrors } from "./routes/chat.ts";
import { completionRoutes } from "./routes/completions.ts";
import { exportRoutes } from "./routes/export.ts";
import { observeRoutes } from "./routes/observe.ts";
import { pairRoutes } from "./routes/pairs.ts";
import { preferenceRoutes } from "./routes/preferences.ts";
import type { AppDeps, AppVariables, Limits, RouteContext } from "./routes/_context.ts";

export { pairJson } from "./routes/pairs.ts";
export type { AppDeps, Limits } from "./routes/_context.ts";

const DEFAULT_LIMITS: Limits = { bodyBytes: 256 * 1024, requestsPerMinute: 600, maxResponses: 8, maxNewTokens: 512 };

/** Store errors and the status each becomes. */
const STORE_ERRORS: [abstract new (...args: never[]) => Error, 404 | 409 | 413 | 422, string][] = [
  [ConflictError, 409, "conflict"],
  [NotFoundError, 404, "not_found"],
  [StoreLimitError, 413, "too_large"],
  [StoreInputError, 422, "invalid_request"],
];

/** The only requests a label key may make: method and path. */
export const LABEL_KEY_ROUTES: readonly [string, RegExp][] = [
  ["GET", /^\/v1\/dashboard$/],
  ["GET", /^\/v1\/pairs$/],
  ["GET", /^\/v1\/pairs\/[^/]+$/],
  ["POST", /^\/v1\/pairs\/[^/]+\/feedback$/],
];

/** The only route a signed request (no API key) may call. */
const SIGNED_ROUTE = /^\/v1\/pairs\/[^/]+\/feedback$/;

/** Builds the app. */
export function createApp(deps: AppDeps): Hono<{ Variables: AppVariables }> {
  const limits = { ...DEFAULT_LIMITS, ...deps.limits };
  const now = deps.now ?? Date.now;
  const metrics = deps.metrics ?? new Metrics();
  const { store, policy } = deps;
  const needPolicy = (): PolicyHolder => {
    if (policy) return policy;
    throw httpError(503, "no_policy", "this instance serves no policy (feedback-only): it cannot sample or chat");
  };
  const app = new Hono<{ Variables: AppVariables }>();

  app.onError((err, c) => {
    if (err instanceof HTTPException) return err.getResponse();
    const known = STORE_ERRORS.find(([cls]) => err instanceof cls);
    if (known) {
      return c.json(errorBody(known[2], err.message), known[1]);
    }
    console.error(`${c.req.method} ${c.req.path}: ${err instanceof Error ? err.stack : err}`);
    return c.json(errorBody("internal", "internal error"), 500);
  });
  app.notFound((c) => c.json(errorBody("not_found", `no route for ${c.req.method} ${c.req.path}`), 404));
  // Every request is counted here, errors included (onError and notFound answer inside `next`), under
  // the template of the route it matched, or "unmatched".
  app.use("*", async (c, next) => {
    await next();
    metrics.countRequest(routeTemplate(c.req.matchedRoutes), c.res.status);
  });

  // model_code: whether this process has loaded TF.js at all (a feedback-only instance never does).
  app.get(
    "/healthz",
    (c) => c.json({ ok: true, policy_version: policy?.version ?? null, model_code: "_tfengine" in globalThis }),
  );

  // The pages hold no data and need no key: their scripts call the API with a key of their own.
  const page = (p: StaticPage) => async () => new Response(p.html, { headers: await p.headers() });
  app.get("/", page(DASHBOARD_PAGE));
  app.get("/label", page(LABEL_PAGE));

  const limit = bodyLimit({
    maxSize: limits.bodyBytes,
    onError: (c) => c.json(errorBody("too_large", `the request body exceeds ${limits.bodyBytes} bytes`), 413),
  });
  const auth = requireApiKey({
    apiKeys: deps.apiKeys,
    labelKeys: deps.labelKeys,
    labelAllowed: (c) => LABEL_KEY_ROUTES.some(([method, path]) => c.req.method === method && path.test(c.req.path)),
  });
  const throttle = rateLimit({
    limit: limits.requestsPerMinute,
    windowMs: 60_000,
    exempt: deps.unlimitedKeys,
    now,
    // Taken from KV: however many instances serve this KV, a key gets one limit.
    take: (key, window, want, limit) => store.takeRateTokens(key, window, want, limit),
  });
  // The OpenAI-compatible routes answer every error, the middleware's below included, in OpenAI's shape.
  app.use("/v1/chat/*", openAiErrors);
  app.use("/v1/models", openAiErrors);
  // Signed verdicts from labelers' systems need no API key: the signature is the credential. Only on
  // the pair feedback route, and only for the pair the signed body names (checked in the route).
  app.use("/v1/*", limit, async (c, next) => {
    if (deps.webhookSecret && c.req.header("webhook-signature") && SIGNED_ROUTE.test(c.req.path)) {
      const body = await c.req.text();
      let verified: { id: string };
      try {
        verified = await verifyWebhook(deps.webhookSecret, c.req.raw.headers, body, { now: now() });
      } catch (err) {
        if (err instanceof WebhookVerificationError) throw httpError(401, "unauthorized", err.message);
        throw err;
      }
      c.set("webhookId", verified.id);
      // Each signer (the annotator its verdicts name) is rate-limited on its own.
      c.set("apiKey", `webhook:${annotatorOf(body)}`);
      return await next();
    }
    await auth(c, next);
  }, throttle);
  app.use("/metrics", auth);

  const ctx: RouteContext = { deps, store, policy, needPolicy, metrics, limits, now };
  app.route("/", pairRoutes(ctx));
  app.route("/", preferenceRoutes(ctx));
  app.route("/", chatRoutes({ store, policy, metrics, kept: deps.kept, limits, now }));
  app.route("/", completionRoutes(ctx));
  app.route("/", exportRoutes(ctx));
  app.route("/", observeRoutes(ctx));

  return app;
}

/** The template of the route a request matched (the last handler that is not middleware), or "unmatched". */
function routeTemplate(matched: readonly { method: string; path: string }[]): string {
  return matched.findLast((r) => r.method !== "ALL")?.path ?? "unmatched";
}

/** The annotator a signed body names (for its rate-limit bucket), or "-". */
function annotatorOf(body: string): string {
  try {
    const annotator = (JSON.parse(body) as { annotator?: unknown })?.annotator;
    return typeof annotator === "string" ? annotator.slice(0, 200) : "-";
  } catch {
    return "-";
  }
}
