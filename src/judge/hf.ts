/**
 * An LLM judge through `@huggingface/inference` (`InferenceClient.chatCompletion`): Hugging Face inference
 * providers by model id, or any OpenAI-compatible server by `endpointUrl` (TGI, vLLM, llama.cpp, this
 * project's own `/v1/chat/completions`). Every pair is asked in both orders to cancel position bias; the
 * client's own unbounded 503 retry is turned off and replaced by bounded backoff with jitter.
 */

import {
  InferenceClient,
  InferenceClientInputError,
  InferenceClientProviderApiError,
  InferenceClientProviderOutputError,
  InferenceClientRoutingError,
  type InferenceProviderOrPolicy,
} from "@huggingface/inference";
import {
  attemptSignal,
  backoffDelay,
  type BackoffOptions,
  isRetryableStatus,
  parseRetryAfter,
  resolveBackoff,
  sleep,
} from "./_retry.ts";
import { buildJudgeMessages, JUDGE_SYSTEM_PROMPT, parseVerdict } from "./judge_prompt.ts";
import {
  type Choice,
  type Judge,
  type JudgeCounters,
  JudgeError,
  type JudgeInput,
  type JudgeUsageReport,
  newCounters,
  type Prompt,
  type Verdict,
} from "./types.ts";

/** Options of `createHfJudge`. */
export interface HfJudgeOptions extends BackoffOptions {
  /** The judge's id in verdicts and metrics. Default `hf:<model or endpoint>`. */
  id?: string;
  /** Model id (`meta-llama/Llama-3.3-70B-Instruct`), or the served model's name at an endpoint. */
  model?: string;
  /** Base URL of an OpenAI-compatible server; `/v1/chat/completions` is appended unless present. */
  endpointUrl?: string;
  /** Inference provider or policy when `endpointUrl` is not set. Default: the client's auto-router. */
  provider?: InferenceProviderOrPolicy;
  /**
   * Access token. Default: `HF_TOKEN` from the environment, but only for Hugging Face hosts, so that a
   * Hugging Face token is never sent to a third-party endpoint unless given explicitly.
   */
  token?: string;
  /** Per-request timeout in milliseconds. Default 60,000. */
  timeoutMs?: number;
  /** `max_tokens` of each judging request. Default 512. */
  maxTokens?: number;
  /** Sampling temperature. Default 0; an unparseable answer is retried at 0.7 or more. */
  temperature?: number;
  /** Replaces `JUDGE_SYSTEM_PROMPT`; it must still ask for a final `Verdict: A|B|TIE` line. */
  systemPrompt?: string;
  /** The fetch to use (a proxy, a test double). Default: the global fetch. */
  fetch?: typeof fetch;
}

/** Counters of the LLM judge; `inconsistent` counts pairs whose two orders disagreed (position bias). */
export interface HfJudgeCounters extends JudgeCounters {
  inconsistent: number;
}

/** The LLM judge, with its counters for metrics. */
export interface HfJudge extends Judge {
  readonly kind: "hf";
  readonly counters: Readonly<HfJudgeCounters>;
  /**
   * Checks the endpoint with one tiny request (`max_tokens: 1`), before any pair is claimed: throws a
   * `JudgeError` when it refuses the token (401/403), has no such model or route (404), or cannot be
   * reached; resolves with a warning for a failure that may pass (429, 5xx, a timeout), else `null`.
   */
  probe(signal?: AbortSignal): Promise<string | null>;
}

const MAX_REASON_CHARS = 2000;

