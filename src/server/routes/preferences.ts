/** `POST /v1/preferences`: labeled preferences in TRL's format, one or a list, all or nothing. */
import { Hono } from "hono";
import { z } from "zod";
import { MessageSchema as Message } from "../../model/io/messages.ts";
import { jsonBody } from "../http.ts";
import { preferenceInputs } from "../_ingest.ts";
import type { AppVariables, RouteContext } from "./_context.ts";

/** Builds the route. */
export function preferenceRoutes(ctx: RouteContext): Hono<{ Variables: AppVariables }> {
  const { store, policy } = ctx;
  const routes = new Hono<{ Variables: AppVariables }>();
  const Completion = z.union([z.string(), z.array(Message).min(1)]);
  const Preference = z.object({ prompt: Completion, chosen: Completion, rejected: Completion });
  const Preferences = z.union([Preference, z.array(Preference).min(1).max(100)]);
  // All or nothing: every item is checked first, then the list is stored in one commit (or refused).
  routes.post("/v1/preferences", async (c) => {
    const body = await jsonBody(c, Preferences);
    const items = Array.isArray(body) ? body : [body];
    const where = (i: number) => Array.isArray(body) ? `body[${i}]` : "body";
    const inputs = policy
      ? await policy.use((p) => Promise.resolve(preferenceInputs(p, items, where)))
      : preferenceInputs(undefined, items, where);
    const results = await store.importLabeledMany(inputs, {
      idempotencyKey: c.req.header("idempotency-key") || undefined,
    });
    const pairs = results.map((r) => ({ id: r.pair.id, created: r.created }));
    return c.json({ pairs }, pairs.some((r) => r.created) ? 201 : 200);
  });

  return routes;
}
