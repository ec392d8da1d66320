/**
 * The documentation's links hold: every relative link and image in README.md and docs/*.md names a file that
 * exists (relative to the file it is in), and every `#anchor`, into the same file or another Markdown file, names
 * one of its headings, slugged as GitHub does (lowercase, punctuation removed, spaces to '-', a repeated
 * heading's slug numbered -1, -2, ...). Links in code (fenced blocks, inline code) are not links.
 */
import assert from "node:assert/strict";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** README.md and every Markdown file of docs/, absolute paths. */
async function docFiles(): Promise<string[]> {
  const files = [join(ROOT, "README.md")];
  for await (const e of Deno.readDir(join(ROOT, "docs"))) {
    if (e.isFile && e.name.endsWith(".md")) files.push(join(ROOT, "docs", e.name));
  }
  return files.sort();
}

/** The text without fenced code blocks (``` or ~~~) and indented code blocks after a blank line. */
function withoutCodeBlocks(markdown: string): string[] {
  const out: string[] = [];
  let fence: string | null = null, previousBlank = true, indented = false;
  for (const line of markdown.split("\n")) {
    const marker = /^\s{0,3}(`{3,}|~{3,})/.exec(line)?.[1];
    if (fence) {
      if (marker && marker[0] === fence[0] && marker.length >= fence.length) fence = null;
      out.push("");
    } else if (marker) {
      fence = marker;
      out.push("");
    } else if ((previousBlank || indented) && /^( {4}|\t)/.test(line) && line.trim()) {
      indented = true;
      out.push("");
    } else {
      if (line.trim()) indented = false;
      out.push(line);
    }
    previousBlank = !line.trim();
  }
  return out;
}

/** The text without inline code spans (which may cross lines within a paragraph). */
function withoutInlineCode(text: string): string {
  return text.replace(/(`+)(?!`)[\s\S]*?[^`]\1(?!`)/g, "");
}

/** GitHub's anchor for a heading's text (github-slugger on the rendered text). */
export function slug(heading: string): string {
  const text = heading
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, "$1") // links and images: their text
    .replace(/<[^>]+>/g, "") // inline HTML
    .replace(/`/g, "") // code spans keep their text
    .replace(/(\*\*|__|\*)/g, "") // emphasis marks
    .trim()
    .toLowerCase();
  return text.replace(/[^\p{L}\p{M}\p{N}\p{Pc} -]/gu, "").replace(/ /g, "-");
}

/** Every anchor a Markdown text defines through its ATX headings, numbered as GitHub numbers repeats. */
export function anchorsOf(markdown: string): Set<string> {
  const anchors = new Set<string>(), seen = new Map<string, number>();
  for (const line of withoutCodeBlocks(markdown)) {
    const m = /^\s{0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$/.exec(line);
    if (!m) continue;
    const base = slug(m[1]!);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    anchors.add(n === 0 ? base : `${base}-${n}`);
  }
  return anchors;
}

/** Every inline link and image target of a Markdown text, outside code. */
export function linksOf(markdown: string): string[] {
  const text = withoutInlineCode(withoutCodeBlocks(markdown).join("\n"));
  return [...text.matchAll(/!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+"[^"]*")?\s*\)/g)].map((m) => m[1]!);
}

/** What is wrong with the links of `file` (absolute path), one line each; empty when every link holds. */
export async function brokenLinks(file: string, root = ROOT): Promise<string[]> {
  const text = await Deno.readTextFile(file);
  const problems: string[] = [];
  const name = relative(root, file);
  for (const target of linksOf(text)) {
    if (/^[a-z][a-z0-9+.-]*:/i.test(target) || target.startsWith("//")) continue; // http:, mailto:, ...
    const hash = target.indexOf("#");
    const path = decodeURIComponent(hash < 0 ? target : target.slice(0, hash));
    const anchor = hash < 0 ? null : decodeURIComponent(target.slice(hash + 1));
    const to = path === "" ? file : resolve(dirname(file), path);
    let isFile = false;
    try {
      isFile = (await Deno.stat(to)).isFile;
    } catch {
      problems.push(`${name}: link to ${target}: ${relative(root, to)} does not exist`);
      continue;
    }
    if (anchor === null || anchor === "") continue;
    if (!isFile || !to.endsWith(".md")) {
      problems.push(`${name}: link to ${target}: an anchor into a file that is not Markdown`);
      continue;
    }
    const anchors = anchorsOf(to === file ? text : await Deno.readTextFile(to));
    if (!anchors.has(anchor)) {
      problems.push(`${name}: link to ${target}: ${relative(root, to)} has no heading #${anchor}`);
    }
  }
  return problems;
}

Deno.test("docs: every relative link and image in README.md and docs/ points at a file and heading that exist", async () => {
  const files = await docFiles();
  assert.ok(files.length > 1, "README.md and docs/*.md");
  const problems = (await Promise.all(files.map((f) => brokenLinks(f)))).flat();
  assert.deepEqual(problems, [], problems.join("\n"));
  // The front door links into every page of docs/.
  const readme = linksOf(await Deno.readTextFile(join(ROOT, "README.md")));
  const unlinked = files.filter((f) => f.includes("/docs/"))
    .filter((f) => !readme.some((l) => l.split("#")[0] === relative(ROOT, f)));
  assert.deepEqual(unlinked.map((f) => relative(ROOT, f)), [], "docs/ pages the README does not link to");
});

Deno.test("docs: GitHub's heading slugs", () => {
  assert.equal(
    slug("`deno task start`: the whole loop in one command"),
    "deno-task-start-the-whole-loop-in-one-command",
  );
  assert.equal(
    slug("What a chat app's users say becomes preferences"),
    "what-a-chat-apps-users-say-becomes-preferences",
  );
  assert.equal(slug("Thumbs train the policy online (KTO)"), "thumbs-train-the-policy-online-kto");
  assert.equal(slug("Never serve a regression: the promotion gate"), "never-serve-a-regression-the-promotion-gate");
  assert.equal(slug("`GET /v1/dashboard`"), "get-v1dashboard");
  assert.equal(slug("**Bold** and [a link](x.md) — dash"), "bold-and-a-link--dash");
  assert.deepEqual([...anchorsOf("# A\n\n## A\n\n```\n# not a heading\n```\n\n### A b_c\n")], ["a", "a-1", "a-b_c"]);
});

Deno.test("docs: the check fails on a missing file, a missing heading, and ignores code and URLs", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.mkdir(join(dir, "docs"));
    await Deno.writeTextFile(join(dir, "docs", "b.md"), "# B\n\n## Some part\n");
    await Deno.writeTextFile(join(dir, "pic.svg"), "<svg/>");
    await Deno.writeTextFile(
      join(dir, "README.md"),
      [
        "# Top",
        "[ok](docs/b.md#some-part) ![ok](pic.svg) [ok](#top) [web](https://example.com/x.md#nope)",
        "`[code](missing.md)`",
        "```\n[fenced](missing.md)\n```",
        "[gone](docs/missing.md) ![gone](docs/pic.svg) [bad anchor](docs/b.md#other-part) [bad](#nowhere)",
      ].join("\n\n"),
    );
    assert.deepEqual(await brokenLinks(join(dir, "README.md"), dir), [
      "README.md: link to docs/missing.md: docs/missing.md does not exist",
      "README.md: link to docs/pic.svg: docs/pic.svg does not exist",
      "README.md: link to docs/b.md#other-part: docs/b.md has no heading #other-part",
      "README.md: link to #nowhere: README.md has no heading #nowhere",
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
