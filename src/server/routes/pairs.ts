/** The pair routes: create (sampled or a client's own answers), read, list, and verdicts (API key or signed). */
import { Hono } from "hono";
import { z } from "zod";
import { pickCandidates } from "../../judge/candidates.ts";
import { verdictToken } from "../../judge/webhook.ts";
import { hasEqualCandidates } from "../../store/pairs.ts";
import { type Pair, PairStatusSchema } from "../../store/schema.ts";
import { StoreInputError } from "../../store/errors.ts";
import { httpError, jsonBody, parseOr422, secretsEqual } from "../http.ts";
import { sampleResponses } from "../_sample.ts";
import { fittingPromptText } from "../_ingest.ts";
import { type AppVariables, Id, onePrompt, Prompt, type RouteContext, WEBHOOK_ID_TTL_MS } from "./_context.ts";

/** Builds the routes. */
export function pairRoutes(ctx: RouteContext): Hono<{ Variables: AppVariables }> {
  const { store, policy, needPolicy, metrics, limits, now, deps } = ctx;
  const routes = new Hono<{ Variables: AppVariables }>();
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

  routes.post("/v1/pairs", async (c) => {
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

  routes.get("/v1/pairs/:id", async (c) => {
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
  routes.get("/v1/pairs", async (c) => {
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
  routes.post("/v1/pairs/:id/feedback", async (c) => {
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

  return routes;
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
