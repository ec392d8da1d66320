/** The CLI as other tools use it: a real process, JSON lines on stdout, exit codes. */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { join } from "node:path";
import { assertClose, readExpected } from "../src/model/_test_utils.ts";
import { loadTokenizer } from "../src/model/io/tokenizer.ts";
import { evalKey, trainerStatusKey } from "../src/store/keys.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const MODEL = join(ROOT, "tests/fixtures/gpt2_tiny");

async function cli(args: string[], options: { stdin?: string; env?: Record<string, string> } = {}) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(ROOT, "main.ts"), ...args],
    cwd: ROOT,
    stdin: options.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    env: options.env,
  }).spawn();
  if (options.stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(options.stdin));
    await w.close();
  }
  const out = await child.output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout), stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("logprobs prints one line per input, in order, matching PyTorch", async () => {
  const expected = await readExpected("gpt2_tiny");
  const dir = await Deno.makeTempDir();
  try {
    const data = join(dir, "in.jsonl");
    await Deno.writeTextFile(
      data,
      expected.cases.map((c) => JSON.stringify({ prompt: c.prompt, completion: c.completion })).join("\n") + "\n\n",
    );
    const sum = await cli(["logprobs", "--model", MODEL, "--data", data, "--batch-size", "4", "--backend", "wasm"]);
    assert.equal(sum.code, 0, sum.stderr);
    const lines = sum.stdout.trim().split("\n").map((l) => JSON.parse(l));
    assert.equal(lines.length, expected.cases.length);
    for (const l of lines) assert.deepEqual(Object.keys(l), ["logp", "n_tokens"]);
    assertClose(lines.map((l) => l.logp), expected.cases.map((c) => c.logp_sum), 1e-4, "logp");
    assert.deepEqual(lines.map((l) => l.n_tokens), expected.cases.map((c) => c.n_tokens));
    assert.match(sum.stderr, /^backend: wasm/m);

    const stdin = expected.cases.map((c) => JSON.stringify({ prompt: c.prompt, completion: c.completion })).join("\n");
    const mean = await cli(["logprobs", "--model", MODEL, "--data", "-", "--average"], { stdin });
    assert.equal(mean.code, 0, mean.stderr);
    const means = mean.stdout.trim().split("\n").map((l) => JSON.parse(l).logp);
    assertClose(means, expected.cases.map((c) => c.logp_mean), 1e-4, "mean logp");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("logprobs rejects a bad line by number and prints nothing", async () => {
  const bad = '{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n';
  const r = await cli(["logprobs", "--model", MODEL, "--data", "-"], { stdin: bad });
  assert.equal(r.code, 1);
  assert.equal(r.stdout, "");
  assert.match(
    r.stderr,
    /error: Cannot read '-' line 2: expected \{"prompt": string, "completion": string\}: 'completion'/,
  );
  const notJson = await cli(["logprobs", "--model", MODEL, "--data", "-"], { stdin: "{oops\n" });
  assert.equal(notJson.code, 1);
  assert.match(notJson.stderr, /line 1: not valid JSON/);
});

Deno.test("usage mistakes exit 2 with the usage; an unavailable backend is a clear error", async () => {
  const missing = await cli(["logprobs", "--data", "x.jsonl"]);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /error: --model: is required\n\nUsage: deno task cli logprobs/);
  const badBackend = await cli(["generate", "--model", MODEL, "--prompt", "Hi", "--backend", "gpu"]);
  assert.equal(badBackend.code, 2);
  assert.match(badBackend.stderr, /--backend: Invalid option/);
  const unknown = await cli(["generate", "--model", MODEL, "--prompt", "Hi", "--frobnicate"]);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /Unknown option '--frobnicate'/);
  const tf = await cli(["generate", "--model", MODEL, "--prompt", "Hi", "--backend", "tensorflow"]);
  assert.equal(tf.code, 1);
  assert.match(tf.stderr, /error: Cannot use backend 'tensorflow': @tensorflow\/tfjs-node-gpu did not load/);
});

Deno.test("generate: greedy output matches PyTorch's tokens; a batch prints JSON lines", async () => {
  const expected = await readExpected("gpt2_tiny");
  const tokenizer = await loadTokenizer(MODEL);
  const prompts = expected.greedy.map((g) => g.prompt);
  const r = await cli([
    "generate",
    "--model",
    MODEL,
    ...prompts.flatMap((p) => ["--prompt", p]),
    "--temperature",
    "0",
    "--max-new-tokens",
    "12",
  ]);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
  expected.greedy.forEach((g, i) => {
    const eos = g.generated_ids.indexOf(expected.eos_token_id);
    const ids = eos >= 0 ? g.generated_ids.slice(0, eos) : g.generated_ids;
    assert.equal(lines[i].text, tokenizer.decode(ids, { skipSpecialTokens: true }), `prompt ${i}`);
    assert.equal(lines[i].finish_reason, eos >= 0 ? "stop" : "length");
    assert.equal(lines[i].n_tokens, ids.length);
  });
  assert.match(r.stderr, /generated \d+ tokens in [\d.]+ s/);
});

Deno.test("an hf: model on an unreachable hub says so clearly", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const cache = await Deno.makeTempDir();
  try {
    const r = await cli(["generate", "--model", "hf:openai-community/gpt2", "--prompt", "Hi", "--cache-dir", cache], {
      env: { HF_ENDPOINT: `http://127.0.0.1:${port}` },
    });
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      /Cannot download model 'hf:openai-community\/gpt2': the Hugging Face Hub at .* is unreachable/,
    );
  } finally {
    await Deno.remove(cache, { recursive: true });
  }
});

