import assert from "node:assert/strict";
import { join } from "node:path";
import {
  DEFAULT_MODEL,
  dpoSettings,
  readStartConfigFile,
  resolveStartConfig,
  SETTING_DOCS,
  settingsTable,
  settingsUsage,
  type StartConfigSources,
  startFlagSpec,
} from "./_start_config.ts";
import { ConfigError, parseCommand } from "./common.ts";
import { envName } from "./_options.ts";
import { START_DEFAULTS } from "./start.ts";

function resolve(
  options: { args?: string[]; env?: Record<string, string>; file?: Record<string, unknown> } = {},
) {
  const sources: StartConfigSources = {
    flags: parseCommand(options.args ?? [], startFlagSpec()),
    env: (name) => options.env?.[name],
    file: options.file ? { path: "dpo.config.json", values: options.file } : undefined,
    defaults: START_DEFAULTS,
  };
  return resolveStartConfig(sources);
}

function problem(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${err}`);
    return err.message;
  }
  assert.fail("expected an error");
}

Deno.test("start settings: the defaults are START_DEFAULTS, with paths under the data directory", () => {
  const c = resolve();
  assert.equal(c.model, DEFAULT_MODEL);
  assert.equal(c.mode, "rounds");
  assert.equal(c.round_size, 64);
  assert.equal(c.round_epochs, 2);
  assert.equal(c.ref_refresh_rounds, 1);
  assert.equal(c.per_device_train_batch_size, 16);
  assert.equal(c.beta, 0.1);
  assert.equal(c.learning_rate, 1e-4);
  assert.deepEqual(c.loss_type, ["sigmoid", "sft"]);
  assert.equal(c.n, 4);
  assert.equal(c.temperature, 0.7);
  assert.equal(c.max_new_tokens, 6);
  assert.equal(c.eval_prompts, 800);
  assert.equal(c.gate_prompts, 1000);
  assert.equal(c.host, "127.0.0.1");
  assert.equal(c.port, 8000);
  assert.equal(c.judge, "arithmetic");
  assert.equal(c.kv, join("data", "dpo.kv"));
  assert.equal(c.checkpoints, `dir:${join("data", "checkpoints")}`);
  const moved = resolve({ args: ["--data-dir", "/srv/dpo"] });
  assert.equal(moved.kv, "/srv/dpo/dpo.kv");
  assert.equal(moved.checkpoints, "dir:/srv/dpo/checkpoints");
  assert.equal(resolve({ args: ["--kv", "https://kv.example/db"] }).kv, "https://kv.example/db");
  assert.deepEqual(Object.keys(dpoSettings(c)).sort().slice(0, 3), [
    "beta",
    "desirable_weight",
    "disable_dropout",
  ]);
  assert.equal(c.kto_batch, 8);
});

Deno.test("start settings: flags over environment over config file over defaults", () => {
  const file = { beta: 0.2, round_size: 32, mode: "stream", feeder: false };
  const env = { DPO_BETA: "0.3", DPO_ROUND_SIZE: "16" };
  const args = ["--beta", "0.4"];
  const all = resolve({ args, env, file });
  assert.equal(all.beta, 0.4);
  assert.equal(all.round_size, 16);
  assert.equal(all.mode, "stream");
  assert.equal(all.feeder, false);
  assert.equal(resolve({ env, file }).beta, 0.3);
  assert.equal(resolve({ file }).beta, 0.2);
  assert.equal(resolve({ file }).round_size, 32);
  assert.equal(resolve().beta, 0.1);
  // Lists, booleans and negated flags read the same from every source.
  const typed = resolve({
    args: ["--loss-type", "sigmoid,sft", "--no-precompute-ref-log-probs"],
    env: { DPO_LOSS_WEIGHTS: "1, 0.5", DPO_LENGTH_NORMALIZE: "yes", DPO_FEEDER: "off" },
  });
  assert.deepEqual(typed.loss_type, ["sigmoid", "sft"]);
  assert.deepEqual(typed.loss_weights, [1, 0.5]);
  assert.equal(typed.precompute_ref_log_probs, false);
  assert.equal(typed.length_normalize, true);
  assert.equal(typed.feeder, false);
  assert.equal(resolve({ args: ["--no-feeder"], env: { DPO_FEEDER: "true" } }).feeder, false);
  assert.equal(resolve({ args: ["--port", "0"] }).port, 0);
});

Deno.test("start settings: a bad value names its source and what is expected", () => {
  assert.match(
    problem(() => resolve({ args: ["--beta", "abc"] })),
    /^Cannot use --beta: expected a number: current value is 'abc'$/,
  );
  assert.match(
    problem(() => resolve({ args: ["--mode", "sideways"] })),
    /Cannot use --mode: .*"stream"\|"rounds".*: current value is "sideways"/,
  );
  assert.match(
    problem(() => resolve({ args: ["--port", "70000"] })),
    /Cannot use --port: .*<=65535.*current value is 70000/,
  );
  assert.match(
    problem(() => resolve({ env: { DPO_BETA: "-1" } })),
    /^Cannot use DPO_BETA: .*>0.*: current value is -1$/,
  );
  assert.match(
    problem(() => resolve({ env: { DPO_FEEDER: "maybe" } })),
    /Cannot use DPO_FEEDER: expected true or false: current value is 'maybe'/,
  );
  assert.match(
    problem(() => resolve({ file: { beta: "0.1" } })),
    /^Cannot use dpo\.config\.json: beta: .*expected number, received string: current value is "0\.1"$/,
  );
  assert.match(
    problem(() => resolve({ file: { judge: "oracle" } })),
    /dpo\.config\.json: judge: unknown judge 'oracle': expected arithmetic \| verifier:PATH \| hf \| webhook/,
  );
  // A flag over a bad file value: the flag wins and nothing is wrong.
  assert.equal(resolve({ file: { beta: "0.1" }, args: ["--beta", "0.5"] }).beta, 0.5);
  // Every problem at once.
  const both = problem(() => resolve({ args: ["--beta=-1"], env: { DPO_ROUND_SIZE: "many" } }));
  assert.match(both, /Cannot use DPO_ROUND_SIZE: expected a number/);
  assert.match(both, /Cannot use --beta: /);
  assert.equal(both.split("Cannot use --beta").length, 2, "one problem, said once");
  assert.match(
    problem(() => resolve({ env: { DPO_N: "x" } })),
    /^Cannot use DPO_N: expected a number: current value is 'x'$/,
  );
});

Deno.test("start settings: unknown keys in the file are an error, with a suggestion", () => {
  assert.match(
    problem(() => resolve({ file: { betta: 0.1, colour: "blue" } })),
    /^Cannot use dpo\.config\.json: betta: unknown setting \(did you mean 'beta'\?\); Cannot use dpo\.config\.json: colour: unknown setting$/,
  );
  // Offline-only DPO settings are not settings of start.
  assert.match(problem(() => resolve({ file: { max_steps: 10 } })), /dpo\.config\.json: max_steps: unknown setting/);
  assert.throws(() => parseCommand(["--max-steps", "10"], startFlagSpec()), /Unknown option '--max-steps'/);
});

Deno.test("start settings: rules across settings name the setting's source", () => {
  assert.match(
    problem(() => resolve({ args: ["--judge", "hf"] })),
    /Cannot use --judge: judge hf needs hf_model or hf_endpoint/,
  );
  assert.equal(resolve({ args: ["--judge", "hf", "--hf-model", "some/model"] }).hf_model, "some/model");
  assert.match(
    problem(() => resolve({ env: { DPO_SYNC_REF_MODEL: "true" } })),
    /Cannot use DPO_SYNC_REF_MODEL: choose one reference schedule/,
  );
  assert.equal(resolve({ env: { DPO_SYNC_REF_MODEL: "true", DPO_REF_REFRESH_ROUNDS: "0" } }).sync_ref_model, true);
  assert.equal(resolve({ args: ["--use-peft"] }).ref_refresh_rounds, 0, "LoRA: the default refresh gives way");
  assert.match(
    problem(() => resolve({ args: ["--use-peft", "--ref-refresh-rounds", "2"] })),
    /Cannot use --ref-refresh-rounds: with use_peft the reference is the frozen base and is never refreshed/,
  );
  assert.match(
    problem(() => resolve({ file: { loss_weights: [1, 2, 3] } })),
    /Cannot use dpo\.config\.json: loss_weights: 'loss_weights' needs one weight per loss type \(2\)/,
  );
  assert.match(problem(() => resolve({ args: ["--kv", ":memory:"] })), /Cannot use --kv: the trainer runs in a worker/);
  // A version's pairs count as the feeder's backlog until it is published: a smaller backlog would stall the loop.
  assert.match(
    problem(() => resolve({ args: ["--round-size", "256"] })),
    /feeder_max_backlog: the trainer waits for 256 pairs per version \(round_size\) and the feeder would stop at 128/,
  );
  assert.match(
    problem(() => resolve({ args: ["--mode", "stream", "--publish-every", "10"] })),
    /the trainer waits for 160 pairs per version \(batch × publish_every\)/,
  );
  assert.equal(resolve({ args: ["--round-size", "256", "--feeder-max-backlog", "256"] }).round_size, 256);
  assert.equal(resolve({ args: ["--round-size", "256", "--no-feeder"] }).round_size, 256);
});

Deno.test("start settings: --help documents every flag with its environment variable, config key and default", () => {
  const usage = settingsUsage(START_DEFAULTS);
  for (const [key, doc] of Object.entries(SETTING_DOCS)) {
    assert.ok(usage.includes(`--${doc.flag}`), doc.flag);
    assert.ok(usage.includes(`env ${envName(key)}, config "${key}"`), key);
  }
  assert.match(
    usage,
    /--round-size K\n +rounds mode: labeled pairs per round \(default 64\)\n +env DPO_ROUND_SIZE, config "round_size"/,
  );
  assert.match(usage, /--learning-rate LR\n .*\(default 0\.0001\)/);
  assert.match(usage, /--kv PATH\|URL\n .*\(default DATA_DIR\/dpo\.kv\)/);
  assert.deepEqual(
    ["n", "port", "temperature", "feeder", "length_normalize", "backend", "loss_type"].map((k) =>
      SETTING_DOCS[k as "n"].kind
    ),
    ["number", "number", "number", "negated", "boolean", "string", "list"],
  );
  const flags = Object.values(SETTING_DOCS).map((d) => d.flag);
  assert.equal(new Set(flags).size, flags.length, "two settings share a flag");
});

Deno.test("start settings: the config file must be a JSON object", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "dpo.config.json");
    await Deno.writeTextFile(path, '{"beta": 0.2,}');
    await assert.rejects(readStartConfigFile(path), /Cannot read config file '.*' as it is not valid JSON/);
    await Deno.writeTextFile(path, "[1]");
    await assert.rejects(readStartConfigFile(path), /must hold a JSON object of settings/);
    await assert.rejects(readStartConfigFile(join(dir, "none.json")), /Cannot read config file '.*none\.json'/);
    await Deno.writeTextFile(path, '{"beta": 0.2}');
    assert.deepEqual(await readStartConfigFile(path), { beta: 0.2 });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("start settings: the reference table has a row per setting, under its section", () => {
  const rows = settingsTable(START_DEFAULTS).split("\n");
  for (const [key, doc] of Object.entries(SETTING_DOCS)) {
    assert.equal(
      rows.filter((r) => r.startsWith(`| \`--${doc.flag} `) || r.startsWith(`| \`--${doc.flag}\``)).length,
      1,
      doc.flag,
    );
    assert.ok(rows.some((r) => r.includes(`| \`${envName(key)}\` | \`${key}\` |`)), key);
  }
  assert.equal(
    rows.length,
    Object.keys(SETTING_DOCS).length + 2 + 6,
    "a header, a rule, a row per section and setting",
  );
});
