/**
 * The OpenAI-compatible routes: `POST /v1/chat/completions` and `GET /v1/models`, shaped so that the official
 * clients (the `openai` SDK, the Vercel `ai` SDK, `@huggingface/inference`) accept them as they are:
 *
 * - requests: fields may be `null` (the SDKs send them so), message content may be a list of text parts, the
 *   `developer` role is a system message, an assistant message may have `content: null`; `n` up to the
 *   server's limit, `stream_options.include_usage`, `logprobs`/`top_logprobs` (not with `stream`). What this
 *   server cannot do (`tools`, `response_format` other than text, penalties, `logit_bias`, audio) is a 400,
 *   never silently ignored.
 * - `model`: `policy` (or omitted) is the served version; `policy@vN` names a version, served when it is the
 *   current one or a kept one the server can load; anything else is a 404 `model_not_found`.
 * - responses carry `message.refusal: null` and `logprobs` (null unless asked), as OpenAI's do.
 * - this server's one extension, `replaces: "<completion id>"`, marks a request as the app's "try again" on
 *   an earlier answer to the same conversation: the earlier and the new answer become a pair for the judge.
 * - every error on these routes, the shared middleware's included (401, 413, 429), is in OpenAI's shape
 *   `{"error": {"message", "type", "param", "code"}}`, with 400 for an invalid request.
 */
import { Hono, type MiddlewareHandler } from "hono";
import { HTTPException } from "hono/http-exception";
import { type SSEStreamingApi, streamSSE } from "hono/streaming";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { z } from "zod";
import type { TokenLogprob } from "../../model/logprobs.ts";
import type { ChatMessage } from "../../model/io/messages.ts";
import type { PairStore } from "../../store/pairs.ts";
import { fitPrompt } from "../_ingest.ts";
import type { Metrics } from "../metrics.ts";
import type { PolicyHolder, PolicyLease, ServedPolicy } from "../policy.ts";
import { sampleResponses } from "../_sample.ts";
import type { KeptVersions } from "./_context.ts";

/** The model name of the served version. */
export const SERVED_MODEL = "policy";

/** What the routes are built from. */
export interface ChatRoutesDeps {
  store: PairStore;
  /** Absent on a feedback-only instance: both routes answer 503. */
  policy?: PolicyHolder;
  metrics: Metrics;
  /** Kept versions servable as `policy@vN`; without it only the current version is. */
  kept?: KeptVersions;
  limits: { maxNewTokens: number; maxResponses: number };
  now: () => number;
}

/** An error in OpenAI's shape. */
export function openAiError(
  status: ContentfulStatusCode,
  message: string,
  options: { type?: string; param?: string | null; code?: string | null; headers?: Record<string, string> } = {},
): HTTPException {
  const body = {
    error: {
      message,
      type: options.type ?? errorType(status),
      param: options.param ?? null,
      code: options.code ?? null,
    },
  };
  return new HTTPException(status, { res: Response.json(body, { status, headers: options.headers }) });
}

function errorType(status: number): string {
  if (status === 401) return "authentication_error";
  if (status === 403) return "permission_error";
  if (status === 404) return "not_found_error";
  if (status === 429) return "rate_limit_error";
  return status >= 500 ? "server_error" : "invalid_request_error";
}

/**
 * Rewrites the rest of the API's error body (`{error: {code, message}}`) into OpenAI's on the routes it
 * guards, with 422 becoming OpenAI's 400; other headers (Retry-After) are kept.
 */
export const openAiErrors: MiddlewareHandler = async (c, next) => {
  await next();
  const res = c.res;
  if (res.status < 400 || !res.headers.get("content-type")?.includes("application/json")) return;
  const body = await res.clone().json().catch(() => null) as { error?: Record<string, unknown> } | null;
  const error = body?.error;
  if (!error || "type" in error) return; // already OpenAI's
  const status = res.status === 422 ? 400 : res.status;
  const headers = new Headers(res.headers);
  headers.delete("content-length");
  const message = typeof error.message === "string" ? error.message : "request failed";
  const code = typeof error.code === "string" ? error.code : null;
  c.res = new Response(
    JSON.stringify({ error: { message, type: errorType(status), param: null, code } }),
    { status, headers },
  );
};

const TextPart = z.object({ type: z.literal("text"), text: z.string() });
const Content = z.union([z.string(), z.array(TextPart).min(1)]);
const RequestMessage = z.object({
  role: z.enum(["system", "developer", "user", "assistant"], {
    message: "expected system, developer, user or assistant (tool messages need tools, which are not supported)",
  }),
  content: z.union([Content, z.null()]).optional(),
  name: z.string().optional(),
}).refine((m) => m.role === "assistant" || (m.content !== undefined && m.content !== null), {
  message: "only an assistant message may have no content",
  path: ["content"],
});

