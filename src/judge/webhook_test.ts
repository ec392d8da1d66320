import assert from "node:assert/strict";
import { startTestServer } from "./_test_server.ts";
import { JudgeError } from "./types.ts";
import {
  createWebhookJudge,
  generateWebhookSecret,
  signWebhook,
  timingSafeEqual,
  verdictToken,
  verifyWebhook,
  webhookMessageId,
  WebhookVerificationError,
} from "./webhook.ts";

// The Standard Webhooks reference libraries' test vector.
const VECTOR = {
  secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
  id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
  timestamp: 1614265330,
  body: '{"test": 2432232314}',
  signature: "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
};
const VECTOR_HEADERS = {
  "webhook-id": VECTOR.id,
  "webhook-timestamp": String(VECTOR.timestamp),
  "webhook-signature": VECTOR.signature,
};
const AT_VECTOR_TIME = { now: VECTOR.timestamp * 1000 };

Deno.test("signWebhook: matches the Standard Webhooks test vector", async () => {
  assert.equal(await signWebhook(VECTOR.secret, VECTOR.id, VECTOR.timestamp, VECTOR.body), VECTOR.signature);
  const bytes = new TextEncoder().encode(VECTOR.body);
  assert.equal(await signWebhook(VECTOR.secret, VECTOR.id, VECTOR.timestamp, bytes), VECTOR.signature);
  // A secret without the prefix is the same key.
  assert.equal(await signWebhook(VECTOR.secret.slice(6), VECTOR.id, VECTOR.timestamp, VECTOR.body), VECTOR.signature);
});

Deno.test("verifyWebhook: accepts the test vector and returns its id", async () => {
  assert.deepEqual(await verifyWebhook(VECTOR.secret, VECTOR_HEADERS, VECTOR.body, AT_VECTOR_TIME), {
    id: VECTOR.id,
    timestamp: VECTOR.timestamp,
  });
  // Header names are case-insensitive; Headers objects work too.
  const headers = new Headers({
    "Webhook-Id": VECTOR.id,
    "Webhook-Timestamp": "1614265330",
    "Webhook-Signature": VECTOR.signature,
  });
  await verifyWebhook(VECTOR.secret, headers, VECTOR.body, { now: new Date(VECTOR.timestamp * 1000 + 60_000) });
});

Deno.test("verifyWebhook: accepts one matching signature among several (secret rotation)", async () => {
  const signature = `v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v1a,abc ${VECTOR.signature} v2,zzz`;
  await verifyWebhook(
    VECTOR.secret,
    { ...VECTOR_HEADERS, "webhook-signature": signature },
    VECTOR.body,
    AT_VECTOR_TIME,
  );
});

Deno.test("verifyWebhook: rejects tampering, wrong secrets, stale timestamps and missing headers", async () => {
  const reject = (p: Promise<unknown>, pattern: RegExp) =>
    assert.rejects(p, (e: unknown) => e instanceof WebhookVerificationError && pattern.test(e.message));
  await reject(
    verifyWebhook(VECTOR.secret, VECTOR_HEADERS, '{"test": 2432232315}', AT_VECTOR_TIME),
    /no 'v1' signature/,
  );
  await reject(
    verifyWebhook(generateWebhookSecret(), VECTOR_HEADERS, VECTOR.body, AT_VECTOR_TIME),
    /no 'v1' signature/,
  );
  await reject(
    verifyWebhook(VECTOR.secret, { ...VECTOR_HEADERS, "webhook-id": "msg_other" }, VECTOR.body, AT_VECTOR_TIME),
    /no 'v1' signature/,
  );
  await reject(
    verifyWebhook(
      VECTOR.secret,
      { ...VECTOR_HEADERS, "webhook-signature": "v1,not base64!" },
      VECTOR.body,
      AT_VECTOR_TIME,
    ),
    /no 'v1' signature/,
  );
  const late = { now: (VECTOR.timestamp + 301) * 1000 };
  await reject(verifyWebhook(VECTOR.secret, VECTOR_HEADERS, VECTOR.body, late), /301 s old/);
  const early = { now: (VECTOR.timestamp - 301) * 1000 };
  await reject(verifyWebhook(VECTOR.secret, VECTOR_HEADERS, VECTOR.body, early), /in the future/);
  // Within tolerance at the edge, and a custom tolerance.
  await verifyWebhook(VECTOR.secret, VECTOR_HEADERS, VECTOR.body, { now: (VECTOR.timestamp + 300) * 1000 });
  await reject(
    verifyWebhook(VECTOR.secret, VECTOR_HEADERS, VECTOR.body, {
      now: (VECTOR.timestamp + 11) * 1000,
      toleranceSeconds: 10,
    }),
    /within 10 s/,
  );
  await reject(
    verifyWebhook(VECTOR.secret, { "webhook-id": VECTOR.id }, VECTOR.body, AT_VECTOR_TIME),
    /missing: webhook-timestamp, webhook-signature/,
  );
  await reject(
    verifyWebhook(VECTOR.secret, { ...VECTOR_HEADERS, "webhook-timestamp": "2021-02-26" }, VECTOR.body, AT_VECTOR_TIME),
    /Unix seconds/,
  );
});

