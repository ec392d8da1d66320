/**
 * The prompt feeder of `start`: a client of the server like any other, it keeps asking
 * `POST /v1/pairs` for pairs so that the loop runs unattended, `concurrency` requests in flight, and
 * waits while enough pairs already wait for a judge or the trainer (so that a slow trainer, or a human
 * judge, is not buried under pairs sampled from an ever older policy).
 */
import type { Prompt } from "../judge/types.ts";
import type { ChatMessage } from "../model/io/tokenizer.ts";
import { pause } from "../util/time.ts";

/** Options of `runFeeder`. */
export interface FeederOptions {
  /** The server, `http://host:port`. */
  url: string;
  apiKey: string;
  /** The next prompt: text, or chat messages (sent as `messages`). */
  nextPrompt: () => Prompt;
  /** Responses sampled per prompt. */
  n: number;
  temperature: number;
  maxNewTokens: number;
  /** Requests in flight. */
  concurrency: number;
  /** Wait after each request, ms. */
  pauseMs: number;
  /** Stop asking while this many pairs await judgment or training. */
  maxBacklog: number;
  signal: AbortSignal;
  onPair?: (pair: { id: string; status: string }) => void;
  /** A failed request, at most once every 10 s for a repeated problem. */
  onError?: (message: string) => void;
}

const MAX_BACKOFF_MS = 30_000;
const BACKLOG_CHECK_MS = 1000;

/** Runs until `signal` aborts; requests in flight are aborted too. */
export async function runFeeder(o: FeederOptions): Promise<void> {
  const headers = { authorization: `Bearer ${o.apiKey}`, "content-type": "application/json" };
  const report = reporter(o.onError);
  // The backlog as last read from the server, plus the pairs made since: one read a second for every lane.
  let backlogRead: Promise<number> | undefined;
  let readAt = 0;
  let madeSince = 0;
  /** Takes room for one more pair, if there is any; counted at once, so that lanes in flight leave room for each other. */
  const reserve = async () => {
    if (!backlogRead || Date.now() - readAt > BACKLOG_CHECK_MS) {
      readAt = Date.now();
      madeSince = 0;
      backlogRead = backlog(o, headers);
    }
    const waiting = await backlogRead;
    if (waiting + madeSince >= o.maxBacklog) return false;
    madeSince++;
    return true;
  };
  const release = () => void (madeSince = Math.max(0, madeSince - 1)); // a request that made no pair
  const lane = async () => {
    let backoff = 250;
    while (!o.signal.aborted) {
      let reserved = false;
      try {
        if (!(reserved = await reserve())) {
          await pause(BACKLOG_CHECK_MS, o.signal);
          continue;
        }
        const res = await fetch(`${o.url}/v1/pairs`, {
          method: "POST",
          headers,
          body: JSON.stringify({
            ...promptField(o.nextPrompt()),
            n: o.n,
            temperature: o.temperature,
            max_new_tokens: o.maxNewTokens,
          }),
          signal: o.signal,
        });
        const body = await res.json().catch(() => null);
        if (res.status === 429) {
          release();
          const seconds = Number(res.headers.get("retry-after"));
          await pause(Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : 1000, o.signal);
          continue;
        }
        if (!res.ok) throw new Error(`POST /v1/pairs answered ${res.status}: ${body?.error?.message ?? "no message"}`);
        reserved = false;
        o.onPair?.({ id: String(body?.id), status: String(body?.status) });
        backoff = 250;
        if (o.pauseMs > 0) await pause(o.pauseMs, o.signal);
      } catch (err) {
        if (reserved) release();
        if (o.signal.aborted) return;
        report((err as Error).message);
        await pause(backoff, o.signal);
        backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
      }
    }
  };
  await Promise.all(Array.from({ length: o.concurrency }, lane));
}

/**
 * Pairs waiting for a judge or the trainer, from the server's stats: labeled pairs the trainer has trained
 * and holds for a later publish (after a gate refusal) are done work, not waiting.
 */
async function backlog(o: FeederOptions, headers: Record<string, string>): Promise<number> {
  const res = await fetch(`${o.url}/v1/stats`, { headers, signal: o.signal });
  const body = await res.json().catch(() => null);
  if (!res.ok) throw new Error(`GET /v1/stats answered ${res.status}: ${body?.error?.message ?? "no message"}`);
  return backlogOf(body);
}

/** The backlog in a `/v1/stats` answer: pairs awaiting judgment, and labeled pairs the trainer does not hold. */
// deno-lint-ignore no-explicit-any
export function backlogOf(stats: any): number {
  const labeled = Number(stats?.pairs?.labeled ?? 0) - Number(stats?.trainer?.held_pairs ?? 0);
  return Number(stats?.pairs?.awaiting_judgment ?? 0) + Math.max(0, labeled);
}

/** Passes a message on, but a repeat of the last one only every 10 s (with how many were held back). */
function reporter(onError: FeederOptions["onError"]): (message: string) => void {
  let last = "";
  let lastAt = 0;
  let held = 0;
  return (message) => {
    const now = Date.now();
    if (message === last && now - lastAt < 10_000) return void held++;
    onError?.(held > 0 ? `${message} (and ${held} more like it)` : message);
    last = message;
    lastAt = now;
    held = 0;
  };
}

/** `/v1/pairs` takes a conversation as `messages`. */
function promptField(prompt: Prompt): { prompt: string } | { messages: ChatMessage[] } {
  return typeof prompt === "string" ? { prompt } : { messages: prompt };
}
