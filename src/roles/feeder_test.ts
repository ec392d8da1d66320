import assert from "node:assert/strict";
import { runFeeder } from "./feeder.ts";

/** A stand-in server: counts pair requests and reports every pair made as awaiting judgment. */
function fakeServer(options: { failFirst?: number; labeled?: number; held?: number } = {}) {
  const seen = { created: 0, inFlight: 0, maxInFlight: 0, bodies: [] as Record<string, unknown>[], auth: new Set() };
  let failures = options.failFirst ?? 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    seen.auth.add(req.headers.get("authorization"));
    if (new URL(req.url).pathname === "/v1/stats") {
      return Response.json({
        pairs: { awaiting_judgment: seen.created, labeled: options.labeled ?? 0 },
        trainer: options.held === undefined ? null : { held_pairs: options.held },
      });
    }
    if (failures-- > 0) return Response.json({ error: { code: "internal", message: "boom" } }, { status: 500 });
    seen.inFlight++;
    seen.maxInFlight = Math.max(seen.maxInFlight, seen.inFlight);
    seen.bodies.push(await req.json());
    await new Promise((r) => setTimeout(r, 10));
    seen.inFlight--;
    seen.created++;
    return Response.json({ id: `p${seen.created}`, status: "awaiting_judgment" }, { status: 201 });
  });
  return { seen, server, url: `http://127.0.0.1:${server.addr.port}` };
}

Deno.test("feeder: asks for pairs with its settings, a bounded number in flight, and waits at the backlog", async () => {
  const { seen, server, url } = fakeServer();
  const stop = new AbortController();
  const made: string[] = [];
  let prompt = 0;
  const feeding = runFeeder({
    url,
    apiKey: "feeder-key",
    // Every other prompt is a conversation, sent as `messages`.
    nextPrompt: () => prompt % 2 ? [{ role: "user", content: `prompt ${prompt++}` }] : `prompt ${prompt++}`,
    n: 4,
    temperature: 0.7,
    maxNewTokens: 6,
    concurrency: 2,
    pauseMs: 0,
    maxBacklog: 5,
    signal: stop.signal,
    onPair: (p) => made.push(p.id),
  });
  await new Promise((r) => setTimeout(r, 400));
  stop.abort();
  await feeding;
  await server.shutdown();
  assert.equal(seen.created, 5);
  assert.equal(made.length, 5);
  assert.equal(seen.maxInFlight, 2);
  assert.deepEqual([...seen.auth], ["Bearer feeder-key"]);
  const settings = { n: 4, temperature: 0.7, max_new_tokens: 6 };
  assert.deepEqual(seen.bodies.find((b) => b.prompt === "prompt 0"), { prompt: "prompt 0", ...settings });
  const conversation = [{ role: "user", content: "prompt 1" }];
  assert.deepEqual(seen.bodies.find((b) => b.messages), { messages: conversation, ...settings });
});

Deno.test("feeder: a failing server is reported, not repeated at every retry, and the feeder goes on", async () => {
  const { seen, server, url } = fakeServer({ failFirst: 2 });
  const stop = new AbortController();
  const errors: string[] = [];
  const feeding = runFeeder({
    url,
    apiKey: "feeder-key",
    nextPrompt: () => "p",
    n: 2,
    temperature: 1,
    maxNewTokens: 1,
    concurrency: 1,
    pauseMs: 0,
    maxBacklog: 2,
    signal: stop.signal,
    onError: (m) => errors.push(m),
  });
  await new Promise((r) => setTimeout(r, 1200));
  stop.abort();
  await feeding;
  await server.shutdown();
  assert.deepEqual(errors, ["POST /v1/pairs answered 500: boom"]);
  assert.equal(seen.created, 2);
});

Deno.test("feeder: pairs the trainer trained and holds (a refused candidate's) are not backlog; others are", async () => {
  const made = async (labeled: number, held?: number) => {
    const { seen, server, url } = fakeServer({ labeled, held });
    const stop = new AbortController();
    const feeding = runFeeder({
      url,
      apiKey: "feeder-key",
      nextPrompt: () => "1+1=",
      n: 2,
      temperature: 1,
      maxNewTokens: 4,
      concurrency: 2,
      pauseMs: 0,
      maxBacklog: 5,
      signal: stop.signal,
    });
    await new Promise((r) => setTimeout(r, 300));
    stop.abort();
    await feeding;
    await server.shutdown();
    return seen.created;
  };
  // Two refused rounds hold 128 labeled pairs: without this the feeder would wait for ever, and so would training.
  assert.equal(await made(128, 128), 5);
  assert.equal(await made(128), 0, "labeled pairs no trainer holds are backlog");
  assert.equal(await made(4, 2), 3, "2 labeled pairs wait for the trainer");
});