/** Creates an LLM judge; throws when neither `model` nor `endpointUrl` is given, or no token is found for the Hub. */
export function createHfJudge(options: HfJudgeOptions): HfJudge {
  const { model, endpointUrl, provider } = options;
  if (model === undefined && endpointUrl === undefined) {
    throw new TypeError("Cannot create the HF judge as it needs 'model' or 'endpointUrl': both are missing");
  }
  if (endpointUrl !== undefined && provider !== undefined) {
    throw new TypeError(
      `Cannot create the HF judge with both 'endpointUrl' and 'provider': current provider is '${provider}'`,
    );
  }
  const id = options.id ?? `hf:${model ?? endpointUrl}`;
  const backoff = resolveBackoff(options, `HF judge '${id}'`);
  const timeoutMs = options.timeoutMs ?? 60_000;
  const maxTokens = options.maxTokens ?? 512;
  const temperature = options.temperature ?? 0;
  const systemPrompt = options.systemPrompt ?? JUDGE_SYSTEM_PROMPT;
  const token = options.token ?? defaultToken(endpointUrl);
  if (token === undefined && endpointUrl === undefined) {
    throw new TypeError(
      `Cannot create HF judge '${id}' as Hugging Face inference needs a token: pass 'token' or set HF_TOKEN`,
    );
  }
  const client = new InferenceClient(token ?? "", endpointUrl === undefined ? {} : { endpointUrl });
  const baseFetch = options.fetch ?? fetch;
  const counters: HfJudgeCounters = { ...newCounters(), inconsistent: 0 };

  /** Asks once per attempt until a verdict is parsed; `first` is shown as Response A. */
  async function ask(
    prompt: Prompt,
    first: string,
    second: string,
    signal: AbortSignal,
    usage: JudgeUsageReport,
  ): Promise<Asked> {
    const messages = buildJudgeMessages(prompt, first, second, systemPrompt);
    let resample = false; // after an unparseable answer, sample rather than repeat the same greedy answer
    for (let retry = 0;; retry++) {
      const attempt = attemptSignal(timeoutMs, signal);
      let status: number | undefined;
      let retryAfterMs = 0;
      // Sees the HTTP response before the client does: the status and Retry-After survive its error
      // mapping, and an error body it would leave unread (HTML from a proxy) is drained.
      const observingFetch: typeof fetch = async (input, init) => {
        const response = await baseFetch(input, init);
        status = response.status;
        if (response.ok) return response;
        retryAfterMs = parseRetryAfter(response.headers.get("retry-after"));
        const body = await response.arrayBuffer();
        return new Response(body, {
          status: response.status,
          statusText: response.statusText,
          headers: response.headers,
        });
      };
      let failure: JudgeError;
      counters.requests++;
      usage.requests++;
      try {
        const output = await client.chatCompletion(
          {
            ...(model === undefined ? {} : { model }),
            ...(provider === undefined ? {} : { provider }),
            messages: messages.map((m) => ({ role: m.role, content: m.content })),
            max_tokens: maxTokens,
            temperature: resample ? Math.max(temperature, 0.7) : temperature,
          },
          { signal: attempt.signal, retry_on_error: false, fetch: observingFetch },
        );
        usage.promptTokens += tokenCount(output?.usage?.prompt_tokens);
        usage.completionTokens += tokenCount(output?.usage?.completion_tokens);
        const text = output?.choices?.[0]?.message?.content;
        const choice = typeof text === "string" ? parseVerdict(text) : undefined;
        if (choice !== undefined) return { choice, text: text! };
        failure = new JudgeError(
          `Cannot read a verdict from judge '${id}' as the answer has no final 'Verdict: A|B|TIE' line: ` +
            `current answer ends with ${JSON.stringify(typeof text === "string" ? text.slice(-200) : text)}`,
          { judgeId: id, code: "unparseable" },
        );
      } catch (err) {
        failure = classify(err, { status, timedOut: attempt.timedOut(), signal });
      } finally {
        attempt.dispose();
      }
      if (!isRetryable(failure) || retry >= backoff.maxRetries) throw failure;
      resample = failure.code === "unparseable";
      counters.retries++;
      try {
        await sleep(backoffDelay(backoff, retry, retryAfterMs), signal);
      } catch (reason) {
        throw aborted(reason);
      }
    }
  }

  function classify(
    err: unknown,
    context: { status: number | undefined; timedOut: boolean; signal: AbortSignal },
  ): JudgeError {
    if (context.signal.aborted) return aborted(context.signal.reason);
    const message = (err as Error)?.message ?? String(err);
    if (context.timedOut) {
      return new JudgeError(`Cannot get a verdict from judge '${id}' as the request timed out after ${timeoutMs} ms`, {
        judgeId: id,
        code: "timeout",
        cause: err,
      });
    }
    const status = err instanceof InferenceClientProviderApiError ? err.httpResponse.status : context.status;
    if (status !== undefined && !(status >= 200 && status < 300)) {
      return new JudgeError(
        `Cannot get a verdict from judge '${id}' as the server answered HTTP ${status}: ${message}`,
        {
          judgeId: id,
          code: "http",
          status,
          cause: err,
        },
      );
    }
    if (err instanceof InferenceClientInputError || err instanceof InferenceClientRoutingError) {
      return new JudgeError(`Cannot get a verdict from judge '${id}' as its configuration is invalid: ${message}`, {
        judgeId: id,
        code: "invalid",
        cause: err,
      });
    }
    if (err instanceof InferenceClientProviderOutputError || err instanceof SyntaxError) {
      return new JudgeError(`Cannot read a verdict from judge '${id}' as the answer is malformed: ${message}`, {
        judgeId: id,
        code: "unparseable",
        cause: err,
      });
    }
    return new JudgeError(`Cannot reach judge '${id}': ${message}`, { judgeId: id, code: "network", cause: err });
  }

  function aborted(reason: unknown): JudgeError {
    return new JudgeError(`Cannot get a verdict from judge '${id}' as the request was aborted`, {
      judgeId: id,
      code: "aborted",
      cause: reason,
    });
  }

  async function judgeBothOrders(input: JudgeInput, signal?: AbortSignal): Promise<Verdict> {
    const start = performance.now();
    // One failed order makes the verdict impossible: the other is cancelled rather than left running.
    const controller = new AbortController();
    const onAbort = () => controller.abort(signal!.reason);
    if (signal?.aborted) controller.abort(signal.reason);
    else signal?.addEventListener("abort", onAbort, { once: true });
    const cancelOnFailure = (p: Promise<Asked>) =>
      p.catch((err) => {
        controller.abort(err);
        throw err;
      });
    let results: PromiseSettledResult<Asked>[];
    const usage: JudgeUsageReport = { requests: 0, promptTokens: 0, completionTokens: 0 };
    try {
      results = await Promise.allSettled([
        cancelOnFailure(ask(input.prompt, input.a, input.b, controller.signal, usage)),
        cancelOnFailure(ask(input.prompt, input.b, input.a, controller.signal, usage)),
      ]);
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
    const [ab, ba] = results;
    if (ab!.status === "rejected" || ba!.status === "rejected") {
      const errors = results.flatMap((r) => (r.status === "rejected" ? [r.reason as JudgeError] : []));
      // The first cause, not the cancellation it caused in the other order.
      throw errors.find((e) => e.code !== "aborted") ?? errors[0]!;
    }
    const first = ab!.value.choice;
    const second = swap(ba!.value.choice);
    const consistent = first === second;
    if (!consistent) counters.inconsistent++;
    const summary = `order (a,b): ${first}; order (b,a): ${second}` +
      (consistent ? "" : "; inconsistent across orders, counted as a tie");
    return {
      choice: consistent ? first : "tie",
      reason: `${summary}\n\n${ab!.value.text.trim()}`.slice(0, MAX_REASON_CHARS),
      latencyMs: performance.now() - start,
      judgeId: id,
      agreed: consistent,
      usage,
    };
  }

  async function probe(signal?: AbortSignal): Promise<string | null> {
    const attempt = attemptSignal(timeoutMs, signal ?? new AbortController().signal);
    let status: number | undefined;
    const observingFetch: typeof fetch = async (input, init) => {
      const response = await baseFetch(input, init);
      status = response.status;
      return response;
    };
    try {
      await client.chatCompletion(
        {
          ...(model === undefined ? {} : { model }),
          ...(provider === undefined ? {} : { provider }),
          messages: [{ role: "user", content: "Reply with one word." }],
          max_tokens: 1,
        },
        { signal: attempt.signal, retry_on_error: false, fetch: observingFetch },
      );
      return null;
    } catch (err) {
      const failure = classify(err, { status, timedOut: attempt.timedOut(), signal: attempt.signal });
      if (failure.code === "timeout" || (failure.code === "http" && isRetryableStatus(failure.status ?? 0))) {
        return `judge '${id}' did not answer a first test request (${failure.message}); going on`;
      }
      const hint = failure.status === 401 || failure.status === 403
        ? " (give the endpoint's key with --judge-token or DPO_JUDGE_TOKEN)"
        : "";
      throw new JudgeError(`Cannot use judge '${id}': a first test request failed: ${failure.message}${hint}`, {
        judgeId: id,
        code: failure.code,
        ...(failure.status === undefined ? {} : { status: failure.status }),
        cause: failure,
      });
    } finally {
      attempt.dispose();
    }
  }

  return {
    id,
    kind: "hf",
    counters,
    probe,
    async judge(input: JudgeInput, signal?: AbortSignal): Promise<Verdict> {
      try {
        const verdict = await judgeBothOrders(input, signal);
        counters.successes++;
        counters.latencyMsSum += verdict.latencyMs;
        return verdict;
      } catch (err) {
        counters.failures++;
        throw err;
      }
    },
  };
}

interface Asked {
  /** The verdict as shown: "a" is the response shown first. */
  choice: Choice;
  text: string;
}

function isRetryable(error: JudgeError): boolean {
  switch (error.code) {
    case "timeout":
    case "network":
    case "unparseable":
      return true;
    case "http":
      return isRetryableStatus(error.status ?? 0);
    default:
      return false;
  }
}

/** A token count from an endpoint's `usage`, 0 where it reports none or nonsense. */
function tokenCount(n: unknown): number {
  return typeof n === "number" && Number.isFinite(n) && n >= 0 ? Math.round(n) : 0;
}

function swap(choice: Choice): Choice {
  return choice === "a" ? "b" : choice === "b" ? "a" : "tie";
}

const HF_HOSTS = /(^|\.)(huggingface\.co|hf\.co|hf\.space|huggingface\.cloud)$/;

function defaultToken(endpointUrl: string | undefined): string | undefined {
  if (endpointUrl !== undefined) {
    let host: string;
    try {
      host = new URL(endpointUrl).hostname;
    } catch {
      throw new TypeError(
        `Cannot create the HF judge as 'endpointUrl' must be a URL: current value is '${endpointUrl}'`,
      );
    }
    if (!HF_HOSTS.test(host)) return undefined;
  }
  try {
    return Deno.env.get("HF_TOKEN") || undefined;
  } catch {
    return undefined; // no --allow-env: behave as if unset
  }
}
