/** The keys `start` keeps under its data directory, so that a restart keeps the URLs it printed working. */
import { join } from "node:path";
import { checkKeyLengths } from "../server/http.ts";

/** Where a key came from, for the banner. */
export interface KeySet {
  keys: string[];
  /** `DPO_API_KEYS`, or the file the key was made into. */
  source: string;
  /** True when the key was made just now. */
  created: boolean;
}

/** The comma-separated keys of an environment variable's value (blanks around them and empty ones dropped). */
export function splitKeys(value: string | undefined): string[] {
  return (value ?? "").split(",").map((k) => k.trim()).filter((k) => k.length > 0);
}

/**
 * The keys from an environment variable (comma-separated) when it is set, else the key kept in
 * `dataDir/file`, made on first use (readable by the owner only).
 */
export async function loadOrCreateKeys(
  options: { env: string | undefined; envName: string; dataDir: string; file: string; prefix: string },
): Promise<KeySet> {
  const fromEnv = checkKeyLengths(splitKeys(options.env), options.envName);
  if (fromEnv.length > 0) return { keys: fromEnv, source: options.envName, created: false };
  const path = join(options.dataDir, options.file);
  try {
    const key = (await Deno.readTextFile(path)).trim();
    checkKeyLengths([key], `the key in '${path}'`);
    return { keys: [key], source: path, created: false };
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  const key = `${options.prefix}${crypto.randomUUID().replaceAll("-", "")}`;
  await Deno.mkdir(options.dataDir, { recursive: true });
  await Deno.writeTextFile(path, key + "\n", { mode: 0o600, createNew: true });
  return { keys: [key], source: path, created: true };
}