Deno.test("webhook secrets: generated ones round-trip; bad ones are refused clearly", async () => {
  const secret = generateWebhookSecret();
  assert.match(secret, /^whsec_[A-Za-z0-9+/]{43}=$/);
  const signature = await signWebhook(secret, "msg_1", 1700000000, "{}");
  const headers = { "webhook-id": "msg_1", "webhook-timestamp": "1700000000", "webhook-signature": signature };
  await verifyWebhook(secret, headers, "{}", { now: 1700000000_000 });
  await assert.rejects(signWebhook("whsec_###", "m", 1, ""), /not base64/);
  await assert.rejects(signWebhook("whsec_c2hvcnQ=", "m", 1, ""), /24 to 64 bytes: current length is 5/);
  assert.ok(timingSafeEqual(new Uint8Array([1, 2]), new Uint8Array([1, 2])));
  assert.ok(!timingSafeEqual(new Uint8Array([1, 2]), new Uint8Array([1, 3])));
  assert.ok(!timingSafeEqual(new Uint8Array([1, 2]), new Uint8Array([1, 2, 3])));
});

Deno.test("webhook judge: posts a signed pair.created, retries a failed delivery, returns pending", async () => {
  const secret = generateWebhookSecret();
  const verified: string[] = [];
  await using server = startTestServer(async (req, index) => {
    const { id } = await verifyWebhook(secret, req.headers, req.body); // throws (500) on a bad signature
    verified.push(id);
    return index === 0 ? new Response("try later", { status: 503 }) : new Response(null, { status: 204 });
  });
  const judge = createWebhookJudge({
    url: `${server.url}/label`,
    secret,
    feedbackUrl: "https://dpo.example/v1/pairs/{id}/feedback",
    initialBackoffMs: 5,
  });
  const prompt = [{ role: "user", content: "Say hi" }];
  const result = await judge.judge({ prompt, a: "hi", b: "hello", pairId: "pair-42" });
  assert.equal(result, "pending");

  assert.equal(server.requests.length, 2);
  assert.deepEqual(verified, ["msg_pair-42", "msg_pair-42"]); // same message id on the retry
  const request = server.requests[1]!;
  assert.equal(request.method, "POST");
  assert.equal(request.path, "/label");
  assert.equal(request.headers.get("content-type"), "application/json");
  const body = JSON.parse(request.body);
  assert.equal(body.type, "pair.created");
  assert.ok(!Number.isNaN(Date.parse(body.timestamp)));
  assert.deepEqual(body.data, {
    id: "pair-42",
    token: await verdictToken(secret, "pair-42"),
    prompt,
    a: "hi",
    b: "hello",
    feedback_url: "https://dpo.example/v1/pairs/pair-42/feedback",
  });
  assert.deepEqual({ ...judge.counters, latencyMsSum: 0 }, {
    requests: 2,
    retries: 1,
    failures: 0,
    successes: 1,
    latencyMsSum: 0,
  });
});

Deno.test("webhook judge: a 4xx is a JudgeError at once; persistent 5xx after bounded retries", async () => {
  const secret = generateWebhookSecret();
  await using rejecting = startTestServer(() => new Response("bad signature", { status: 401 }));
  const judge = createWebhookJudge({
    url: rejecting.url,
    secret,
    feedbackUrl: (id) => `http://x/${id}`,
    initialBackoffMs: 5,
  });
  await assert.rejects(
    judge.judge({ prompt: "p", a: "x", b: "y", pairId: "p1" }),
    (e: unknown) => e instanceof JudgeError && e.code === "http" && e.status === 401,
  );
  assert.equal(rejecting.requests.length, 1);

  await using failing = startTestServer(() => new Response("down", { status: 500 }));
  const retrying = createWebhookJudge({
    url: failing.url,
    secret,
    feedbackUrl: "http://x",
    maxRetries: 2,
    initialBackoffMs: 5,
  });
  await assert.rejects(
    retrying.judge({ prompt: "p", a: "x", b: "y", pairId: "p1" }),
    (e: unknown) => e instanceof JudgeError && e.status === 500,
  );
  assert.equal(failing.requests.length, 3);
  assert.equal(retrying.counters.failures, 1);

  await assert.rejects(
    retrying.judge({ prompt: "p", a: "x", b: "y" }),
    (e: unknown) => e instanceof JudgeError && e.code === "invalid",
  );
});

Deno.test("webhook judge: ids that are not header-safe are hashed; bad options are refused", async () => {
  assert.equal(await webhookMessageId("abc_1-2"), "msg_abc_1-2");
  const hashed = await webhookMessageId("pair/ü 1");
  assert.match(hashed, /^msg_[A-Za-z0-9]{32}$/);
  assert.equal(await webhookMessageId("pair/ü 1"), hashed);
  assert.throws(
    () => createWebhookJudge({ url: "nope", secret: generateWebhookSecret(), feedbackUrl: "" }),
    /must be a URL/,
  );
  assert.throws(() => createWebhookJudge({ url: "http://x", secret: "whsec_", feedbackUrl: "" }), /24 to 64 bytes/);
});
