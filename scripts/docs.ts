/**
 * Writes the docs' generated parts from the code: every `<!-- NAME -->` … `<!-- /NAME -->` block in
 * README.md and docs/*.md (`start`'s settings table, each command's options table: see
 * `_docs_blocks.ts`), then `deno task docs` formats them with `deno fmt`. A test
 * (tests/generated_docs_test.ts) fails when the docs and the code disagree, or a command has no table.
 *
 *   deno task docs
 */
import { basename } from "node:path";
import { scriptArgs } from "./_args.ts";
import { blocksIn, docFiles, fillBlocks, generatedBlocks } from "./_docs_blocks.ts";

scriptArgs(import.meta.url, {});
const blocks = await generatedBlocks();
const placed = new Set<string>();
for (const file of await docFiles()) {
  const text = await Deno.readTextFile(file);
  const names = [...blocksIn(text).keys()];
  if (names.length === 0) continue;
  const unknown = names.filter((name) => !blocks.has(name));
  if (unknown.length > 0) throw new Error(`Cannot update ${basename(file)}: no generated block is named ${unknown}`);
  await Deno.writeTextFile(file, fillBlocks(text, blocks));
  for (const name of names) placed.add(name);
  console.error(`${basename(file)}: ${names.join(", ")} written`);
}
const missing = [...blocks.keys()].filter((name) => !placed.has(name));
if (missing.length > 0) console.error(`not in any doc yet (add <!-- NAME --> <!-- /NAME --> marks): ${missing}`);
