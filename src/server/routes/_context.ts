/** What every route module is built from, and the request shapes several share. */
import { z } from "zod";
import { MessageSchema as Message } from "../../model/messages.ts";
import type { PairStore } from "../../store/pairs.ts";
import type { AppDeps, Limits } from "../app.ts";
import type { Metrics } from "../metrics.ts";
import type { PolicyHolder } from "../policy.ts";

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
