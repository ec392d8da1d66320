/**
 * The Hono app: pairs, feedback, preferences, OpenAI-compatible chat, export, stats, metrics, and the
 * dashboard and labeling pages with their data route.
 * Stateless: everything lives in KV (the store) and the policy holder, so any number of instances
 * can serve the same KV. `createApp(deps)` builds it; `main.ts` serves it.
 */
import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { HTTPException } from "hono/http-exception";
import { z } from "zod";
import { type ChatMessage, MessageSchema as Message } from "../model/messages.ts";
import { verdictToken, verifyWebhook, WebhookVerificationError } from "../judge/webhook.ts";
import { ConflictError, NotFoundError, StoreInputError, StoreLimitError } from "../store/errors.ts";
import { hasEqualCandidates, type JudgeUsage, type PairStore } from "../store/pairs.ts";
import type { SignalResult } from "../store/completions.ts";
import { type Pair, PairStatusSchema } from "../store/schema.ts";
import { pickCandidates } from "../judge/candidates.ts";
import { DashboardQuerySchema, readDashboard } from "./dashboard.ts";
import { errorBody, httpError, jsonBody, parseOr422, rateLimit, requireApiKey, secretsEqual } from "./http.ts";
import { Metrics } from "./metrics.ts";
import { DASHBOARD_PAGE } from "./pages/dashboard.ts";
import { LABEL_PAGE } from "./pages/label.ts";
import type { StaticPage } from "./pages/_page.ts";
import type { PolicyHolder } from "./policy.ts";
import { sampleResponses } from "./_sample.ts";
import { fittingPromptText, preferenceInputs } from "./_ingest.ts";
import { chatRoutes, completionId, type KeptVersions, openAiErrors } from "./routes/chat.ts";

/** What the app is built from. */
export interface AppDeps {
  store: PairStore;
  /** The served policy; absent, the instance is feedback-only: the routes that need a policy answer 503. */
  policy?: PolicyHolder;
  /** Bearer keys accepted on every route except /healthz and the pages. */
  apiKeys: string[];
  /**
   * Bearer keys for the dashboard and labeling pages, accepted only on `LABEL_KEY_ROUTES` (reading the
   * dashboard and pairs, giving feedback); refused with 403 elsewhere.
   */
  labelKeys?: string[];
  /** API keys the per-key rate limit does not apply to: clients of the server's own (`start`'s feeder). */
  unlimitedKeys?: string[];
  /** Scores a response (a verifier judge): pairs are then best against worst instead of two at random. */
  score?: (prompt: string | ChatMessage[], completion: string) => Promise<number>;
  /** Standard Webhooks secret: feedback signed with it is accepted without an API key. */
  webhookSecret?: string;
  /** Kept policy versions servable by name on the OpenAI routes (`policy@vN`); default only the current one. */
  kept?: KeptVersions;
  /** Pending pairs stop accepting verdicts after this long (ms); default 7 days. */
  pendingTtlMs?: number;
  limits?: Partial<Limits>;
  metrics?: Metrics;
  now?: () => number;
}

interface Limits {
  bodyBytes: number;
  requestsPerMinute: number;
  maxResponses: number;
  maxNewTokens: number;
}

const DEFAULT_LIMITS: Limits = { bodyBytes: 256 * 1024, requestsPerMinute: 600, maxResponses: 8, maxNewTokens: 512 };

const Prompt = z.object({
  prompt: z.string().min(1).optional(),
  messages: z.array(Message).min(1).optional(),
});
const onePrompt = (v: { prompt?: unknown; messages?: unknown }) =>
  (v.prompt === undefined) !== (v.messages === undefined);

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

/** What middleware leaves for the routes: the key (or signer) of the request, and a signed request's `webhook-id`. */
type AppVariables = { apiKey: string; webhookId?: string };

/** The only route a signed request (no API key) may call. */
const SIGNED_ROUTE = /^\/v1\/pairs\/[^/]+\/feedback$/;
/** How long an accepted `webhook-id` is remembered: twice the signatures' 5-minute tolerance. */
const WEBHOOK_ID_TTL_MS = 10 * 60_000;

