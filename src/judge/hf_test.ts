import assert from "node:assert/strict";
import { createHfJudge, type HfJudgeOptions } from "./hf.ts";
import { buildJudgeMessages, parseVerdict } from "./judge_prompt.ts";
import { chatCompletionResponse, delay, type ReceivedRequest, startTestServer } from "./_test_server.ts";
import { JudgeError } from "./types.ts";

const PAIR = { prompt: "What is 2+2? Answer:", a: "4 GOOD", b: "5", pairId: "p1" };
const FAST = { initialBackoffMs: 5, maxBackoffMs: 20 } satisfies Partial<HfJudgeOptions>;

/** The response the judge showed as "Response A" in a request. */
function shownFirst(request: ReceivedRequest): string {
  const user = JSON.parse(request.body).messages[1].content as string;
  return user.split("[Response A]\n")[1]!.split("\n[End of response A]")[0]!;
}

/** A judge model that prefers the response containing "GOOD", wherever it is shown. */
function fairAnswer(request: ReceivedRequest): Response {
  const verdict = shownFirst(request).includes("GOOD") ? "A" : "B";
  return chatCompletionResponse(`Response ${verdict} is correct.\nVerdict: ${verdict}`);
}

async function rejectsWith(promise: Promise<unknown>, check: (e: JudgeError) => void): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof JudgeError, `expected a JudgeError, got ${err}`);
    check(err);
    return true;
  });
}

Deno.test("hf judge: a consistent verdict in both orders, over the OpenAI wire format", async () => {
  await using server = startTestServer((req) => fairAnswer(req));
  const judge = createHfJudge({ endpointUrl: server.url, model: "judge-model", token: "test-token", ...FAST });

  const verdict = await judge.judge(PAIR);
  assert.equal(verdict !== "pending" && verdict.choice, "a");
  const swapped = await judge.judge({ ...PAIR, a: PAIR.b, b: PAIR.a });
  assert.equal(swapped !== "pending" && swapped.choice, "b");
  if (verdict === "pending") throw new Error("unreachable");
  assert.equal(verdict.judgeId, "hf:judge-model");
  assert.ok(verdict.latencyMs >= 0);
  assert.match(verdict.reason!, /order \(a,b\): a; order \(b,a\): a/);
  assert.equal(verdict.agreed, true);

  assert.equal(server.requests.length, 4);
  const [first, second] = server.requests;
  for (const req of [first!, second!]) {
    assert.equal(req.method, "POST");
    assert.equal(req.path, "/v1/chat/completions");
    assert.equal(req.headers.get("authorization"), "Bearer test-token");
    const body = JSON.parse(req.body);
    assert.equal(body.model, "judge-model");
    assert.equal(body.temperature, 0);
    assert.deepEqual(body.messages.map((m: { role: string }) => m.role), ["system", "user"]);
    assert.match(body.messages[1].content, /What is 2\+2\? Answer:/);
  }
  assert.deepEqual(new Set([shownFirst(first!), shownFirst(second!)]), new Set([PAIR.a, PAIR.b]));
  assert.deepEqual(
    { ...judge.counters, latencyMsSum: 0 },
    { requests: 4, retries: 0, failures: 0, successes: 2, inconsistent: 0, latencyMsSum: 0 },
  );
});

Deno.test("hf judge: answers that disagree across orders are a tie", async () => {
  await using server = startTestServer(() => chatCompletionResponse("The first one is better.\nVerdict: A"));
  const judge = createHfJudge({ endpointUrl: `${server.url}/v1`, token: "t", ...FAST });
  const verdict = await judge.judge(PAIR);
  assert.ok(verdict !== "pending");
  assert.equal(verdict.choice, "tie");
  assert.match(verdict.reason!, /inconsistent/);
  assert.equal(verdict.agreed, false);
  assert.equal(judge.counters.inconsistent, 1);
  assert.equal(server.requests[0]!.path, "/v1/chat/completions");
});

