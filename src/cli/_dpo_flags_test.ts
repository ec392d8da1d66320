import assert from "node:assert/strict";
import { DpoConfigSchema, ONLINE_DPO_DEFAULTS } from "../dpo/config.ts";
import { configFromFlags, DPO_SETTINGS, dpoOptions, offlineOnlyFlagsGiven } from "./_dpo_flags.ts";
import { optionsUsage, parseOptions } from "./_options.ts";

Deno.test("DPO flags: every engine setting has one flag, and --help shows the engine's own defaults", () => {
  assert.deepEqual(DPO_SETTINGS.map((s) => s.field).sort(), Object.keys(DpoConfigSchema.shape).sort());
  const flags = DPO_SETTINGS.map((s) => s.flag);
  assert.equal(new Set(flags).size, flags.length, "two settings share a flag");
  const offline = optionsUsage(dpoOptions("offline"));
  const engine = DpoConfigSchema.parse({});
  assert.match(offline, new RegExp(`--beta B .*\\(default ${engine.beta}\\)`));
  assert.match(offline, /--learning-rate LR .*\(default 1e-6\)/);
  assert.match(
    offline,
    new RegExp(`--lr-scheduler .*\\n(?: {30}.*\\n)*? {30}.*\\(default ${engine.lr_scheduler_type}\\)`),
  );
  const online = optionsUsage(dpoOptions("online"));
  assert.match(online, new RegExp(`\\(default ${ONLINE_DPO_DEFAULTS.lr_scheduler_type}\\)`));
  for (const s of DPO_SETTINGS.filter((s) => s.offlineOnly)) {
    assert.ok(offline.includes(`--${s.flag}`), s.flag);
    assert.ok(!online.includes(`--${s.flag}`), `${s.flag} is offline only`);
  }
});

Deno.test("DPO flags: text from flags or the environment is read by the setting's kind, and named when wrong", () => {
  const options = dpoOptions("online");
  const parse = (args: string[], vars: Record<string, string> = {}) => {
    const parsed = parseOptions(args, options, (name) => vars[name]);
    assert.ok(!parsed.help);
    return configFromFlags(parsed.values, parsed.origin);
  };
  assert.deepEqual(
    parse(["--loss-type", "sigmoid,sft", "--loss-weights", "1,0.5", "--no-disable-dropout"], { DPO_BETA: "0.3" }),
    { beta: 0.3, loss_type: ["sigmoid", "sft"], loss_weights: [1, 0.5], disable_dropout: false },
  );
  assert.deepEqual(parse([], { DPO_USE_PEFT: "true", DPO_LORA_TARGET_MODULES: "c_attn" }), {
    use_peft: true,
    lora_target_modules: ["c_attn"],
  });
  assert.throws(
    () => parse([], { DPO_BETA: "strong" }),
    /^Error: DPO_BETA: expected a number: current value is 'strong'$/,
  );
  assert.throws(() => parse(["--beta", "strong"]), /^Error: --beta: expected a number/);
  const given = parseOptions(["--max-steps", "3"], options, () => undefined);
  assert.ok(!given.help);
  assert.deepEqual(offlineOnlyFlagsGiven(given.values), ["--max-steps"]);
});
