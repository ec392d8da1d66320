/** The roles of a chaos run as processes: started, killed with -9, restarted, and read for readiness. */
import { fileURLToPath } from "node:url";
import { sleep } from "./_chaos_util.ts";

const MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));
const LOG_TAIL_CHARS = 32_000;

/** The roles the harness runs and kills. */
export const ROLES = ["serve", "judge", "worker"] as const;
/** One of `ROLES`. */
export type Role = (typeof ROLES)[number];

/** How a role is run: its working directory, its arguments to `main.ts` and its environment. */
interface RoleSpec {
  dir: string;
  args: string[];
  env: Record<string, string>;
}

/** One role as a process, restarted by hand after a kill and by itself after a crash. */
export class RoleProcess {
  readonly role: Role;
  readonly #spec: RoleSpec;
  readonly #onCrash: (code: number, signal: string | null, output: string) => void;
  #child: Deno.ChildProcess | null = null;
  #exited: Promise<unknown> = Promise.resolve();
  #intentional = false;
  #stopping = false;
  /** The first output of the current incarnation (what readiness is read from). */
  head = "";
  /** The last output over all incarnations. */
  tail = "";
  startedAt = 0;
  /** The server's URL while it listens. */
  url: string | undefined;
  /** Whether the current incarnation is up; the default reads its first output. */
  ready: (p: RoleProcess) => boolean | Promise<boolean>;

  constructor(
    role: Role,
    spec: RoleSpec,
    onCrash: (code: number, signal: string | null, output: string) => void,
  ) {
    this.role = role;
    this.#spec = spec;
    this.#onCrash = onCrash;
    this.ready = role === "serve" ? (p) => p.url !== undefined : (p) => /judge .* on /.test(p.head);
  }

  start(): void {
    this.#intentional = false;
    this.url = undefined;
    this.head = "";
    this.startedAt = Date.now();
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", MAIN, ...this.#spec.args],
      cwd: this.#spec.dir,
      env: this.#spec.env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#child = child;
    this.tail += `\n--- ${this.role} started (pid ${child.pid}) ---\n`;
    for (const stream of [child.stdout, child.stderr]) this.#pump(child, stream).catch(() => {});
    this.#exited = child.status.then((status) => {
      if (this.#child === child) this.#child = null;
      this.tail += `\n--- ${this.role} pid ${child.pid} exited (code ${status.code}, signal ${status.signal}) ---\n`;
      if (this.#intentional || this.#stopping) return;
      this.#onCrash(status.code, status.signal, this.tail.slice(-2000));
      setTimeout(() => {
        if (!this.#stopping && this.#child === null) this.start();
      }, 1000);
    });
  }

  async #pump(child: Deno.ChildProcess, stream: ReadableStream<Uint8Array>): Promise<void> {
    const decoder = new TextDecoder();
    for await (const bytes of stream) {
      const text = decoder.decode(bytes, { stream: true });
      this.tail = (this.tail + text).slice(-LOG_TAIL_CHARS);
      if (this.#child !== child) continue;
      if (this.head.length < 8192) this.head += text;
      const listening = /listening on (http:\/\/\S+)/.exec(this.head);
      if (listening) this.url = listening[1];
    }
  }

  /** Sends a signal now (SIGSTOP at the switch); false when there is no process. */
  signal(signal: Deno.Signal): boolean {
    try {
      this.#child?.kill(signal);
      return this.#child !== null;
    } catch {
      return false;
    }
  }

  /** kill -9 and wait for the exit; `start` brings it back. */
  async kill(): Promise<void> {
    this.#intentional = true;
    this.signal("SIGKILL");
    await this.#exited;
  }

  /** Stops for good: SIGTERM, then SIGKILL after `graceMs`. */
  async shutdown(graceMs: number): Promise<void> {
    this.#stopping = true;
    if (graceMs > 0 && this.signal("SIGTERM")) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([this.#exited, new Promise((r) => timer = setTimeout(r, graceMs))]);
      clearTimeout(timer);
    }
    this.signal("SIGCONT");
    this.signal("SIGKILL");
    await this.#exited;
  }

  async waitReady(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (!(this.#child && await this.ready(this))) {
      if (signal?.aborted) throw new Error(`The chaos run was interrupted while the ${this.role} started`);
      if (Date.now() > end) {
        throw new Error(`Cannot run the chaos test as the ${this.role} did not start: ${this.tail.slice(-3000)}`);
      }
      await sleep(100);
    }
  }
}
