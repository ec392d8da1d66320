/** A real HTTP server on loopback for the judges' tests; `await using` shuts it down. */

/** One request the server received. */
export interface ReceivedRequest {
  method: string;
  path: string;
  headers: Headers;
  body: string;
}

/** A running test server. */
export interface TestServer extends AsyncDisposable {
  /** Base URL, e.g. `http://127.0.0.1:40123`. */
  url: string;
  requests: ReceivedRequest[];
  close(): Promise<void>;
}

/**
 * Serves `handle` on 127.0.0.1 with an OS-chosen port; `handle` sees each request, its 0-based index, and a
 * signal aborted when the server closes (a slow handler must end then, or shutdown waits for it: a client that
 * gave up is not reliably noticed by the server).
 */
export function startTestServer(
  handle: (request: ReceivedRequest, index: number, signal: AbortSignal) => Response | Promise<Response>,
): TestServer {
  const requests: ReceivedRequest[] = [];
  const closing = new AbortController();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const received: ReceivedRequest = {
      method: req.method,
      path: new URL(req.url).pathname,
      headers: req.headers,
      body: await req.text(),
    };
    requests.push(received);
    return await handle(received, requests.length - 1, closing.signal);
  });
  const close = () => {
    closing.abort();
    return server.shutdown();
  };
  return { url: `http://127.0.0.1:${server.addr.port}`, requests, close, [Symbol.asyncDispose]: close };
}

/** An OpenAI chat-completions response whose assistant message is `content`. */
export function chatCompletionResponse(content: string): Response {
  return Response.json({
    id: `chatcmpl-${crypto.randomUUID()}`,
    object: "chat.completion",
    created: Math.floor(Date.now() / 1000),
    model: "test-judge",
    choices: [{ index: 0, message: { role: "assistant", content }, finish_reason: "stop" }],
    usage: { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 },
  });
}

/** Resolves after `ms`, or as soon as `signal` aborts, leaving no timer behind. */
export function delay(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}
