/**
 * `logprobs`: one JSON line `{"logp", "n_tokens"}` per input line `{"prompt", "completion"}`, in order.
 * A stable contract used by other tools.
 */
import { z } from "zod";
import { scorePairs, type TokenPair } from "../model/logprobs.ts";
import { createProgress } from "../util/progress.ts";
import { loadForCli, writeStdout } from "./common.ts";
import { flag, number, optionsUsage, parseOptions, required, SHARED } from "./_options.ts";

export const OPTIONS = {
  model: { ...SHARED.model, schema: z.string({ error: "is required" }) },
  backend: SHARED.backend,
  "cache-dir": SHARED["cache-dir"],
  data: required("FILE.jsonl", "input lines (use - for stdin)"),
  average: flag("print the mean log-prob per token instead of the sum"),
  "batch-size": number("N", "sequences per forward pass", (n) => n.int().positive(), 8),
};

/** Usage text of the command. */
export const LOGPROBS_USAGE = `Usage: deno task cli logprobs --model DIR --data FILE.jsonl [options]

Prints one JSON line {"logp": number, "n_tokens": integer} per input line {"prompt", "completion"},
in order. logp sums log p(token) over the completion tokens and the final eos (n_tokens of them).

${optionsUsage(OPTIONS)}`;

const Line = z.object({ prompt: z.string(), completion: z.string() });

/** Reads and validates every line first, so a bad line stops the run before any output. */
export async function readPairsJsonl(path: string): Promise<(z.infer<typeof Line> & { line: number })[]> {
  let text: string;
  try {
    text = path === "-" ? await new Response(Deno.stdin.readable).text() : await Deno.readTextFile(path);
  } catch (err) {
    throw new Error(`Cannot read data file '${path}': ${(err as Error).message}`);
  }
  const out: (z.infer<typeof Line> & { line: number })[] = [];
  text.split("\n").forEach((raw, i) => {
    if (raw.trim() === "") return;
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch (err) {
      throw new Error(`Cannot read '${path}' line ${i + 1}: not valid JSON (${(err as Error).message})`);
    }
    const parsed = Line.safeParse(value);
    if (!parsed.success) {
      const problems = parsed.error.issues.map((p) => `'${p.path.join(".") || "line"}' ${p.message}`).join("; ");
      throw new Error(
        `Cannot read '${path}' line ${i + 1}: expected {"prompt": string, "completion": string}: ${problems}`,
      );
    }
    out.push({ ...parsed.data, line: i + 1 });
  });
  return out;
}

/** Runs the command. */
export async function runLogprobs(args: string[]): Promise<void> {
  const parsed = parseOptions(args, OPTIONS);
  if (parsed.help) return void console.log(LOGPROBS_USAGE);
  const opts = parsed.values;
  const lines = await readPairsJsonl(opts.data);
  const { model, tokenizer } = await loadForCli(opts);
  const pairs: TokenPair[] = lines.map((l) => ({
    promptIds: tokenizer.encode(l.prompt),
    completionIds: tokenizer.encode(l.completion),
  }));
  const context = model.contextLength;
  pairs.forEach((p, i) => {
    const n = Math.max(p.promptIds.length, 1) + p.completionIds.length + 1;
    if (n > context) {
      throw new Error(
        `Cannot score '${opts.data}' line ${
          lines[i]!.line
        }: prompt, completion and eos make ${n} tokens, more than the model's context of ${context}`,
      );
    }
  });
  const progress = createProgress({ unit: "sequences", total: pairs.length });
  const size = opts["batch-size"];
  for (let i = 0; i < pairs.length; i += size) {
    const results = await scorePairs(model, pairs.slice(i, i + size), {
      eosId: tokenizer.eosTokenId,
      bosId: tokenizer.bosTokenId,
      maxLength: model.contextLength,
      batchSize: size,
      average: opts.average,
    });
    await writeStdout(results.map((r) => JSON.stringify({ logp: r.logp, n_tokens: r.nTokens }) + "\n").join(""));
    progress.tick(results.length);
  }
  progress.done();
  model.dispose();
}