const Id = z.string().regex(/^[0-9A-HJKMNP-TV-Z]{26}$/, "not a pair id");

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
    // Counted in KV: however many instances serve this KV, a key gets one limit.
    count: (key, window) => store.countRequest(key, window),
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

  const PairRequest = Prompt.extend({
    n: z.number().int().min(2).max(limits.maxResponses).default(2),
    temperature: z.number().min(0).max(2).default(1),
    top_p: z.number().gt(0).max(1).default(1),
    max_new_tokens: z.number().int().min(1).max(limits.maxNewTokens).default(64),
    /** A client's own answers to judge, instead of samples of the policy. */
    responses: z.array(z.string().max(100_000)).min(2).max(limits.maxResponses).optional(),
    /** With `responses`: the label of the model that wrote them. */
    model: z.string().min(1).max(200).optional(),
  }).refine(onePrompt, "give exactly one of 'prompt' and 'messages'")
    .refine((b) => b.model === undefined || b.responses !== undefined, {
      message: "'model' labels a client's own 'responses'",
      path: ["model"],
    });

  app.post("/v1/pairs", async (c) => {
    const body = await jsonBody(c, PairRequest);
    const prompt = body.prompt ?? body.messages!;
    const idempotencyKey = c.req.header("idempotency-key");
    const score = deps.score;
    const field = body.prompt !== undefined ? "body.prompt" : "body.messages";
    const promptFields = body.prompt !== undefined ? { prompt: body.prompt } : { messages: body.messages! };
    const expiresAt = now() + (deps.pendingTtlMs ?? 7 * 24 * 3600_000);
    if (body.responses !== undefined) {
      // A client's own answers: judged like sampled ones; the same text twice is nothing to judge.
      const responses = body.responses;
      const candidates = pickCandidates(
        responses,
        score ? await Promise.all(responses.map((r) => score(prompt, r))) : undefined,
      );
      if (candidates === null) {
        throw httpError(422, "invalid_request", "body.responses: every response is the same text (blanks aside)");
      }
      const promptText = policy
        ? await policy.use((p) => Promise.resolve(fittingPromptText(p, prompt, field)))
        : body.prompt ?? ""; // no model here: the trainer renders the messages with its own template
      const { pair, created } = await store.create({
        ...promptFields,
        promptText,
        responses,
        policyVersion: policy?.version ?? 0,
        candidates,
        expiresAt,
        source: "client",
        ...(body.model === undefined ? {} : { producedBy: body.model }),
      }, { idempotencyKey });
      return c.json(pairJson(pair), created ? 201 : 200);
    }
    const { pair, created } = await needPolicy().use(async (p) => {
      const promptText = fittingPromptText(p, prompt, field);
      const generations = await sampleResponses(p, promptText, body.n, {
        temperature: body.temperature,
        topP: body.top_p,
        maxNewTokens: body.max_new_tokens,
      });
      metrics.countTokens(generations.reduce((a, g) => a + g.tokenIds.length, 0));
      const responses = generations.map((g) => g.text);
      const scores = score ? await Promise.all(responses.map((r) => score(prompt, r))) : undefined;
      return await store.create({
        ...promptFields,
        promptText,
        responses,
        policyVersion: p.version,
        // All n the same text: stored `identical` (counted, never judged); candidates [0, 1] name them.
        candidates: pickCandidates(responses, scores) ?? [0, 1],
        expiresAt,
      }, { idempotencyKey });
    });
    return c.json(pairJson(pair), created ? 201 : 200);
  });

  app.get("/v1/pairs/:id", async (c) => {
    const id = parseOr422(Id, c.req.param("id"), "id");
    const pair = await store.get(id);
    if (!pair) throw httpError(404, "not_found", `no pair '${id}'`);
    return c.json(pairJson(pair));
  });

  const ListQuery = z.object({
    status: PairStatusSchema.optional(),
    limit: z.coerce.number().int().min(1).max(100).default(20),
    cursor: z.string().max(1024).optional(),
  });
  app.get("/v1/pairs", async (c) => {
    const q = parseOr422(ListQuery, c.req.query(), "query");
    const page = await store.list(q).catch((err) => {
      if (err instanceof StoreInputError) throw httpError(422, "invalid_request", err.message);
      throw err;
    });
    // Never list a pair to judge whose a and b are the same text (stored before that was refused): repair it.
    const pairs = [];
    for (const listed of page.pairs) {
      const pair = hasEqualCandidates(listed) ? await store.repairCandidates(listed.id) : listed;
      if (pair !== null && (q.status === undefined || pair.status === q.status)) pairs.push(pair);
    }
    return c.json({ pairs: pairs.map(pairJson), cursor: page.cursor ?? null });
  });

  const Feedback = z.object({
    choice: z.enum(["a", "b", "tie"]),
    annotator: z.string().min(1).max(200).optional(),
    reason: z.string().max(4000).optional(),
    /** Required on a signed verdict: the pair id and token of the delivery it answers. */
    pair_id: z.string().max(64).optional(),
    token: z.string().max(64).optional(),
  });
  app.post("/v1/pairs/:id/feedback", async (c) => {
    const id = parseOr422(Id, c.req.param("id"), "id");
    const body = await jsonBody(c, Feedback);
    const webhookId = c.get("webhookId");
    if (webhookId !== undefined) {
      // Signed: the body must name this pair with its delivery's token, and each webhook-id counts once.
      const token = await verdictToken(deps.webhookSecret!, id);
      const bound = body.pair_id === id && body.token !== undefined && (await secretsEqual(body.token, token));
      if (!bound) {
        throw httpError(
          401,
          "unauthorized",
          `a signed verdict must carry 'pair_id' '${id}' (the pair in the URL) and the 'token' of its delivery`,
        );
      }
      if (!(await store.useWebhookId(webhookId, WEBHOOK_ID_TTL_MS))) {
        throw httpError(409, "replayed", `webhook-id '${webhookId.slice(0, 64)}' was already accepted`);
      }
    }
    const pair = await store.recordVerdict(id, {
      choice: body.choice,
      judge: { kind: webhookId !== undefined ? "webhook" : "human", id: body.annotator ?? "api" },
      annotator: body.annotator,
      reason: body.reason,
    });
    metrics.countVerdict(body.choice);
    return c.json(pairJson(pair));
  });

  app.get("/v1/dashboard", async (c) => {
    const query = parseOr422(DashboardQuerySchema, c.req.query(), "query");
    return c.json(await readDashboard({ store, servingVersion: policy?.version ?? null, now: now() }, query));
  });

  const Completion = z.union([z.string(), z.array(Message).min(1)]);
  const Preference = z.object({ prompt: Completion, chosen: Completion, rejected: Completion });
  const Preferences = z.union([Preference, z.array(Preference).min(1).max(100)]);
  // All or nothing: every item is checked first, then the list is stored in one commit (or refused).
  app.post("/v1/preferences", async (c) => {
    const body = await jsonBody(c, Preferences);
    const items = Array.isArray(body) ? body : [body];
    const where = (i: number) => Array.isArray(body) ? `body[${i}]` : "body";
    const inputs = policy
      ? await policy.use((p) => Promise.resolve(preferenceInputs(p, items, where)))
      : preferenceInputs(undefined, items, where);
    const results = await store.importLabeledMany(inputs, {
      idempotencyKey: c.req.header("idempotency-key") || undefined,
    });
    const pairs = results.map((r) => ({ id: r.pair.id, created: r.created }));
    return c.json({ pairs }, pairs.some((r) => r.created) ? 201 : 200);
  });

  app.route("/", chatRoutes({ store, policy, metrics, kept: deps.kept, limits, now }));

  // What a chat app learns from its users, on the answers it served (see src/store/completions.ts).
  const CompletionId = z.string().regex(/^chatcmpl-[0-9a-f]{32}(-[1-9])?$/, "not a completion id");
  const ResponseId = z.string().regex(/^chatcmpl-[0-9a-f]{32}$/, "not a chat completion response id");
  const Annotator = z.string().min(1).max(200).optional();
  const signalJson = (r: SignalResult) => ({ id: r.completion.id, pairs: r.pairs });
  app.post("/v1/completions/:id/feedback", async (c) => {
    const id = parseOr422(CompletionId, c.req.param("id"), "id");
    const body = await jsonBody(c, z.object({ label: z.boolean(), annotator: Annotator }));
    const result = await store.recordCompletionFeedback(id, body);
    return c.json({ ...signalJson(result), label: body.label });
  });
  app.post("/v1/completions/:id/edit", async (c) => {
    const id = parseOr422(CompletionId, c.req.param("id"), "id");
    const body = await jsonBody(c, z.object({ text: z.string().min(1).max(100_000), annotator: Annotator }));
    return c.json(signalJson(await store.recordCompletionEdit(id, body)), 201);
  });
  app.post("/v1/completions/:id/choice", async (c) => {
    const id = parseOr422(ResponseId, c.req.param("id"), "id");
    const body = await jsonBody(
      c,
      z.object({ index: z.number().int().min(0).max(limits.maxResponses - 1), annotator: Annotator }),
    );
    const ids = Array.from({ length: limits.maxResponses }, (_, i) => completionId(id, i));
    return c.json(signalJson(await store.recordChoice(ids, completionId(id, body.index), body.annotator)), 201);
  });

  const ExportQuery = z.object({ format: z.enum(["trl", "kto"]).default("trl") });
  app.get("/v1/export", (c) => {
    const { format } = parseOr422(ExportQuery, c.req.query(), "query");
    const encoder = new TextEncoder();
    const lines = format === "trl" ? exportTrl(store) : exportKto(store);
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        const next = await lines.next();
        if (next.done) controller.close();
        else controller.enqueue(encoder.encode(JSON.stringify(next.value) + "\n"));
      },
    });
    return new Response(body, { headers: { "content-type": "application/x-ndjson" } });
  });

  app.get("/v1/stats", async (c) => {
    const [pairs, feedback, judges, gate] = await Promise.all([
      store.counts(),
      store.feedbackCounts(),
      store.judgeUsage(),
      store.records.gates(1),
    ]);
    return c.json({
      policy_version: policy?.version ?? null,
      pairs,
      completion_feedback: feedback,
      judges: judgeStats(judges),
      gate: { promoted: gate.promoted, refused: gate.refused, last: gate.decisions[0] ?? null },
    });
  });

  app.get("/metrics", async (c) => {
    const [pairs, feedback, trainer, judges, gate] = await Promise.all([
      store.counts(),
      store.feedbackCounts(),
      store.records.status(),
      store.judgeUsage(),
      store.records.gates(0),
    ]);
    const state = {
      pairs,
      feedback,
      trainer,
      judges,
      gate: { promoted: gate.promoted, refused: gate.refused },
      policyVersion: policy?.version,
      decoding: policy?.decoding,
    };
    return c.text(metrics.render(state), 200, {
      "content-type": "text/plain; version=0.0.4",
    });
  });

  return app;
}