// Accepted when they ask for nothing this server would have to do differently; refused otherwise.
const UNSUPPORTED: [string, (v: unknown) => boolean, string][] = [
  ["tools", (v) => Array.isArray(v) && v.length > 0, "tools (function calling) are not supported"],
  ["functions", (v) => Array.isArray(v) && v.length > 0, "functions are not supported"],
  ["tool_choice", (v) => v !== "none" && v !== "auto", "tool_choice needs tools, which are not supported"],
  ["function_call", (v) => v !== "none" && v !== "auto", "function_call is not supported"],
  [
    "response_format",
    (v) => (v as { type?: unknown })?.type !== "text",
    "only response_format {type: 'text'} is supported",
  ],
  ["audio", () => true, "audio output is not supported"],
  ["modalities", (v) => !(Array.isArray(v) && v.every((m) => m === "text")), "only the text modality is supported"],
  ["prediction", () => true, "predicted outputs are not supported"],
  ["web_search_options", () => true, "web search is not supported"],
  ["logit_bias", (v) => typeof v === "object" && Object.keys(v as object).length > 0, "logit_bias is not supported"],
  ["frequency_penalty", (v) => v !== 0, "frequency_penalty is not supported (only 0)"],
  ["presence_penalty", (v) => v !== 0, "presence_penalty is not supported (only 0)"],
];

function chatRequestSchema(limits: ChatRoutesDeps["limits"]) {
  const tokens = z.number().int().min(1).max(limits.maxNewTokens).nullish();
  return z.object({
    model: z.string().min(1).nullish(),
    messages: z.array(RequestMessage).min(1),
    temperature: z.number().min(0).max(2).nullish(),
    top_p: z.number().gt(0).max(1).nullish(),
    max_tokens: tokens,
    max_completion_tokens: tokens,
    stop: z.union([z.string(), z.array(z.string()).max(4)]).nullish(),
    seed: z.number().int().nullish(),
    n: z.number().int().min(1).max(limits.maxResponses).nullish(),
    stream: z.boolean().nullish(),
    stream_options: z.object({ include_usage: z.boolean().nullish() }).nullish(),
    logprobs: z.boolean().nullish(),
    top_logprobs: z.number().int().min(0).max(20).nullish(),
    user: z.string().nullish(),
    /** This server's extension: the completion this request regenerates (the app's "try again"). */
    replaces: z.string().regex(/^chatcmpl-[0-9a-f]{32}(-[1-9])?$/, "not a completion id").nullish(),
  });
}

/** OpenAI's spelling of a path: `messages[0].content`. */
function paramOf(path: PropertyKey[]): string {
  return path.map((p, i) => (typeof p === "number" ? `[${p}]` : `${i === 0 ? "" : "."}${String(p)}`)).join("");
}

/** A message as the chat template takes it: developer is system, text parts are joined, null content is "". */
function templateMessage(m: z.infer<typeof RequestMessage>): ChatMessage {
  const content = m.content === undefined || m.content === null
    ? ""
    : typeof m.content === "string"
    ? m.content
    : m.content.map((p) => p.text).join("\n");
  return { role: m.role === "developer" ? "system" : m.role, content };
}

/** OpenAI's `logprobs.content` entries for generated tokens. */
function logprobsJson(policy: ServedPolicy, tokens: TokenLogprob[], top: number) {
  const entry = (id: number, logprob: number) => {
    const token = policy.tokenizer.decode([id]);
    return { token, logprob, bytes: [...new TextEncoder().encode(token)] };
  };
  return {
    content: tokens.map((t) => ({
      ...entry(t.id, t.logprob),
      top_logprobs: t.top.slice(0, top).map((x) => entry(x.id, x.logprob)),
    })),
    refusal: null,
  };
}

