import assert from "node:assert/strict";
import { basename } from "node:path";
import { blocksIn, docFiles, generatedBlocks, tableCells } from "../scripts/_docs_blocks.ts";

Deno.test("docs: every generated table is in the docs and is the one the code makes (deno task docs writes them)", async () => {
  const expected = await generatedBlocks();
  assert.ok(expected.has("settings") && expected.has("options:worker"), [...expected.keys()].join(", "));
  const found = new Set<string>();
  for (const file of await docFiles()) {
    for (const [name, contents] of blocksIn(await Deno.readTextFile(file))) {
      const generated = expected.get(name);
      assert.ok(generated !== undefined, `${basename(file)}: <!-- ${name} --> is no generated block`);
      assert.ok(!found.has(name), `<!-- ${name} --> is in the docs twice`);
      found.add(name);
      assert.deepEqual(
        tableCells(contents),
        tableCells(generated),
        `${basename(file)}: ${name} is out of date: run deno task docs`,
      );
    }
  }
  const missing = [...expected.keys()].filter((name) => !found.has(name));
  assert.deepEqual(
    missing,
    [],
    `no <!-- NAME --> block in README.md or docs/ for these: run deno task docs after adding one`,
  );
});
