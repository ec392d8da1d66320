import assert from "node:assert/strict";
import { z } from "zod";
import { flag, number, optionsUsage, parseOptions, required, SHARED, text, withEnv } from "./_options.ts";
import { UsageError } from "./common.ts";

const OPTIONS = {
  data: required("FILE", "the input"),
  "batch-size": number("N", "rows per step", (n) => n.int().positive(), 8),
  seed: number("S", "makes it reproducible", (n) => n.int().nonnegative()),
  mode: text("a|b", "which way", z.enum(["a", "b"]).default("a")),
  tag: text("T", "repeatable", z.array(z.string()).default([]), { multiple: true }),
  quiet: flag("say less"),
  secret: { ...flag("not for people"), hidden: true },
  kv: SHARED.kv,
};

Deno.test("options: one declaration gives the parser, the validation and the defaults", () => {
  const parsed = parseOptions(["--data", "x.jsonl", "--tag", "p", "--tag", "q", "--seed", "3"], OPTIONS);
  assert.ok(!parsed.help);
  assert.deepEqual(parsed.values, {
    data: "x.jsonl",
    "batch-size": 8,
    seed: 3,
    mode: "a",
    tag: ["p", "q"],
    quiet: false,
    secret: false,
    kv: "data/dpo.kv",
  });
  assert.deepEqual(parseOptions(["-h"], OPTIONS), { help: true });
});

Deno.test("options: every mistake is a usage error naming its flag, a near miss names the flag meant", () => {
  const refused: [string[], RegExp][] = [
    [["--batch-size", "8"], /--data: is required/],
    [["--data", "x", "--batch-size", "0"], /--batch-size: .*>0|--batch-size: .*positive|--batch-size: Too small/],
    [["--data", "x", "--batch-size", "eight"], /--batch-size: /],
    [["--data", "x", "--mode", "c"], /--mode: /],
    [["--data", "x", "--bach-size", "4"], /Unknown option '--bach-size' \(did you mean '--batch-size'\?\)/],
    [["--data", "x", "stray"], /stray/],
  ];
  for (const [args, message] of refused) {
    assert.throws(
      () => parseOptions(args, OPTIONS),
      (e: unknown) => e instanceof UsageError && message.test(e.message),
    );
  }
});

Deno.test("options: --help shows each flag with its metavar, help and default, wrapped, hidden ones left out", () => {
  const usage = optionsUsage(OPTIONS);
  assert.match(usage, /^ {2}--data FILE +the input$/m);
  assert.match(usage, /^ {2}--batch-size N +rows per step \(default 8\)$/m);
  assert.match(usage, /^ {2}--seed S +makes it reproducible$/m); // no default: none shown
  assert.match(usage, /^ {2}--mode a\|b +which way \(default a\)$/m);
  assert.match(usage, /^ {2}--quiet +say less$/m); // a switch's "off" is not a default worth showing
  assert.doesNotMatch(usage, /--secret/);
  assert.match(usage, /--kv PATH\|URL +the shared KV: [^\n]*\n {30}\(default data\/dpo\.kv\)$/m);
  for (const line of usage.split("\n")) assert.ok(line.length <= 116, line);
});

Deno.test("options: an option not given comes from DPO_<NAME>; a flag wins; a bad value names the variable", () => {
  const env = (vars: Record<string, string>) => (name: string) => vars[name];
  const from = (args: string[], vars: Record<string, string>) => {
    const parsed = parseOptions(["--data", "x", ...args], withEnv(OPTIONS, ["data"]), env(vars));
    assert.ok(!parsed.help);
    return parsed;
  };
  const fromEnv = from([], { DPO_BATCH_SIZE: "4", DPO_TAG: "p, q", DPO_QUIET: "yes", DPO_KV: "/tmp/x.kv" });
  assert.deepEqual(
    [fromEnv.values["batch-size"], fromEnv.values.tag, fromEnv.values.quiet, fromEnv.values.kv],
    [4, ["p", "q"], true, "/tmp/x.kv"],
  );
  assert.equal(fromEnv.origin["batch-size"], "DPO_BATCH_SIZE");
  const flagWins = from(["--batch-size", "2"], { DPO_BATCH_SIZE: "4" });
  assert.equal(flagWins.values["batch-size"], 2);
  assert.equal(flagWins.origin["batch-size"], "--batch-size");
  assert.equal(from([], { DPO_BATCH_SIZE: "" }).values["batch-size"], 8, "an empty variable is not set");
  const refused: [Record<string, string>, RegExp][] = [
    [{ DPO_BATCH_SIZE: "0" }, /^DPO_BATCH_SIZE: /],
    [{ DPO_QUIET: "maybe" }, /^DPO_QUIET: expected true or false: current value is 'maybe'$/],
    [{ DPO_MODE: "c", DPO_SEED: "-1" }, /^DPO_SEED: .*; DPO_MODE: |^DPO_MODE: .*; DPO_SEED: /],
  ];
  for (const [vars, message] of refused) {
    assert.throws(() => from([], vars), (e: unknown) => e instanceof UsageError && message.test(e.message));
  }
  const token = text("K", "a key", z.string().optional());
  const parsed = parseOptions([], { token }, env({ DPO_TOKEN: "from the environment" }));
  assert.equal(from([], { DPO_DATA: "y" }).values.data, "x");
  assert.ok(!parsed.help);
  assert.equal(parsed.values.token, undefined, "an option not marked env is not read from the environment");
  assert.match(
    optionsUsage(withEnv({ token, ...OPTIONS }, ["token"])),
    /DPO_ and its name in capitals \(--data: DPO_DATA\); a flag wins \(not\s--token\)\.$/,
  );
  assert.match(optionsUsage(OPTIONS), /\n\nAlso set in the environment \(a flag wins\): --kv as DPO_KV\.$/);
});