Deno.test("train: one JSON line per step, a loadable model in --out, and --resume continues", async () => {
  const expected = JSON.parse(await Deno.readTextFile(join(ROOT, "tests/fixtures/dpo/expected.json"))) as {
    pairs: { prompt: string; chosen: string; rejected: string }[];
  };
  const dir = await Deno.makeTempDir({ prefix: "train_cli_" });
  try {
    const data = join(dir, "prefs.jsonl");
    const lines = expected.pairs.map((p) =>
      JSON.stringify({ prompt: p.prompt, chosen: p.chosen, rejected: p.rejected })
    );
    await Deno.writeTextFile(data, [...lines, '{"prompt": "no completions"}'].join("\n") + "\n");
    const out = join(dir, "out");
    const common = ["--data", data, "--out", out, "--batch-size", "2", "--learning-rate", "1e-3", "--backend", "wasm"];

    const bad = await cli(["train", "--model", MODEL, ...common, "--max-steps", "2"]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /error: Cannot read '.*prefs\.jsonl' line 6: expected \{"prompt", "chosen", "rejected"\}/);
    assert.equal(bad.stdout, "");

    const first = await cli(["train", "--model", MODEL, ...common, "--max-steps", "2", "--on-bad-line", "skip"]);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stderr, /skipped '.*prefs\.jsonl' line 6/);
    const steps = first.stdout.trim().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(steps.map((s) => s.step), [1, 2]);
    for (
      const key of ["loss", "grad_norm", "learning_rate", "rewards/chosen", "rewards/accuracies", "logits/rejected"]
    ) {
      assert.equal(typeof steps[0][key], "number", key);
    }
    assert.ok(Math.abs(steps[0].loss - Math.LN2) < 1e-5, "the first step starts from the reference: loss ln 2");

    const scored = await cli(["logprobs", "--model", out, "--data", "-"], {
      stdin: JSON.stringify({ prompt: "Hi", completion: " there" }),
    });
    assert.equal(scored.code, 0, scored.stderr);

    const resumed = await cli(["train", "--resume", out, ...common, "--max-steps", "3", "--on-bad-line", "skip"]);
    assert.equal(resumed.code, 0, resumed.stderr);
    assert.match(resumed.stderr, /resuming from .* at step 2/);
    assert.deepEqual(resumed.stdout.trim().split("\n").map((l) => JSON.parse(l).step), [3]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("train --use-peft writes only a PEFT adapter and resumes; merge folds an adapter, matching PyTorch", async () => {
  const pairs = JSON.parse(await Deno.readTextFile(join(ROOT, "tests/fixtures/dpo/expected.json"))).pairs as {
    prompt: string;
    chosen: string;
    rejected: string;
  }[];
  const lora = JSON.parse(await Deno.readTextFile(join(ROOT, "tests/fixtures/lora/llama_tiny/expected.json"))) as {
    cases: { prompt: string; completion: string; logp_sum: number }[];
  };
  const llama = join(ROOT, "tests/fixtures/llama_tiny");
  const dir = await Deno.makeTempDir({ prefix: "lora_cli_" });
  try {
    const data = join(dir, "prefs.jsonl");
    await Deno.writeTextFile(data, pairs.map((p) => JSON.stringify(p)).join("\n") + "\n");
    const out = join(dir, "out");
    const common = ["--data", data, "--out", out, "--batch-size", "2", "--learning-rate", "1e-2", "--backend", "wasm"];
    const peft = ["--use-peft", "--lora-r", "4", "--lora-target-modules", "q_proj,v_proj,down_proj"];
    const first = await cli(["train", "--model", llama, ...common, ...peft, "--max-steps", "2"]);
    assert.equal(first.code, 0, first.stderr);
    const steps = first.stdout.trim().split("\n").map((l) => JSON.parse(l));
    assert.ok(Math.abs(steps[0].loss - Math.LN2) < 1e-5, "a fresh adapter is the base: loss ln 2");
    assert.notEqual(steps[1]["rewards/chosen"], 0, "after one update the adapter moves the policy off its base");
    const files = [...Deno.readDirSync(out)].map((e) => e.name).sort();
    assert.deepEqual(files, [
      "adapter_config.json",
      "adapter_model.safetensors",
      "checkpoint.json",
      "optimizer.safetensors",
      "trainer_state.json",
    ]);
    const config = JSON.parse(await Deno.readTextFile(join(out, "adapter_config.json")));
    assert.deepEqual([config.r, config.lora_alpha, config.base_model_name_or_path], [4, 32, llama]);
    const resumed = await cli(["train", "--resume", out, ...common, "--max-steps", "3"]);
    assert.equal(resumed.code, 0, resumed.stderr);
    assert.deepEqual(resumed.stdout.trim().split("\n").map((l) => JSON.parse(l).step), [3]);

    const merged = join(dir, "merged");
    const merge = await cli([
      "merge",
      "--adapter",
      join(ROOT, "tests/fixtures/lora/llama_tiny"),
      "--base",
      llama,
      "--out",
      merged,
    ]);
    assert.equal(merge.code, 0, merge.stderr);
    const stdin = lora.cases.map((c) => JSON.stringify({ prompt: c.prompt, completion: c.completion })).join("\n");
    const scored = await cli(["logprobs", "--model", merged, "--data", "-"], { stdin });
    assert.equal(scored.code, 0, scored.stderr);
    const logps = scored.stdout.trim().split("\n").map((l) => JSON.parse(l).logp);
    assertClose(logps, lora.cases.map((c) => c.logp_sum), 1e-4, "the merged model scores as base + adapter");
    const again = await cli(["merge", "--adapter", llama, "--out", join(dir, "other")]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /it holds no adapter_config\.json \(not a LoRA adapter directory\)/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("train --kto: unpaired thumbs up/down data, one JSON line per step with the KL reference point", async () => {
  const dir = await Deno.makeTempDir({ prefix: "kto_cli_" });
  try {
    const data = join(dir, "kto.jsonl");
    const rows = [
      { prompt: "What is 3+4? The answer is", completion: " 7.", label: true },
      { prompt: "12+7=", completion: "20", label: false },
      { prompt: [{ role: "user", content: "Hi" }], completion: [{ role: "assistant", content: "Hello" }], label: true },
      { prompt: "The cat sat on the", completion: " mat", label: false },
      { prompt: "oops", completion: "no label" },
    ];
    await Deno.writeTextFile(data, rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
    const r = await cli([
      "train",
      "--kto",
      "--model",
      MODEL,
      "--data",
      data,
      "--out",
      join(dir, "out"),
      "--batch-size",
      "4",
      "--max-steps",
      "2",
      "--learning-rate",
      "1e-3",
      "--undesirable-weight",
      "1.5",
      "--on-bad-line",
      "skip",
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /skipped '.*kto\.jsonl' line 5: expected \{"prompt", "completion", "label": boolean\}/);
    const steps = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(steps.map((s) => s.step), [1, 2]);
    for (const s of steps) {
      assert.ok(Number.isFinite(s.loss) && s.kl >= 0 && Number.isFinite(s["rewards/chosen"]), JSON.stringify(s));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** A `start` process in `dir`, its stdout and stderr collected as they come. */
/** The exit code of a child that should exit within `ms`; one that does not is killed and fails the test. */
async function exitCodeWithin(child: Deno.ChildProcess, ms: number): Promise<number> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<"late">((resolve) => timer = setTimeout(() => resolve("late"), ms));
  const result = await Promise.race([child.status, late]);
  clearTimeout(timer);
  if (result === "late") {
    child.kill("SIGKILL");
    throw new Error(`the process did not exit within ${ms} ms of SIGINT`);
  }
  return result.code;
}

function spawnStart(dir: string, args: string[]) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(ROOT, "main.ts"), "start", ...args],
    cwd: dir,
    stdout: "piped",
    stderr: "piped",
    env: { DPO_API_KEYS: "", DPO_LABEL_KEYS: "", DPO_CONFIG: "" },
  }).spawn();
  const log: string[] = [];
  for (const stream of [child.stdout, child.stderr]) {
    stream.pipeThrough(new TextDecoderStream()).pipeTo(new WritableStream({ write: (t) => void log.push(t) }));
  }
  let exited = false;
  child.status.then(() => exited = true);
  const text = () => log.join("");
  /** Waits for `fn` to return a value; fails at once if the process has ended. */
  const until = async <T>(what: string, fn: () => T | undefined | Promise<T | undefined>, timeoutMs = 60_000) => {
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      const v = await fn();
      if (v !== undefined) return v;
      if (exited) throw new Error(`start exited while waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`timed out waiting for ${what}`);
  };
  return { child, text, until };
}

/** The highest version a `published policy vN` line names, if any. */
function lastPublished(text: string): number | undefined {
  const versions = [...text.matchAll(/published policy v(\d+)/g)].map((m) => Number(m[1]));
  return versions.length ? Math.max(...versions) : undefined;
}

Deno.test({
  name: "start runs the whole loop, stops on Ctrl-C with code 0, and continues where it stopped",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "start_cli_" });
    const args = [
      "--port",
      "0",
      "--backend",
      "wasm",
      "--round-size",
      "8",
      "--round-epochs",
      "1",
      "--batch-size",
      "4",
      "--eval-prompts",
      "8",
      "--trainer-poll-ms",
      "100",
      "--serve-poll-ms",
      "200",
    ];
    let run = spawnStart(dir, args);
    try {
      const url = await run.until("the URL", () => /^ {2}API +(http:\/\/[\d.]+:\d+)\/v1/m.exec(run.text())?.[1]);
      const key = /^ {2}API key +(dpo-[0-9a-f]{32}) \(kept in data\/api-key\)/m.exec(run.text())?.[1];
      assert.ok(key, run.text());
      assert.match(run.text(), /^ {2}dashboard +http:\/\/.*\/#key=label-[0-9a-f]{32}$/m);
      assert.match(run.text(), /^ {2}running +server, judge .*trainer in a Web Worker.*prompt feeder/m);
      const stats = async () => {
        const res = await fetch(`${url}/v1/stats`, { headers: { authorization: `Bearer ${key}` } });
        assert.equal(res.status, 200);
        return (await res.json()) as { pairs: Record<string, number>; policy_version: number };
      };
      // The feeder makes pairs, the verifier judges them, the trainer publishes and evaluates a version.
      const first = await run.until("a published, evaluated version", () => {
        const v = lastPublished(run.text());
        return v !== undefined && new RegExp(`policy v${v}: held-out accuracy`).test(run.text()) ? v : undefined;
      });
      const before = await stats();
      assert.ok(before.pairs.trained! >= 8, JSON.stringify(before));

      const stopAt = Date.now();
      run.child.kill("SIGINT");
      assert.equal(await exitCodeWithin(run.child, 10_000), 0, run.text());
      assert.ok(Date.now() - stopAt < 10_000, `stopped in ${Date.now() - stopAt} ms`);
      const published = lastPublished(run.text())!;

      const kv = await Deno.openKv(join(dir, "data/dpo.kv"));
      try {
        const record = (await kv.get<Record<string, number>>(evalKey(first))).value;
        assert.ok(record, `no evaluation of v${first}`);
        assert.equal(record.version, first);
        assert.equal(record.prompts, 8);
        for (const k of ["accuracy", "base_accuracy", "win_rate_vs_base"]) {
          assert.ok(record[k]! >= 0 && record[k]! <= 1, `${k}: ${record[k]}`);
        }
        const status = (await kv.get<Record<string, unknown>>(trainerStatusKey())).value;
        assert.equal(status?.policy_version, published);
      } finally {
        kv.close();
      }

      // Started again: the same key, the pairs kept, the trainer resumed, and the versions go on.
      run = spawnStart(dir, args);
      await run.until("the URL", () => /^ {2}API +(http:\/\/[\d.]+:\d+)\/v1/m.exec(run.text())?.[1]);
      assert.match(run.text(), new RegExp(`API key +${key} `));
      assert.match(run.text(), new RegExp(`serving policy v${published}\\)`));
      const next = await run.until("a version after the restart", () => {
        const v = lastPublished(run.text());
        return v !== undefined && v > published ? v : undefined;
      });
      assert.ok(next > published);
      assert.match(run.text(), /resuming the trainer at step \d+/);
      const url2 = /^ {2}API +(http:\/\/[\d.]+:\d+)\/v1/m.exec(run.text())![1];
      const res = await fetch(`${url2}/v1/stats`, { headers: { authorization: `Bearer ${key}` } });
      const after = await res.json();
      assert.ok(after.pairs.trained >= before.pairs.trained!, JSON.stringify(after));
      run.child.kill("SIGINT");
      assert.equal(await exitCodeWithin(run.child, 10_000), 0, run.text());
    } catch (err) {
      console.error(run.text().slice(-4000));
      throw err;
    } finally {
      try {
        run.child.kill("SIGKILL");
      } catch { /* already gone */ }
      await run.child.status;
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("start: a bad setting is one clear error, exit code 2, before anything starts", async () => {
  const r = await cli(["start", "--beta=-1", "--port", "0"], { env: { DPO_ROUND_SIZE: "many" } });
  assert.equal(r.code, 2);
  assert.match(r.stderr, /Cannot use DPO_ROUND_SIZE: expected a number: current value is 'many'/);
  const h = await cli(["start", "--help"]);
  assert.equal(h.code, 0);
  assert.match(
    h.stdout,
    /--beta B\n +strength of the implicit KL constraint \(default 0\.1\)\n +env DPO_BETA, config "beta"/,
  );
});

Deno.test("worker --eval needs the base model to compare with", async () => {
  const r = await cli(["worker", "--eval", "arithmetic"]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /error: --eval: needs --model \(the base versions are compared with\)/);
});

Deno.test("worker refuses the settings only offline training uses, naming the command that uses them", async () => {
  const r = await cli(["worker", "--max-steps", "10", "--seed", "2"]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /Cannot use --max-steps, --seed with worker: they are settings of offline training/);
  const h = await cli(["worker", "--help"]);
  assert.match(
    h.stdout,
    /--lr-scheduler constant\|linear\|cosine\|inverse_sqrt\n(?: {30}.*\n)*? {30}.*\(default inverse_sqrt\)/,
  );
  for (const flag of ["--max-steps", "--num-epochs", "--seed"]) assert.doesNotMatch(h.stdout, new RegExp(`${flag} `));
  // The KTO weights apply online too: thumbs are trained between the DPO steps.
  for (const flag of ["--desirable-weight", "--undesirable-weight", "--kto-batch"]) {
    assert.match(h.stdout, new RegExp(flag));
  }
});

Deno.test("train --config with a mistyped setting is an error with a suggestion, not a silent default", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const config = join(dir, "config.json");
    await Deno.writeTextFile(config, JSON.stringify({ betta: 0.5, los_type: ["ipo"] }));
    const out = join(dir, "out");
    const r = await cli([
      "train",
      "--model",
      MODEL,
      "--data",
      config,
      "--out",
      out,
      "--config",
      config,
      "--backend",
      "wasm",
    ]);
    assert.notEqual(r.code, 0);
    assert.equal(await Deno.stat(out).then(() => true, () => false), false, "nothing trained or written");
    assert.match(
      r.stderr,
      /unknown setting 'betta' \(did you mean 'beta'\?\); unknown setting 'los_type' \(did you mean 'loss_type'\?\)/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("versions: publish a model trained elsewhere, refuse one that does not fit, a table and JSON, rollback", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const where = ["--kv", join(dir, "dpo.kv"), "--checkpoints", `dir:${join(dir, "ckpts")}`];
    const missing = await cli(["versions", "--kv", join(dir, "nowhere.kv")]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /there is no KV at '.*nowhere\.kv'/);
    assert.equal(await Deno.stat(join(dir, "nowhere.kv")).then(() => true, () => false), false, "none was created");

    for (const note of ["first", "second"]) {
      const r = await cli(["versions", "publish", MODEL, ...where, "--note", note]);
      assert.equal(r.code, 0, r.stderr);
    }
    const llama = join(ROOT, "tests/fixtures/llama_tiny");
    const refused = await cli(["versions", "publish", llama, ...where]);
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /Cannot publish '.*llama_tiny': it is a llama .* and the served v2 a gpt2/);

    const listed = await cli(["versions", ...where]);
    assert.equal(listed.code, 0, listed.stderr);
    const lines = listed.stdout.trimEnd().split("\n");
    assert.match(lines[0]!, /^ +version +parent +published +pairs +accuracy +gate$/);
    assert.match(lines[1]!, /^ +v1 +- +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +- +- +-$/);
    assert.match(lines[2]!, /^\* +v2 +v1 /);

    const back = await cli(["versions", ...where, "--rollback", "1", "--json"]);
    const rows = back.stdout.trim().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(rows.map((r) => [r.version, r.served, r.note]), [[1, true, "first"], [2, false, "second"]]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("every command: --help works, an unknown flag is refused, a near miss names the flag meant", async () => {
  const { COMMANDS } = await import("../main.ts");
  const names = Object.keys(COMMANDS);
  assert.ok(names.length >= 9, names.join(","));
  await Promise.all(names.map(async (name) => {
    const help = await cli([name, "--help"]);
    assert.equal(help.code, 0, `${name} --help: ${help.stderr}`);
    assert.match(help.stdout, /^Usage: /, name);
    const flags = [...help.stdout.matchAll(/^ {2}--([a-z][a-z-]{3,})/gm)].map((m) => m[1]!);
    assert.ok(flags.length > 0, `${name} --help lists no option`);
    const unknown = await cli([name, "--no-such-option-anywhere"]);
    assert.equal(unknown.code, 2, name);
    assert.match(unknown.stderr, /Unknown option '--no-such-option-anywhere'/, name);
    const meant = flags.at(-1)!;
    const typo = await cli([name, `--${meant.slice(0, -1)}x`]);
    assert.equal(typo.code, 2, name);
    assert.match(typo.stderr, new RegExp(`did you mean '--${meant}'\\?`), `${name}: ${typo.stderr}`);
    assert.match(help.stdout, /DPO_[A-Z]/, `${name} --help does not say which environment variables it reads`);
  }));
});

Deno.test("every command reads its options from DPO_<NAME> too, and names the variable when its value is wrong", async () => {
  const r = await cli(["worker"], { env: { DPO_ROUND_SIZE: "many" } });
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /DPO_ROUND_SIZE: /);
  const flagWins = await cli(["worker", "--round-size", "many"], { env: { DPO_ROUND_SIZE: "8" } });
  assert.match(flagWins.stderr, /--round-size: /);
});
