/** `main.ts serve` in a process of its own, for the benchmarks that drive it over loopback. */
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** A `serve` process and where it listens. */
export interface ServeProcess {
  child: Deno.ChildProcess;
  url: string;
}

/**
 * Starts `deno run -A main.ts serve` with `args` (which should include `--port 0`) and `env`; resolves once it
 * says where it listens, and keeps draining its log so that it never blocks on a full pipe. A server that exits
 * first, or does not listen within `timeoutS` seconds (then it is killed), is an error with its log.
 */
export async function startServe(args: string[], env: Record<string, string>, timeoutS = 300): Promise<ServeProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(ROOT, "main.ts"), "serve", ...args],
    env: { NO_COLOR: "1", ...env },
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutS * 1000);
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`Cannot start the server: it exited before listening:\n${text.trim()}`);
      text += value;
      const m = /listening on (http:\/\/[\d.]+:\d+)/.exec(text);
      if (m) {
        (async () => {
          while (!(await reader.read()).done);
        })();
        return { child, url: m[1]! };
      }
    }
  } finally {
    clearTimeout(timer);
  }
}

/** Stops a server (SIGTERM, as Ctrl-C does) and waits for it to exit; one already gone is fine. */
export async function stopServe(server: ServeProcess | undefined): Promise<void> {
  if (!server) return;
  try {
    server.child.kill("SIGTERM");
  } catch {
    // Already gone.
  }
  await server.child.status;
}
