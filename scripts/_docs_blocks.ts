/**
 * The generated parts of the documentation, made from the code: `start`'s settings table (block
 * `settings`) and each other command's options table (block `options:NAME`). A block sits in a Markdown
 * file between `<!-- NAME -->` and `<!-- /NAME -->`; `deno task docs` fills every block it finds in
 * README.md and docs/, and tests/generated_docs_test.ts fails when one is out of date or missing.
 */
import { fileURLToPath } from "node:url";
import { COMMANDS } from "../main.ts";
import { settingsTable } from "../src/cli/_start_config.ts";
import { optionsTable } from "../src/cli/_options.ts";
import { START_DEFAULTS } from "../src/cli/start.ts";

/** Every generated block by name. */
export async function generatedBlocks(): Promise<Map<string, string>> {
  const blocks = new Map([["settings", settingsTable(START_DEFAULTS)]]);
  for (const [name, command] of Object.entries(COMMANDS)) {
    const { options } = await command.load();
    if (options) blocks.set(`options:${name}`, optionsTable(options));
  }
  return blocks;
}

/** The Markdown files that may hold blocks: README.md and docs/*.md. */
export async function docFiles(): Promise<string[]> {
  const root = fileURLToPath(new URL("../", import.meta.url));
  const files = [`${root}README.md`];
  for await (const entry of Deno.readDir(`${root}docs`)) {
    if (entry.isFile && entry.name.endsWith(".md")) files.push(`${root}docs/${entry.name}`);
  }
  return files.sort();
}

const BLOCK = /<!-- ([a-z]+(?::[a-z-]+)?) -->\n([\s\S]*?)<!-- \/\1 -->/g;

/** The blocks a Markdown text holds, by name, with their contents. */
export function blocksIn(text: string): Map<string, string> {
  return new Map([...text.matchAll(BLOCK)].map((m) => [m[1]!, m[2]!]));
}

/** `text` with every block it holds that `blocks` has replaced by its contents (then `deno fmt` aligns them). */
export function fillBlocks(text: string, blocks: Map<string, string>): string {
  return text.replaceAll(BLOCK, (whole, name: string) => {
    const contents = blocks.get(name);
    return contents === undefined ? whole : `<!-- ${name} -->\n\n${contents}\n\n<!-- /${name} -->`;
  });
}

/** A Markdown table's cells, row by row, without the separator row: what two tables agree on whatever the padding. */
export function tableCells(markdown: string): string[][] {
  return markdown.trim().split("\n").filter((line) => line.startsWith("|") && !/^\|[\s|:-]+\|$/.test(line))
    .map((line) => line.split(/(?<!\\)\|/).slice(1, -1).map((c) => c.trim()));
}
