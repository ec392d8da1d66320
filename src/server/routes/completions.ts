/** What a chat app's users say of the answers it served: thumbs, edits, picks among n (src/store/completions.ts). */
import { Hono } from "hono";
import { z } from "zod";
import type { SignalResult } from "../../store/completions.ts";
import { jsonBody, parseOr422 } from "../http.ts";
import { completionId } from "./chat.ts";
import type { AppVariables, RouteContext } from "./_context.ts";

/** Builds the routes. */
export function completionRoutes(ctx: RouteContext): Hono<{ Variables: AppVariables }> {
  const { store, limits } = ctx;
  const routes = new Hono<{ Variables: AppVariables }>();
  // What a chat app learns from its users, on the answers it served (see src/store/completions.ts).
  const CompletionId = z.string().regex(/^chatcmpl-[0-9a-f]{32}(-[1-9])?$/, "not a completion id");
  const ResponseId = z.string().regex(/^chatcmpl-[0-9a-f]{32}$/, "not a chat completion response id");
  const Annotator = z.string().min(1).max(200).optional();
  const signalJson = (r: SignalResult) => ({ id: r.completion.id, pairs: r.pairs });
  routes.post("/v1/completions/:id/feedback", async (c) => {
    const id = parseOr422(CompletionId, c.req.param("id"), "id");
    const body = await jsonBody(c, z.object({ label: z.boolean(), annotator: Annotator }));
    const result = await store.recordCompletionFeedback(id, body);
    return c.json({ ...signalJson(result), label: body.label });
  });
  routes.post("/v1/completions/:id/edit", async (c) => {
    const id = parseOr422(CompletionId, c.req.param("id"), "id");
    const body = await jsonBody(c, z.object({ text: z.string().min(1).max(100_000), annotator: Annotator }));
    return c.json(signalJson(await store.recordCompletionEdit(id, body)), 201);
  });
  routes.post("/v1/completions/:id/choice", async (c) => {
    const id = parseOr422(ResponseId, c.req.param("id"), "id");
    const body = await jsonBody(
      c,
      z.object({ index: z.number().int().min(0).max(limits.maxResponses - 1), annotator: Annotator }),
    );
    const ids = Array.from({ length: limits.maxResponses }, (_, i) => completionId(id, i));
    return c.json(signalJson(await store.recordChoice(ids, completionId(id, body.index), body.annotator)), 201);
  });

  return routes;
}
