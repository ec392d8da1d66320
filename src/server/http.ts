/** The HTTP edge shared by every route: one error shape, JSON body validation, auth, rate limits. */
import { createHash } from "node:crypto";
import type { Context, MiddlewareHandler } from "hono";
import { HTTPException } from "hono/http-exception";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import type { z } from "zod";
import { timingSafeEqual } from "../judge/webhook.ts";
import { LeasedAllowance } from "./_allowance.ts";

/** Every 4xx and 5xx body: `{ error: { code, message } }`. */
export function errorBody(code: string, message: string) {
  return { error: { code, message } };
}

/** A client error with a stable machine-readable code. */
export function httpError(
  status: ContentfulStatusCode,
  code: string,
  message: string,
  headers?: Record<string, string>,
): HTTPException {
  return new HTTPException(status, { res: Response.json(errorBody(code, message), { status, headers }) });
}

/** Reads and validates a JSON body: 415 without a JSON content type, 400 for bad JSON, 422 for a bad shape. */
export async function jsonBody<S extends z.ZodType>(c: Context, schema: S): Promise<z.infer<S>> {
  const type = c.req.header("content-type") ?? "";
  if (!/^application\/(.+\+)?json\b/i.test(type)) {
    throw httpError(415, "unsupported_media_type", "the request body must be JSON (Content-Type: application/json)");
  }
  let raw: unknown;
  try {
    raw = JSON.parse(await c.req.text());
  } catch (err) {
    throw httpError(400, "invalid_json", `the request body is not valid JSON (${(err as Error).message})`);
  }
  return parseOr422(schema, raw, "body");
}

/** Validates query parameters or path parts; problems are one 422. */
export function parseOr422<S extends z.ZodType>(schema: S, value: unknown, where: string): z.infer<S> {
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${[where, ...i.path].join(".")}: ${i.message}`).join("; ");
    throw httpError(422, "invalid_request", problems);
  }
  return parsed.data;
}

/** Compares two secrets in time that does not depend on where they differ. */
export function secretsEqual(a: string, b: string): Promise<boolean> {
  // Digests first, so that the comparison time does not reveal the key's length either.
  return Promise.resolve(timingSafeEqual(sha256(a), sha256(b)));
}

// node:crypto's hash, synchronous: about a tenth of the time of an awaited `crypto.subtle.digest` here.
function sha256(text: string): Uint8Array {
  return createHash("sha256").update(text).digest();
}

/** The fewest characters a bearer key may have, wherever it comes from: a shorter one is too easy to guess. */
export const MIN_KEY_LENGTH = 16;

/** Returns `keys`, or throws naming `source` (a variable, flag or file) when one is shorter than `MIN_KEY_LENGTH`. */
export function checkKeyLengths(keys: readonly string[], source: string): string[] {
  const short = keys.find((k) => k.length < MIN_KEY_LENGTH);
  if (short !== undefined) {
    throw new Error(
      `Cannot use ${source} as every key must have at least ${MIN_KEY_LENGTH} characters: one has ${short.length}`,
    );
  }
  return [...keys];
}

/** Options of `requireApiKey`. */
export interface ApiKeyOptions {
  /** Full keys: accepted on every route the middleware guards. */
  apiKeys: string[];
  /** Label keys (for the dashboard and labeling pages): accepted only where `labelAllowed` says so. */
  labelKeys?: string[];
  /** Whether a label key may make this request; a label key is refused with 403 where it may not. */
  labelAllowed?: (c: Context) => boolean;
}

/**
 * Bearer keys: 401 without a valid one, 403 for a label key outside the routes it may use. Sets
 * `apiKey` (the key itself, so the rate limiter counts per key). Every configured key is compared,
 * each in constant time, so the time taken does not say which kind of key matched. Throws when a
 * configured key is shorter than `MIN_KEY_LENGTH`.
 */
export function requireApiKey(options: ApiKeyOptions): MiddlewareHandler<{ Variables: { apiKey: string } }> {
  const keys = [
    ...checkKeyLengths(options.apiKeys, "the API keys").map((key) => ({ key, label: false })),
    ...checkKeyLengths(options.labelKeys ?? [], "the label keys").map((key) => ({ key, label: true })),
  ];
  // The configured keys' digests once; each request's key is digested once and compared with them all.
  const digests = keys.map((k) => ({ ...k, digest: sha256(k.key) }));
  return async (c, next) => {
    const header = c.req.header("authorization") ?? "";
    const match = /^Bearer\s+(\S+)$/i.exec(header);
    if (!match) throw httpError(401, "unauthorized", "an API key is required: Authorization: Bearer <key>");
    const given = sha256(match[1]!);
    let found: { key: string; label: boolean } | undefined;
    // A key listed as both kinds counts as a full key (full keys come first).
    for (const k of digests) if (timingSafeEqual(given, k.digest) && found === undefined) found = k;
    if (found === undefined) throw httpError(401, "unauthorized", "the API key is not valid");
    if (found.label && !options.labelAllowed?.(c)) {
      throw httpError(
        403,
        "forbidden",
        `a label key may only read the dashboard and pairs and give feedback: ${c.req.method} ${c.req.path} needs an API key`,
      );
    }
    c.set("apiKey", found.key);
    await next();
  };
}

/** Options of `rateLimit`. */
export interface RateLimitOptions {
  /** Requests per window per key. */
  limit: number;
  windowMs: number;
  /** Keys the limit does not apply to (an in-process client of the server's own, such as the feeder). */
  exempt?: string[];
  now?: () => number;
  /**
   * Takes up to `want` of `key`'s `limit` tokens of the window starting at `window` (ms) and resolves to how
   * many it got: shared by every instance (KV) so that they enforce one limit. Default: tokens of this process.
   */
  take?: (key: string, window: number, want: number, limit: number) => Promise<number>;
}

/**
 * A fixed-window request limit per API key (windows aligned to `windowMs`), drawn from where `take` takes
 * tokens: in KV, one limit for every instance, spent from leased blocks (`_allowance.ts`). 429 with
 * Retry-After when exceeded.
 */
export function rateLimit(options: RateLimitOptions): MiddlewareHandler<{ Variables: { apiKey: string } }> {
  const local = new Map<string, { window: number; taken: number }>();
  const take = options.take ?? ((key: string, window: number, want: number, limit: number) => {
    const w = local.get(key);
    const taken = w?.window === window ? w.taken : 0;
    const got = Math.max(0, Math.min(want, limit - taken));
    local.set(key, { window, taken: taken + got });
    return Promise.resolve(got);
  });
  const allowance = new LeasedAllowance({
    limit: options.limit,
    take: (key, window, want) => take(key, window, want, options.limit),
  });
  const now = options.now ?? Date.now;
  const exempt = new Set(options.exempt);
  return async (c, next) => {
    const key = c.get("apiKey") ?? "anonymous";
    if (exempt.has(key)) return await next();
    const t = now();
    const window = Math.floor(t / options.windowMs) * options.windowMs;
    const admitted = allowance.admit(key, window);
    if (!(admitted === true || (admitted !== false && await admitted))) {
      const retry = Math.max(Math.ceil((window + options.windowMs - t) / 1000), 1);
      throw httpError(429, "rate_limited", `more than ${options.limit} requests in ${options.windowMs / 1000} s`, {
        "Retry-After": String(retry),
      });
    }
    await next();
  };
}
