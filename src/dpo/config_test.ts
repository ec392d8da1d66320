import assert from "node:assert/strict";
import { DpoSettingsSchema, parseDpoConfig } from "./config.ts";

Deno.test("DPO settings crossing into the trainer: each checked by name and value, all together by parseDpoConfig", () => {
  assert.deepEqual(DpoSettingsSchema.parse({ beta: 0.2, loss_type: ["sigmoid", "sft"] }), {
    beta: 0.2,
    loss_type: ["sigmoid", "sft"],
  });
  const refused = DpoSettingsSchema.safeParse({ betta: 0.5, beta: -1, loss_type: ["dpo"] });
  assert.ok(!refused.success);
  const messages = refused.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`);
  assert.equal(messages.length, 3, messages.join("; "));
  assert.match(messages[0]!, /^betta: unknown setting \(did you mean 'beta'\?\)$/);
  assert.match(messages[1]!, /^beta: /);
  assert.match(messages[2]!, /^loss_type\.0: /);
  // One by one they pass; together they break a rule across settings, which only the whole config can see.
  const apart = { loss_type: ["sigmoid"], loss_weights: [1, 1] };
  assert.ok(DpoSettingsSchema.safeParse(apart).success);
  assert.throws(() => parseDpoConfig(apart), /'loss_weights' needs one weight per loss type/);
});