/** Builds the routes; mount with `app.route("/", chatRoutes(deps))` after the API's auth middleware. */
export function chatRoutes(deps: ChatRoutesDeps): Hono {
  const { store, metrics, limits, now } = deps;
  const needPolicy = (): PolicyHolder => {
    if (deps.policy) return deps.policy;
    throw openAiError(503, "this instance serves no policy (feedback-only): it cannot chat", {
      type: "server_error",
      code: "no_policy",
    });
  };
  const ChatRequest = chatRequestSchema(limits);
  const routes = new Hono();
  // One extra version at a time is loaded for requests naming a kept version; the next one replaces it.
  let keptHolder: PolicyHolder | undefined;
  let loading: Promise<PolicyHolder> | undefined;

  async function keptVersions(): Promise<{ version: number; publishedAt: number }[]> {
    return deps.kept ? await deps.kept.list() : [];
  }

  /** A hold on the version `model` names; 404 in OpenAI's shape for one that cannot be served. */
  async function resolveModel(model: string | null | undefined): Promise<PolicyLease> {
    const policy = needPolicy();
    const served = policy.version;
    if (model === undefined || model === null || model === SERVED_MODEL || model === `${SERVED_MODEL}@v${served}`) {
      return policy.acquire();
    }
    const match = /^policy@v(\d+)$/.exec(model);
    const version = match ? Number(match[1]) : NaN;
    if (match && deps.kept && (await keptVersions()).some((k) => k.version === version)) {
      if (keptHolder?.version !== version) {
        loading ??= deps.kept.load(version).then(async (loaded) => {
          if (keptHolder) keptHolder.swap(loaded);
          else {
            // Loaded only here: an instance that serves no kept version never imports the decoding code.
            const { PolicyHolder: Holder } = await import("../policy.ts");
            keptHolder = new Holder(loaded);
          }
          return keptHolder;
        }).finally(() => loading = undefined);
        await loading;
      }
      if (keptHolder?.version === version) return keptHolder.acquire();
    }
    throw openAiError(
      404,
      `The model '${model}' does not exist: this server serves '${SERVED_MODEL}' (now policy@v${served})` +
        (deps.kept ? " and the kept versions GET /v1/models lists" : ""),
      { param: "model", code: "model_not_found" },
    );
  }

  routes.get("/v1/models", async (c) => {
    const served = needPolicy().version;
    const created = Math.floor(now() / 1000);
    const kept = (await keptVersions()).filter((k) => k.version !== served);
    return c.json({
      object: "list",
      data: [
        { id: SERVED_MODEL, object: "model", created, owned_by: `policy@v${served}` },
        { id: `${SERVED_MODEL}@v${served}`, object: "model", created, owned_by: "dpo-deno" },
        ...kept.map((k) => ({
          id: `${SERVED_MODEL}@v${k.version}`,
          object: "model",
          created: Math.floor(k.publishedAt / 1000),
          owned_by: "dpo-deno",
        })),
      ],
    });
  });

  routes.post("/v1/chat/completions", async (c) => {
    if (!/^application\/(.+\+)?json\b/i.test(c.req.header("content-type") ?? "")) {
      throw openAiError(400, "the request body must be JSON (Content-Type: application/json)");
    }
    let raw: Record<string, unknown>;
    try {
      raw = JSON.parse(await c.req.text());
    } catch (err) {
      throw openAiError(400, `the request body is not valid JSON (${(err as Error).message})`);
    }
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
      throw openAiError(400, "the request body must be a JSON object");
    }
    for (const [field, refused, why] of UNSUPPORTED) {
      const value = raw[field];
      if (value !== undefined && value !== null && refused(value)) throw openAiError(400, why, { param: field });
    }
    const parsed = ChatRequest.safeParse(raw);
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      const param = paramOf(issue.path);
      throw openAiError(400, `${param}: ${issue.message}`, { param });
    }
    const body = parsed.data;
    const stream = body.stream ?? false;
    const wantLogprobs = body.logprobs ?? false;
    if (body.top_logprobs !== undefined && body.top_logprobs !== null && !wantLogprobs) {
      throw openAiError(400, "top_logprobs needs logprobs: true", { param: "top_logprobs" });
    }
    if (wantLogprobs && stream) {
      throw openAiError(400, "logprobs are not supported with stream: true", { param: "logprobs" });
    }
    const messages = body.messages.map(templateMessage);
    const id = `chatcmpl-${crypto.randomUUID().replaceAll("-", "")}`;
    const created = Math.floor(now() / 1000);
    const n = body.n ?? 1;
    // A streamed response outlives this handler: the version is held until the stream ends.
    const lease = await resolveModel(body.model);
    let streaming = false;
    try {
      const p = lease.policy;
      const fit = fitPrompt(p, messages);
      if (fit.problem !== undefined) throw openAiError(400, `messages: ${fit.problem}`, { param: "messages" });
      const promptText = fit.promptText;
      const promptIds = p.tokenizer.encode(promptText);
      const model = body.model ?? SERVED_MODEL;
      const options = {
        temperature: body.temperature ?? 1,
        topP: body.top_p ?? 1,
        maxNewTokens: body.max_completion_tokens ?? body.max_tokens ?? 256,
        stop: typeof body.stop === "string" ? [body.stop] : body.stop ?? undefined,
        seed: body.seed ?? undefined,
      };
      const fingerprint = `policy-v${p.version}`;
      const usageOf = (completionTokens: number) => ({
        prompt_tokens: promptIds.length * n,
        completion_tokens: completionTokens,
        total_tokens: promptIds.length * n + completionTokens,
      });
      // A regeneration answers the same conversation again: checked before anything is generated.
      const replaced = body.replaces ? await store.getCompletion(body.replaces) : null;
      if (body.replaces && replaced?.promptText !== promptText) {
        throw openAiError(
          400,
          replaced === null
            ? `replaces: completion '${body.replaces}' does not exist or has expired`
            : `replaces: completion '${body.replaces}' answers another conversation`,
          { param: "replaces" },
        );
      }
      const record = async (texts: string[], tokens: number) => {
        metrics.countTokens(tokens);
        await Promise.all(texts.map((text, i) =>
          store.recordCompletion({
            id: completionId(id, i),
            messages,
            promptText,
            text,
            policyVersion: p.version,
          })
        ));
        // The user asked again: the replaced answer against the new one goes to the judge.
        if (replaced) {
          await store.create({
            messages,
            promptText,
            responses: [replaced.text, texts[0]!],
            policyVersion: Math.min(replaced.policyVersion, p.version),
          });
        }
      };
      if (!stream) {
        const generations = await sampleResponses(p, promptText, n, options);
        const tokens = generations.reduce((s, g) => s + g.tokenIds.length, 0);
        await record(generations.map((g) => g.text), tokens);
        const top = body.top_logprobs ?? 0;
        const { completionLogprobs } = wantLogprobs
          ? await import("../../model/logprobs.ts")
          : { completionLogprobs: null };
        const logprobs = completionLogprobs
          ? await Promise.all(generations.map((g) => completionLogprobs(p.model, promptIds, g.tokenIds, top)))
          : undefined;
        return c.json({
          id,
          object: "chat.completion",
          created,
          model,
          system_fingerprint: fingerprint,
          choices: generations.map((g, index) => ({
            index,
            message: { role: "assistant", content: g.text, refusal: null },
            logprobs: logprobs ? logprobsJson(p, logprobs[index]!, top) : null,
            finish_reason: g.finishReason,
          })),
          usage: usageOf(tokens),
        });
      }
      const includeUsage = body.stream_options?.include_usage ?? false;
      const send = async (sse: SSEStreamingApi) => {
        const chunk = (choices: unknown[], usage?: unknown) =>
          sse.writeSSE({
            data: JSON.stringify({
              id,
              object: "chat.completion.chunk",
              created,
              model,
              system_fingerprint: fingerprint,
              choices,
              ...(includeUsage ? { usage: usage ?? null } : {}),
            }),
          });
        const delta = (index: number, d: Record<string, unknown>, finishReason: string | null = null) => ({
          index,
          delta: d,
          logprobs: null,
          finish_reason: finishReason,
        });
        await chunk(Array.from({ length: n }, (_, i) => delta(i, { role: "assistant", content: "", refusal: null })));
        let pending = Promise.resolve();
        try {
          const generations = await sampleResponses(p, promptText, n, {
            ...options,
            onToken: (e) => {
              if (e.text) pending = pending.then(() => chunk([delta(e.index, { content: e.text })]));
            },
          });
          await pending;
          const tokens = generations.reduce((s, g) => s + g.tokenIds.length, 0);
          await record(generations.map((g) => g.text), tokens);
          await chunk(generations.map((g, i) => delta(i, {}, g.finishReason)));
          if (includeUsage) await chunk([], usageOf(tokens));
          await sse.writeSSE({ data: "[DONE]" });
        } catch (err) {
          // The 200 is sent: the failure goes down the stream in OpenAI's error shape, and no [DONE] follows.
          console.error(`POST /v1/chat/completions ${id} failed after streaming began: ${(err as Error).stack ?? err}`);
          await pending.catch(() => {}); // the text already queued goes first
          await sse.writeSSE({ data: JSON.stringify(STREAM_ERROR) });
        }
      };
      const response = streamSSE(c, (sse) => send(sse).finally(lease.release));
      streaming = true;
      return response;
    } finally {
      if (!streaming) lease.release();
    }
  });

  return routes;
}

/** The id under which choice `index` of a chat completion is kept for feedback: the response id for the first. */
export function completionId(responseId: string, index: number): string {
  return index === 0 ? responseId : `${responseId}-${index}`;
}

/** The event that ends a stream whose generation failed: OpenAI's error shape, no internals (as a 500). */
const STREAM_ERROR = {
  error: {
    message: "the server failed while generating this completion",
    type: "server_error",
    param: null,
    code: null,
  },
};