Deno.test("hf judge: reads messy verdict formats from the server", async () => {
  const answers = [
    "Both are fine, but **Response A** is right.\n\n**Final Verdict:** [[A]].",
    "## Verdict: response b!",
  ];
  await using server = startTestServer((req) => {
    // Consistent: prefers GOOD, in a different format depending on the position.
    const good = shownFirst(req).includes("GOOD");
    return chatCompletionResponse(good ? answers[0]! : answers[1]!);
  });
  const judge = createHfJudge({ endpointUrl: server.url, token: "t", ...FAST });
  const verdict = await judge.judge(PAIR);
  assert.ok(verdict !== "pending");
  assert.equal(verdict.choice, "a");
});

Deno.test("parseVerdict: formats models actually write", () => {
  const cases: [string, string | undefined][] = [
    ["Verdict: A", "a"],
    ["verdict: b", "b"],
    ["VERDICT: TIE", "tie"],
    ["Verdict: Tie.", "tie"],
    ["Verdict: it's a tie", "tie"],
    ["**Verdict:** **B**", "b"],
    ["**Verdict: A**", "a"],
    ["### Verdict\nVerdict: `B`", "b"],
    ["Final verdict: [[B]]", "b"],
    ["[[A]]", "a"],
    ["[[C]]", "tie"],
    ["Verdict: Response A.", "a"],
    ["Verdict: Assistant B is better!", "b"],
    ['Verdict: "A"', "a"],
    ["Verdict - B", "b"],
    ["Reasoning...\nVerdict: A\nOn reflection, B is clearer.\nVerdict: B", "b"], // last verdict line wins
    ["A is longer, but B is correct.\n\nB", "b"], // a bare final line
    ["Both have merit.\n**Response A.**", "a"],
    ["<think>Verdict: A? no...</think>\nVerdict: B", "b"],
    ["<think>Verdict: A", undefined], // still thinking: no visible answer
    ["Response A is better.", undefined],
    ["My verdict will depend on accuracy.", undefined],
    ["", undefined],
    ["Verdict: Assistant", undefined],
  ];
  for (const [text, expected] of cases) assert.equal(parseVerdict(text), expected, JSON.stringify(text));
});

Deno.test("buildJudgeMessages: renders a conversation prompt and asks for the verdict line", () => {
  const messages = buildJudgeMessages(
    [{ role: "user", content: "Hi" }, { role: "assistant", content: "Hello" }],
    "x",
    "y",
  );
  assert.equal(messages.length, 2);
  assert.match(messages[0]!.content, /Verdict: A\nVerdict: B\nVerdict: TIE/);
  assert.match(messages[1]!.content, /User: Hi\n\nAssistant: Hello/);
  assert.match(messages[1]!.content, /\[Response A\]\nx\n\[End of response A\]\n\n\[Response B\]\ny\n/);
});

Deno.test("hf judge: 503 then success is retried (the client's own retry is off)", async () => {
  await using server = startTestServer((req, index) =>
    index === 0 ? Response.json({ error: "Model is loading" }, { status: 503 }) : fairAnswer(req)
  );
  const judge = createHfJudge({ endpointUrl: server.url, token: "t", ...FAST });
  const verdict = await judge.judge(PAIR);
  assert.ok(verdict !== "pending");
  assert.equal(verdict.choice, "a");
  assert.equal(server.requests.length, 3);
  assert.equal(judge.counters.retries, 1);
  assert.equal(judge.counters.requests, 3);
});

Deno.test("hf judge: 429 and non-JSON 502 bodies are retried too", async () => {
  await using server = startTestServer((req, index) => {
    if (index === 0) return new Response("slow down", { status: 429, headers: { "retry-after": "0" } });
    if (index === 1) {
      return new Response("<html>bad gateway</html>", { status: 502, headers: { "content-type": "text/html" } });
    }
    return fairAnswer(req);
  });
  const judge = createHfJudge({ endpointUrl: server.url, token: "t", ...FAST });
  const verdict = await judge.judge(PAIR);
  assert.ok(verdict !== "pending");
  assert.equal(verdict.choice, "a");
  assert.equal(judge.counters.retries, 2);
});

Deno.test("hf judge: a persistent 500 is a JudgeError after bounded retries", async () => {
  await using server = startTestServer(() => Response.json({ error: "boom" }, { status: 500 }));
  const judge = createHfJudge({ endpointUrl: server.url, token: "t", maxRetries: 2, ...FAST });
  await rejectsWith(judge.judge(PAIR), (e) => {
    assert.equal(e.code, "http");
    assert.equal(e.status, 500);
    assert.equal(e.judgeId, judge.id);
  });
  // Each order makes at most 1 + maxRetries attempts; the failing order cancels the other.
  assert.ok(server.requests.length >= 3 && server.requests.length <= 6, `${server.requests.length} requests`);
  assert.equal(judge.counters.failures, 1);
  assert.equal(judge.counters.successes, 0);
});

