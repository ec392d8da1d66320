/**
 * Every script a `deno task` runs from scripts/ (taken from deno.json, so a new one is covered without editing
 * this test): `--help` prints its usage and exits 0; an unknown option is one line and the usage, exit 2,
 * never a stack trace.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const tasks: Record<string, string> = JSON.parse(await Deno.readTextFile(`${ROOT}/deno.json`)).tasks;
const scripts = Object.entries(tasks).flatMap(([task, command]) => {
  const m = /^deno run -A (scripts\/[\w.]+\.ts)$/.exec(command);
  return m ? [[task, m[1]!] as const] : [];
});

async function run(script: string, args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

Deno.test("the benchmark scripts are found in deno.json", () => {
  assert.ok(scripts.length >= 8, JSON.stringify(scripts));
});

for (const [task, script] of scripts) {
  Deno.test(`deno task ${task}: --help prints the usage; an unknown option is a one-line error`, async () => {
    const help = await run(script, ["--help"]);
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, new RegExp(`deno task ${task}`), "the usage names the task");
    const wrong = await run(script, ["--no-such-option"]);
    assert.equal(wrong.code, 2, wrong.stderr);
    assert.match(wrong.stderr, /^error: .*no-such-option/);
    assert.doesNotMatch(wrong.stderr, /^\s+at /m, "no stack trace");
  });
}
