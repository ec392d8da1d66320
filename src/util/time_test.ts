import assert from "node:assert/strict";
import { yieldToEventLoop } from "./time.ts";

const CHUNKS = 100;

/**
 * A server streams 100 chunks, each after 1 ms of synchronous work and a yield; a client in the same process
 * reads them. Answers how many chunks the server had produced when the client got its first.
 */
async function producedAtFirstRead(yieldNow: () => Promise<unknown>): Promise<number> {
  let produced = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () =>
    new Response(
      new ReadableStream({
        async start(controller) {
          for (let i = 0; i < CHUNKS; i++) {
            const until = performance.now() + 1;
            while (performance.now() < until) { /* a decode step's work */ }
            controller.enqueue(new TextEncoder().encode(`data: ${i}\n\n`));
            produced++;
            await yieldNow();
          }
          controller.close();
        },
      }),
      { headers: { "content-type": "text/event-stream" } },
    ));
  try {
    const response = await fetch(`http://127.0.0.1:${server.addr.port}/`);
    const reader = response.body!.getReader();
    await reader.read();
    const atFirstRead = produced;
    while (!(await reader.read()).done) { /* drain */ }
    return atFirstRead;
  } finally {
    await server.shutdown();
  }
}

Deno.test("yieldToEventLoop lets streamed bytes leave while work goes on; a microtask does not", async () => {
  const yielding = await producedAtFirstRead(yieldToEventLoop);
  assert.ok(yielding < CHUNKS / 2, `the first chunk was read after ${yielding} of ${CHUNKS} were produced`);
  assert.equal(await producedAtFirstRead(() => Promise.resolve()), CHUNKS);
});
