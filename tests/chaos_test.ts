/**
 * Chaos: serve, judge and worker as processes on one KV file under load, killed with -9 at random moments
 * and the worker also at the exact moment it switches the policy pointer, with production lease timings.
 * Nothing accepted may be lost, trained twice or left stuck. About 60–90 s per checkpoint store;
 * `deno task chaos` runs the longer version.
 */
import assert from "node:assert/strict";
import { type ChaosReport, formatReport, runChaos } from "./_chaos.ts";

for (const checkpoints of ["dir:ckpts", "kv"] as const) {
  Deno.test({
    name: `chaos (${checkpoints} checkpoints): kill -9 of any role, and of the worker at its publish switch, ` +
      "loses no pair, trains none twice and leaves none stuck",
    sanitizeResources: false,
    sanitizeOps: false,
    async fn() {
      const report = await runChaos({
        checkpoints,
        loadMs: 45_000,
        kills: 12,
        switchKills: 4,
        pairsPerSecond: 7,
        log: (line) => console.log(`  chaos: ${line}`),
      });
      console.log(formatReport(report));
      try {
        assertSound(report);
      } catch (err) {
        for (const [role, tail] of Object.entries(report.logTails)) {
          console.error(`--- ${role} ---\n${tail.slice(-3000)}`);
        }
        throw err;
      }
    },
  });
}

function assertSound(r: ChaosReport): void {
  const switchKills = r.kills.filter((k) => k.kind === "switch").length;
  assert.ok(r.kills.length >= 10, `only ${r.kills.length} kills`);
  assert.ok(switchKills >= 3, `only ${switchKills} kills at the publish switch`);
  assert.ok(r.accepted >= 200, `only ${r.accepted} pairs accepted`);
  assert.ok(r.versionsAfterSwitchKill >= 1, "no version published after a kill at the switch");
  // Every violation at once: which of them show together says more than the first alone.
  const violations = Object.entries({
    lost: r.lost,
    "trained twice": r.trainedTwice,
    stuck: r.stuck,
    "unrecorded versions": r.unrecordedVersions,
    crashes: r.crashes.length,
  }).filter(([, n]) => n > 0);
  assert.deepEqual(violations, [], `exactly once broken: ${violations.map(([k, n]) => `${k} ${n}`).join(", ")}`);
}
