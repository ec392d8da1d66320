/**
 * A human judge: each pair is POSTed to the labelers' URL as a Standard Webhooks message
 * (https://www.standardwebhooks.com), and the verdict comes back later through the feedback endpoint, so
 * `judge` resolves with "pending". Signing and verification live here too: the server verifies signed
 * verdicts with the same `verifyWebhook`.
 */

import {
  attemptSignal,
  backoffDelay,
  type BackoffOptions,
  isRetryableStatus,
  parseRetryAfter,
  resolveBackoff,
  sleep,
} from "./_retry.ts";
import { type Judge, type JudgeCounters, JudgeError, type JudgeInput, newCounters } from "./types.ts";

/** The message type of a pair sent for labeling. */
export const PAIR_CREATED = "pair.created";

/** Options of `createWebhookJudge`. */
export interface WebhookJudgeOptions extends BackoffOptions {
  /** The labelers' URL that receives `pair.created` messages. */
  url: string;
  /** The signing secret: `whsec_` + base64 of 24 to 64 random bytes (see `generateWebhookSecret`). */
  secret: string;
  /**
   * Where the labelers send the verdict: a URL with an optional `{id}` placeholder for the pair id, or a
   * function of the pair id.
   */
  feedbackUrl: string | ((pairId: string) => string);
  /** The judge's id in metrics. Default "webhook". */
  id?: string;
  /** Per-delivery timeout in milliseconds. Default 10,000. */
  timeoutMs?: number;
  /** The fetch to use. Default: the global fetch. */
  fetch?: typeof fetch;
}

/** The human judge, with its delivery counters for metrics. */
export interface WebhookJudge extends Judge {
  readonly kind: "webhook";
  readonly counters: Readonly<JudgeCounters>;
}

/** Creates the human judge: delivers each pair with retries, then answers "pending". */
export function createWebhookJudge(options: WebhookJudgeOptions): WebhookJudge {
  const id = options.id ?? "webhook";
  const backoff = resolveBackoff(options, `webhook judge '${id}'`);
  const timeoutMs = options.timeoutMs ?? 10_000;
  const doFetch = options.fetch ?? fetch;
  decodeSecret(options.secret); // fail at startup, not at the first pair
  try {
    new URL(options.url);
  } catch {
    throw new TypeError(
      `Cannot create webhook judge '${id}' as 'url' must be a URL: current value is '${options.url}'`,
    );
  }
  const feedbackUrl = typeof options.feedbackUrl === "function"
    ? options.feedbackUrl
    : (pairId: string) => (options.feedbackUrl as string).replaceAll("{id}", encodeURIComponent(pairId));
  const counters = newCounters();

  function fail(
    message: string,
    code: JudgeError["code"],
    extra: { status?: number; cause?: unknown } = {},
  ): JudgeError {
    return new JudgeError(message, { judgeId: id, code, ...extra });
  }

  async function deliver(input: JudgeInput, signal?: AbortSignal): Promise<void> {
    const pairId = input.pairId;
    if (pairId === undefined || pairId === "") {
      throw fail(`Cannot send a pair to webhook judge '${id}' as it has no 'pairId' to answer to`, "invalid");
    }
    const body = JSON.stringify({
      type: PAIR_CREATED,
      timestamp: new Date().toISOString(),
      data: {
        id: pairId,
        // The verdict must quote it with the id: a signed verdict then names the pair it is about.
        token: await verdictToken(options.secret, pairId),
        prompt: input.prompt,
        a: input.a,
        b: input.b,
        feedback_url: feedbackUrl(pairId),
      },
    });
    // The same message id on every attempt (and for the same pair later), so receivers can deduplicate.
    const messageId = await webhookMessageId(pairId);
    for (let retry = 0;; retry++) {
      if (signal?.aborted) throw fail(`Cannot deliver pair '${pairId}' as the request was aborted`, "aborted");
      // A fresh timestamp per attempt keeps late retries inside the receiver's tolerance window.
      const timestamp = Math.floor(Date.now() / 1000);
      const signature = await signWebhook(options.secret, messageId, timestamp, body);
      const attempt = attemptSignal(timeoutMs, signal);
      let failure: JudgeError;
      let retryAfterMs = 0;
      counters.requests++;
      try {
        const response = await doFetch(options.url, {
          method: "POST",
          headers: {
            "content-type": "application/json",
            "webhook-id": messageId,
            "webhook-timestamp": String(timestamp),
            "webhook-signature": signature,
          },
          body,
          signal: attempt.signal,
        });
        await response.body?.cancel(); // the answer's content is not used; release the connection
        if (response.ok) return;
        retryAfterMs = parseRetryAfter(response.headers.get("retry-after"));
        failure = fail(
          `Cannot deliver pair '${pairId}' to webhook judge '${id}' as ${options.url} answered HTTP ${response.status}`,
          "http",
          { status: response.status },
        );
      } catch (err) {
        if (signal?.aborted) {
          throw fail(`Cannot deliver pair '${pairId}' as the request was aborted`, "aborted", { cause: err });
        }
        failure = attempt.timedOut()
          ? fail(`Cannot deliver pair '${pairId}' as ${options.url} did not answer in ${timeoutMs} ms`, "timeout", {
            cause: err,
          })
          : fail(`Cannot deliver pair '${pairId}' to ${options.url}: ${(err as Error)?.message ?? err}`, "network", {
            cause: err,
          });
      } finally {
        attempt.dispose();
      }
      const retryable = failure.code !== "http" || isRetryableStatus(failure.status ?? 0);
      if (!retryable || retry >= backoff.maxRetries) throw failure;
      counters.retries++;
      try {
        await sleep(backoffDelay(backoff, retry, retryAfterMs), signal);
      } catch (reason) {
        throw fail(`Cannot deliver pair '${pairId}' as the request was aborted`, "aborted", { cause: reason });
      }
    }
  }

  return {
    id,
    kind: "webhook",
    counters,
    async judge(input: JudgeInput, signal?: AbortSignal): Promise<"pending"> {
      const start = performance.now();
      try {
        await deliver(input, signal);
      } catch (err) {
        counters.failures++;
        throw err;
      }
      counters.successes++;
      counters.latencyMsSum += performance.now() - start;
      return "pending";
    },
  };
}

