/** `GET /v1/export`: every judged pair in TRL's preference format, or completions with thumbs in KTO's. */
import { Hono } from "hono";
import { z } from "zod";
import type { PairStore } from "../../store/pairs.ts";
import { parseOr422 } from "../http.ts";
import type { AppVariables, RouteContext } from "./_context.ts";

/** Builds the route. */
export function exportRoutes(ctx: RouteContext): Hono<{ Variables: AppVariables }> {
  const { store } = ctx;
  const routes = new Hono<{ Variables: AppVariables }>();
  const ExportQuery = z.object({ format: z.enum(["trl", "kto"]).default("trl") });
  routes.get("/v1/export", (c) => {
    const { format } = parseOr422(ExportQuery, c.req.query(), "query");
    const encoder = new TextEncoder();
    const lines = format === "trl" ? exportTrl(store) : exportKto(store);
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        const next = await lines.next();
        if (next.done) controller.close();
        else controller.enqueue(encoder.encode(JSON.stringify(next.value) + "\n"));
      },
    });
    return new Response(body, { headers: { "content-type": "application/x-ndjson" } });
  });

  return routes;
}

async function* exportTrl(store: PairStore): AsyncGenerator<Record<string, unknown>> {
  for (const status of ["labeled", "trained"] as const) {
    for await (const pair of store.iterate({ status })) {
      const chosen = pair.responses[pair.chosen!]!;
      const rejected = pair.responses[pair.rejected!]!;
      yield pair.messages
        ? {
          prompt: pair.messages,
          chosen: [{ role: "assistant", content: chosen }],
          rejected: [{ role: "assistant", content: rejected }],
        }
        : { prompt: pair.prompt, chosen, rejected };
    }
  }
}

async function* exportKto(store: PairStore): AsyncGenerator<Record<string, unknown>> {
  let cursor: string | undefined;
  do {
    const page = await store.listCompletionFeedback({ limit: 100, cursor });
    for (const c of page.completions) {
      const completion = c.messages ? [{ role: "assistant", content: c.text }] : c.text;
      yield { prompt: c.messages ?? c.prompt, completion, label: c.feedback!.label };
    }
    cursor = page.cursor;
  } while (cursor);
}