Deno.test("hf judge: a request that outlives the timeout is a JudgeError", async () => {
  await using server = startTestServer(async (req, _i, signal) => {
    await delay(5_000, signal);
    return fairAnswer(req);
  });
  const judge = createHfJudge({ endpointUrl: server.url, token: "t", timeoutMs: 100, maxRetries: 1, ...FAST });
  const start = performance.now();
  await rejectsWith(judge.judge(PAIR), (e) => assert.equal(e.code, "timeout"));
  assert.ok(performance.now() - start < 4_000);
  assert.ok(server.requests.length <= 4);
});

Deno.test("hf judge: 401 fails at once, without retries", async () => {
  await using server = startTestServer(() => Response.json({ error: "Invalid token" }, { status: 401 }));
  const judge = createHfJudge({ endpointUrl: server.url, token: "wrong", ...FAST });
  await rejectsWith(judge.judge(PAIR), (e) => {
    assert.equal(e.code, "http");
    assert.equal(e.status, 401);
  });
  assert.ok(server.requests.length <= 2); // one per order at most
  assert.equal(judge.counters.retries, 0);
});

Deno.test("hf judge: an unparseable answer is retried at a higher temperature, then a JudgeError", async () => {
  await using flaky = startTestServer((req) => {
    const body = JSON.parse(req.body);
    return body.temperature === 0 ? chatCompletionResponse("They are both nice.") : fairAnswer(req);
  });
  const recovering = createHfJudge({ endpointUrl: flaky.url, token: "t", ...FAST });
  const verdict = await recovering.judge(PAIR);
  assert.ok(verdict !== "pending");
  assert.equal(verdict.choice, "a");
  assert.equal(recovering.counters.retries, 2);

  await using stubborn = startTestServer(() => chatCompletionResponse("I cannot decide."));
  const judge = createHfJudge({ endpointUrl: stubborn.url, token: "t", maxRetries: 1, ...FAST });
  await rejectsWith(judge.judge(PAIR), (e) => assert.equal(e.code, "unparseable"));
  // Two attempts per order at most; the first order to give up cancels the other.
  assert.ok(stubborn.requests.length >= 2 && stubborn.requests.length <= 4);
});

Deno.test("hf judge: an unreachable server is a network JudgeError", async () => {
  const server = startTestServer(() => new Response());
  await server.close(); // a port that nothing listens on any more
  const judge = createHfJudge({ endpointUrl: server.url, token: "t", maxRetries: 1, ...FAST });
  await rejectsWith(judge.judge(PAIR), (e) => assert.equal(e.code, "network"));
  // Each order tries twice at most; the first order to fail cancels the other.
  assert.ok(judge.counters.requests >= 2 && judge.counters.requests <= 4);
});

Deno.test("hf judge: the caller's abort stops the judge", async () => {
  await using server = startTestServer(async (req, _i, signal) => {
    await delay(5_000, signal);
    return fairAnswer(req);
  });
  const judge = createHfJudge({ endpointUrl: server.url, token: "t", ...FAST });
  const controller = new AbortController();
  const pending = judge.judge(PAIR, controller.signal);
  setTimeout(() => controller.abort(), 50);
  await rejectsWith(pending, (e) => assert.equal(e.code, "aborted"));
  assert.equal(judge.counters.retries, 0);
});

Deno.test("hf judge: configuration errors are reported at creation", () => {
  assert.throws(() => createHfJudge({}), /needs 'model' or 'endpointUrl'/);
  assert.throws(() => createHfJudge({ endpointUrl: "not a url" }), /must be a URL/);
  assert.throws(() => createHfJudge({ endpointUrl: "http://127.0.0.1:1", maxRetries: -1 }), /'maxRetries' must be/);
  assert.throws(
    () => createHfJudge({ endpointUrl: "http://127.0.0.1:1", provider: "together" }),
    /both 'endpointUrl' and 'provider'/,
  );
});