/**
 * The token a delivery of `pairId` carries and its signed verdict must quote back: base64url of
 * HMAC-SHA256(key, `verdict.${pairId}`), 32 characters. Only holders of the secret can make one, and it
 * names one pair, so a signed verdict captured for one pair is refused on any other.
 */
export async function verdictToken(secret: string, pairId: string): Promise<string> {
  const raw = decodeSecret(secret) as Uint8Array<ArrayBuffer>;
  const key = await crypto.subtle.importKey("raw", raw, { name: "HMAC", hash: "SHA-256" }, false, [
    "sign",
  ]);
  const mac = new Uint8Array(await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(`verdict.${pairId}`)));
  return encodeBase64(mac).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "").slice(0, 32);
}

/** A new signing secret: `whsec_` + base64 of 32 random bytes. */
export function generateWebhookSecret(): string {
  return `whsec_${encodeBase64(crypto.getRandomValues(new Uint8Array(32)))}`;
}

/** The `webhook-id` of a pair's message: `msg_<pairId>` when that is header-safe, else a hash of it. */
export async function webhookMessageId(pairId: string): Promise<string> {
  if (/^[A-Za-z0-9_-]{1,200}$/.test(pairId)) return `msg_${pairId}`;
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(pairId)));
  return `msg_${encodeBase64(digest).replace(/[+/=]/g, "").slice(0, 32)}`;
}

/**
 * Signs a message the Standard Webhooks way: `v1,` + base64(HMAC-SHA256(key, `${id}.${timestamp}.${body}`)),
 * `timestamp` in Unix seconds, `body` the exact bytes sent.
 */
export async function signWebhook(
  secret: string,
  id: string,
  timestamp: number,
  body: string | Uint8Array,
): Promise<string> {
  const mac = await hmac(decodeSecret(secret), id, timestamp, body);
  return `v1,${encodeBase64(mac)}`;
}

/** Options of `verifyWebhook`. */
export interface VerifyWebhookOptions {
  /** The current time, as a Date or milliseconds since the epoch. Default: now. */
  now?: Date | number;
  /** How far the message's timestamp may be from now, in seconds. Default 300. */
  toleranceSeconds?: number;
}

/** Thrown by `verifyWebhook`; the server answers it with 401. */
export class WebhookVerificationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WebhookVerificationError";
  }
}

