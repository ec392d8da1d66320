/**
 * Writes the README's generated parts from the code: the table of `start`'s settings, between the
 * `<!-- settings -->` and `<!-- /settings -->` marks (then `deno fmt README.md` aligns it). A test
 * (src/cli/_start_config_test.ts) fails when the README and the code disagree.
 *
 *   deno task docs
 */
import { scriptArgs } from "./_args.ts";
import { settingsTable } from "../src/cli/_start_config.ts";
import { START_DEFAULTS } from "../src/cli/start.ts";
import { fileURLToPath } from "node:url";

scriptArgs(import.meta.url, {});
const README = fileURLToPath(new URL("../README.md", import.meta.url));
const text = await Deno.readTextFile(README);
const open = "<!-- settings -->\n", close = "<!-- /settings -->";
const start = text.indexOf(open), end = text.indexOf(close);
if (start < 0 || end < start) {
  throw new Error(`Cannot update README.md: the marks ${open.trim()} and ${close} are missing`);
}
await Deno.writeTextFile(
  README,
  text.slice(0, start + open.length) + "\n" + settingsTable(START_DEFAULTS) + "\n\n" + text.slice(end),
);
console.error("README.md: settings table written; run deno fmt README.md");
