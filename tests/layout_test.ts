/**
 * The layout's rules, checked over the source tree: no import circles among the modules of `src/`, a
 * private (`_`-prefixed) module imported only from its own area of `src/` (`src/model/`, `src/server/`, ...;
 * the `_test*` helpers excepted), and nothing outside `src/store/` reading or writing KV itself.
 */
import assert from "node:assert/strict";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const SRC = join(ROOT, "src");

async function sourceFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const path = join(dir, e.name);
    if (e.isDirectory) out.push(...await sourceFiles(path));
    else if (e.name.endsWith(".ts") && !e.name.endsWith("_test.ts")) out.push(path);
  }
  return out;
}

/** Every relative module a file imports or re-exports statically (type-only imports included). */
function importsOf(file: string, text: string): string[] {
  const found = text.matchAll(/^\s*(?:import|export)\b[^;]*?\bfrom\s+"(\.{1,2}\/[^"]+)"/gm);
  return [...found].map((m) => resolve(dirname(file), m[1]!));
}

const files = await sourceFiles(SRC);
const texts = new Map(await Promise.all(files.map(async (f) => [f, await Deno.readTextFile(f)] as const)));
const graph = new Map(files.map((f) => [f, importsOf(f, texts.get(f)!)]));
const rel = (f: string) => relative(ROOT, f);

Deno.test("the tree has the modules this test reads", () => {
  assert.ok(files.length > 100, `only ${files.length} modules found under src/`);
  assert.ok([...graph.values()].flat().length > 300, "imports not found: the pattern no longer matches them");
});

Deno.test("no import circles among the modules of src/", () => {
  const state = new Map<string, "open" | "done">();
  const circles: string[] = [];
  const visit = (file: string, path: string[]) => {
    state.set(file, "open");
    for (const dep of graph.get(file) ?? []) {
      if (state.get(dep) === "open") circles.push([...path.slice(path.indexOf(dep)), dep].map(rel).join(" -> "));
      else if (!state.has(dep)) visit(dep, [...path, dep]);
    }
    state.set(file, "done");
  };
  for (const f of files) if (!state.has(f)) visit(f, [f]);
  assert.deepEqual(circles, []);
});

Deno.test("a private module is imported only from its own area of src/", () => {
  const area = (f: string) => relative(SRC, f).split("/")[0];
  const leaks: string[] = [];
  for (const [file, deps] of graph) {
    for (const dep of deps) {
      const name = dep.split("/").at(-1)!;
      if (name.startsWith("_") && !name.startsWith("_test") && area(file) !== area(dep)) {
        leaks.push(`${rel(file)} -> ${rel(dep)}`);
      }
    }
  }
  assert.deepEqual(leaks, []);
});

Deno.test("nothing outside src/store/ reads or writes KV itself", () => {
  const raw = /\bkv\??\.(get|getMany|set|delete|list|atomic|enqueue|listenQueue|watch)\(|\bDeno\.openKv\(/;
  const offenders = files.filter((f) => !f.startsWith(join(SRC, "store") + "/") && raw.test(texts.get(f)!));
  assert.deepEqual(offenders.map(rel), []);
});
