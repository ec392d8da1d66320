/** What operators look at: `/v1/stats`, `/metrics` (Prometheus) and `/v1/dashboard` (the dashboard's data). */
import { Hono } from "hono";
import type { JudgeUsage } from "../../store/pairs.ts";
import { DashboardQuerySchema, readDashboard } from "../dashboard.ts";
import { parseOr422 } from "../http.ts";
import type { AppVariables, RouteContext } from "./_context.ts";

/** Builds the routes. */
export function observeRoutes(ctx: RouteContext): Hono<{ Variables: AppVariables }> {
  const { store, policy, metrics, now } = ctx;
  const routes = new Hono<{ Variables: AppVariables }>();
  routes.get("/v1/dashboard", async (c) => {
    const query = parseOr422(DashboardQuerySchema, c.req.query(), "query");
    return c.json(await readDashboard({ store, servingVersion: policy?.version ?? null, now: now() }, query));
  });

  routes.get("/v1/stats", async (c) => {
    const [pairs, feedback, judges, gate, trainer] = await Promise.all([
      store.counts(),
      store.feedbackCounts(),
      store.judgeUsage(),
      store.records.gates(1),
      store.records.status(),
    ]);
    return c.json({
      policy_version: policy?.version ?? null,
      pairs,
      // The feeder leaves the pairs the trainer holds (`held_pairs`, after a gate refusal) out of its backlog.
      trainer,
      completion_feedback: feedback,
      judges: judgeStats(judges),
      gate: { promoted: gate.promoted, refused: gate.refused, last: gate.decisions[0] ?? null },
    });
  });

  routes.get("/metrics", async (c) => {
    const [pairs, feedback, trainer, judges, gate] = await Promise.all([
      store.counts(),
      store.feedbackCounts(),
      store.records.status(),
      store.judgeUsage(),
      store.records.gates(0),
    ]);
    const state = {
      pairs,
      feedback,
      trainer,
      judges,
      gate: { promoted: gate.promoted, refused: gate.refused },
      policyVersion: policy?.version,
      decoding: policy?.decoding,
    };
    return c.text(metrics.render(state), 200, {
      "content-type": "text/plain; version=0.0.4",
    });
  });

  return routes;
}

/** The judges' totals as `/v1/stats` shows them, with the mean latency of a verdict. */
function judgeStats(usage: Record<string, JudgeUsage>) {
  return Object.fromEntries(
    Object.entries(usage).map(([id, u]) => {
      const verdicts = u.calls - u.failures;
      return [id, { ...u, latency_ms_mean: verdicts > 0 ? Math.round(u.latency_ms / verdicts) : null }];
    }),
  );
}