/**
 * Verifies a Standard Webhooks message: the three headers are present, the timestamp is within the tolerance,
 * and one of the space-separated `v1,` signatures matches (compared in constant time). Returns the message id
 * (for deduplication) and timestamp; throws `WebhookVerificationError` otherwise.
 */
export async function verifyWebhook(
  secret: string,
  headers: Headers | Record<string, string>,
  body: string | Uint8Array,
  options: VerifyWebhookOptions = {},
): Promise<{ id: string; timestamp: number }> {
  const h = headers instanceof Headers ? headers : new Headers(headers);
  const id = h.get("webhook-id");
  const timestampHeader = h.get("webhook-timestamp");
  const signatureHeader = h.get("webhook-signature");
  if (!id || !timestampHeader || !signatureHeader) {
    const missing = [["webhook-id", id], ["webhook-timestamp", timestampHeader], ["webhook-signature", signatureHeader]]
      .filter(([, v]) => !v).map(([k]) => k);
    throw new WebhookVerificationError(`Cannot verify webhook as headers are missing: ${missing.join(", ")}`);
  }
  if (!/^\d{1,12}$/.test(timestampHeader)) {
    throw new WebhookVerificationError(
      `Cannot verify webhook as 'webhook-timestamp' must be Unix seconds: current value is '${
        timestampHeader.slice(0, 40)
      }'`,
    );
  }
  const timestamp = Number(timestampHeader);
  const nowMs = options.now === undefined
    ? Date.now()
    : options.now instanceof Date
    ? options.now.getTime()
    : options.now;
  const tolerance = options.toleranceSeconds ?? 300;
  const skew = Math.floor(nowMs / 1000) - timestamp;
  if (Math.abs(skew) > tolerance) {
    throw new WebhookVerificationError(
      `Cannot verify webhook as its timestamp must be within ${tolerance} s of now: current value is ${
        skew > 0 ? `${skew} s old` : `${-skew} s in the future`
      }`,
    );
  }
  const expected = await hmac(decodeSecret(secret), id, timestamp, body);
  let matched = false;
  for (const entry of signatureHeader.split(" ")) {
    const [version, value] = entry.split(",", 2);
    if (version !== "v1" || value === undefined) continue; // other schemes (v1a) are not ours to check
    const candidate = tryDecodeBase64(value);
    // Every candidate is compared, and each comparison is constant-time, so timing reveals nothing.
    if (candidate !== undefined && timingSafeEqual(candidate, expected)) matched = true;
  }
  if (!matched) throw new WebhookVerificationError("Cannot verify webhook as no 'v1' signature matches the body");
  return { id, timestamp };
}

/** Compares two byte arrays in time that depends only on their lengths. */
export function timingSafeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

function decodeSecret(secret: string): Uint8Array {
  const base64 = secret.startsWith("whsec_") ? secret.slice("whsec_".length) : secret;
  const key = tryDecodeBase64(base64);
  if (key === undefined) {
    throw new TypeError(
      "Cannot use webhook secret as it must be 'whsec_' followed by base64: current value is not base64",
    );
  }
  if (key.length < 24 || key.length > 64) {
    throw new TypeError(
      `Cannot use webhook secret as it must decode to 24 to 64 bytes: current length is ${key.length} bytes`,
    );
  }
  return key;
}

async function hmac(key: Uint8Array, id: string, timestamp: number, body: string | Uint8Array): Promise<Uint8Array> {
  const encoder = new TextEncoder();
  const bodyBytes = typeof body === "string" ? encoder.encode(body) : body;
  const prefix = encoder.encode(`${id}.${timestamp}.`);
  const content = new Uint8Array(prefix.length + bodyBytes.length);
  content.set(prefix);
  content.set(bodyBytes, prefix.length);
  const cryptoKey = await crypto.subtle.importKey(
    "raw",
    key as Uint8Array<ArrayBuffer>,
    { name: "HMAC", hash: "SHA-256" },
    false,
    [
      "sign",
    ],
  );
  return new Uint8Array(await crypto.subtle.sign("HMAC", cryptoKey, content));
}

function encodeBase64(bytes: Uint8Array): string {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}

function tryDecodeBase64(text: string): Uint8Array | undefined {
  try {
    return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  } catch {
    return undefined;
  }
}
