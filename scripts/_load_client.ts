/**
 * A lean HTTP/1.1 load client for the benchmarks, in Deno alone: each connection is a raw keep-alive TCP
 * socket that writes one request and reads its response (status, Content-Length or chunked body) before the
 * next. It spends a fraction of the CPU `fetch` does per request, which matters when the client shares the
 * server's cores.
 */

/** One request: a path and a JSON body, POSTed. */
export interface LoadRequest {
  path: string;
  body: string;
}

/** What a load run measured. */
export interface LoadResult {
  rps: number;
  p50: number;
  p99: number;
  /** Answers that were not 2xx, and requests that got no answer. */
  errors: number;
  /** Answers received (2xx or not). */
  n: number;
}

/** Options of `runLoad`. */
export interface LoadOptions {
  /** Base URLs (`http://host:port`); connection `c` goes to `urls[c % urls.length]`. */
  urls: string[];
  seconds: number;
  connections: number;
  /** Extra request headers (authorization, ...). */
  headers: Record<string, string>;
  /** The `k`-th request of the run (counted over every connection). */
  next: (k: number) => LoadRequest;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const CRLF2 = [13, 10, 13, 10];

/** Runs `connections` request loops for `seconds`; latencies in ms. */
export async function runLoad(options: LoadOptions): Promise<LoadResult> {
  const { urls, seconds, connections, headers } = options;
  const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("");
  const latencies: number[] = [];
  let errors = 0;
  let k = 0;
  const end = performance.now() + seconds * 1000;
  await Promise.all(Array.from({ length: connections }, async (_, c) => {
    const url = new URL(urls[c % urls.length]!);
    const conn = await Deno.connect({ hostname: url.hostname, port: Number(url.port) });
    conn.setNoDelay(true);
    const reader = new ResponseReader(conn);
    try {
      while (performance.now() < end) {
        const { path, body } = options.next(k++);
        const bytes = encoder.encode(body);
        const head = `POST ${path} HTTP/1.1\r\nhost: ${url.host}\r\ncontent-type: application/json\r\n` +
          `${extra}content-length: ${bytes.length}\r\n\r\n`;
        const t = performance.now();
        await writeAll(conn, concat(encoder.encode(head), bytes));
        const status = await reader.response();
        latencies.push(performance.now() - t);
        if (status < 200 || status > 299) {
          if (errors++ === 0) console.error(`first error: ${status} ${decoder.decode(reader.lastBody).slice(0, 300)}`);
        }
      }
    } catch (err) {
      errors++;
      console.error(`a connection failed: ${(err as Error).message}`);
    } finally {
      conn.close();
    }
  }));
  latencies.sort((a, b) => a - b);
  return {
    rps: latencies.length / seconds,
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    errors,
    n: latencies.length,
  };
}

/** The `p`-th percentile of sorted values. */
export function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

/** Reads responses off one keep-alive connection, buffering what arrives past the current one. */
class ResponseReader {
  readonly #conn: Deno.Conn;
  #buf: Uint8Array = new Uint8Array(0);
  lastBody: Uint8Array = new Uint8Array(0);

  constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }

  /** Reads one whole response; returns its status. */
  async response(): Promise<number> {
    let headEnd: number;
    while ((headEnd = indexOf(this.#buf, CRLF2)) < 0) await this.#fill();
    const head = decoder.decode(this.#buf.subarray(0, headEnd));
    this.#buf = this.#buf.subarray(headEnd + 4);
    const status = Number(head.slice(9, 12));
    const length = /\r\ncontent-length:\s*(\d+)/i.exec(head);
    if (length) {
      this.lastBody = await this.#take(Number(length[1]));
    } else if (/\r\ntransfer-encoding:\s*chunked/i.test(head)) {
      this.lastBody = await this.#chunked();
    } else {
      throw new Error(`Cannot read a response without a length: ${head.split("\r\n")[0]}`);
    }
    return status;
  }

  async #chunked(): Promise<Uint8Array> {
    const parts: Uint8Array[] = [];
    while (true) {
      let lineEnd: number;
      while ((lineEnd = indexOf(this.#buf, [13, 10])) < 0) await this.#fill();
      const size = parseInt(decoder.decode(this.#buf.subarray(0, lineEnd)), 16);
      this.#buf = this.#buf.subarray(lineEnd + 2);
      const chunk = await this.#take(size + 2);
      if (size === 0) return concat(...parts);
      parts.push(chunk.subarray(0, size));
    }
  }

  async #take(n: number): Promise<Uint8Array> {
    while (this.#buf.length < n) await this.#fill();
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    return out;
  }

  async #fill(): Promise<void> {
    const chunk = new Uint8Array(16 * 1024);
    const read = await this.#conn.read(chunk);
    if (read === null) throw new Error("the server closed the connection");
    this.#buf = this.#buf.length === 0 ? chunk.subarray(0, read) : concat(this.#buf, chunk.subarray(0, read));
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let done = 0; done < bytes.length;) done += await conn.write(bytes.subarray(done));
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function indexOf(haystack: Uint8Array, needle: number[]): number {
  outer: for (let i = 0; i <= haystack.length - needle.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}
