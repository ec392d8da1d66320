/** The roles as processes for the integration tests: start one with its log collected, wait for a condition. */
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root. */
export const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** A running command of `main.ts`, its stdout and stderr collected as they come. */
export interface Proc {
  child: Deno.ChildProcess;
  log: string[];
}

/** Starts `main.ts args` in `dir` with `env`. */
export function start(dir: string, args: string[], env: Record<string, string>): Proc {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(ROOT, "main.ts"), ...args],
    cwd: dir,
    stdout: "piped",
    stderr: "piped",
    env,
  }).spawn();
  const log: string[] = [];
  for (const stream of [child.stdout, child.stderr]) {
    stream.pipeThrough(new TextDecoderStream()).pipeTo(new WritableStream({ write: (t) => void log.push(t) }));
  }
  return { child, log };
}

/** Polls `fn` every 200 ms until it gives a value (errors count as none); throws after `timeoutMs`. */
export async function until<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}`);
}