/** The judges' totals as `/v1/stats` shows them, with the mean latency of a verdict. */
function judgeStats(usage: Record<string, JudgeUsage>) {
  return Object.fromEntries(
    Object.entries(usage).map(([id, u]) => {
      const verdicts = u.calls - u.failures;
      return [id, { ...u, latency_ms_mean: verdicts > 0 ? Math.round(u.latency_ms / verdicts) : null }];
    }),
  );
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

/** A pair as the API shows it. */
export function pairJson(pair: Pair) {
  const [a, b] = pair.candidates;
  return {
    id: pair.id,
    status: pair.status,
    created_at: new Date(pair.createdAt).toISOString(),
    updated_at: new Date(pair.updatedAt).toISOString(),
    ...(pair.prompt !== undefined ? { prompt: pair.prompt } : { messages: pair.messages }),
    prompt_text: pair.promptText,
    responses: pair.responses,
    candidates: pair.candidates,
    a: pair.responses[a],
    b: pair.responses[b],
    policy_version: pair.policyVersion,
    chosen: pair.chosen === undefined ? null : pair.responses[pair.chosen],
    rejected: pair.rejected === undefined ? null : pair.responses[pair.rejected],
    verdict: pair.verdict ?? null,
    expires_at: pair.expiresAt === undefined ? null : new Date(pair.expiresAt).toISOString(),
    trained_into: pair.trainedInto ?? null,
    status_reason: pair.statusReason ?? null,
    source: pair.source,
    model: pair.producedBy ?? null,
  };
}

async function* exportTrl(store: PairStore): AsyncGenerator<Record<string, unknown>> {
  for (const status of ["labeled", "trained"] as const) {
    for await (const pair of store.iterate({ status })) {
      const chosen = pair.responses[pair.chosen!]!;
      const rejected = pair.responses[pair.rejected!]!;
      yield pair.messages
        ? {
          prompt: pair.messages,
          chosen: [{ role: "assistant", content: chosen }],
          rejected: [{ role: "assistant", content: rejected }],
        }
        : { prompt: pair.prompt, chosen, rejected };
    }
  }
}

async function* exportKto(store: PairStore): AsyncGenerator<Record<string, unknown>> {
  let cursor: string | undefined;
  do {
    const page = await store.listCompletionFeedback({ limit: 100, cursor });
    for (const c of page.completions) {
      const completion = c.messages ? [{ role: "assistant", content: c.text }] : c.text;
      yield { prompt: c.messages ?? c.prompt, completion, label: c.feedback!.label };
    }
    cursor = page.cursor;
  } while (cursor);
}
