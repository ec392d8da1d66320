/** What every route module is built from, and the request shapes several share. */
import { z } from "zod";
import { MessageSchema as Message } from "../../model/io/messages.ts";
import type { PairStore } from "../../store/pairs.ts";
import type { Metrics } from "../metrics.ts";
import type { PolicyHolder, PolicyVersion } from "../policy.ts";
import type { ChatMessage } from "../../model/io/messages.ts";

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

/** The request limits of an app. */
export interface Limits {
  bodyBytes: number;
  requestsPerMinute: number;
  maxResponses: number;
  maxNewTokens: number;
}

/** Kept policy versions the server can serve by name besides the current one. */
export interface KeptVersions {
  /** The versions kept, with when each was published (ms). */
  list(): Promise<{ version: number; publishedAt: number }[]>;
  /** Loads one for serving. */
  load(version: number): Promise<PolicyVersion>;
}

/** The app's dependencies and what `createApp` derived from them. */
export interface RouteContext {
  deps: AppDeps;
  store: PairStore;
  policy?: PolicyHolder;
  /** The policy, or a 503 on a feedback-only instance. */
  needPolicy: () => PolicyHolder;
  metrics: Metrics;
  limits: Limits;
  now: () => number;
}

/** What middleware leaves for the routes: the key (or signer) of the request, and a signed request's `webhook-id`. */
export type AppVariables = { apiKey: string; webhookId?: string };

/** A pair id in a path. */
export const Id = z.string().regex(/^[0-9A-HJKMNP-TV-Z]{26}$/, "not a pair id");

/** How long an accepted `webhook-id` is remembered: twice the signatures' 5-minute tolerance. */
export const WEBHOOK_ID_TTL_MS = 10 * 60_000;

/** A prompt: a string or chat messages (exactly one, see `onePrompt`). */
export const Prompt = z.object({
  prompt: z.string().min(1).optional(),
  messages: z.array(Message).min(1).optional(),
});

/** Whether exactly one of `prompt` and `messages` is given. */
export const onePrompt = (v: { prompt?: unknown; messages?: unknown }) =>
  (v.prompt === undefined) !== (v.messages === undefined);
