/** Resolves `--model` to a local directory: a directory as is, or `hf:OWNER/NAME[@REVISION]` downloaded once into a cache. */
import { downloadFile, HubApiError } from "@huggingface/hub";
import { join, resolve } from "node:path";
import { z } from "zod";
import { fileExists, writeAtomic } from "../../util/fs.ts";

/** Options of `resolveModel`. */
export interface ResolveModelOptions {
  /** Cache root; default `$DPO_CACHE_DIR`, else `$HF_HOME/dpo-deno`, else `~/.cache/dpo-deno/hub`. */
  cacheDir?: string;
  /** Hub base URL; default `$HF_ENDPOINT`, else https://huggingface.co. */
  hubUrl?: string;
  /** Access token for gated or private models; default `$HF_TOKEN`; "" sends none. */
  accessToken?: string;
  /** fetch to use (tests, proxies); default the global fetch. */
  fetch?: typeof fetch;
  /** How long to wait for a response's headers before calling the Hub unreachable; default 30,000 ms. */
  timeoutMs?: number;
  /** Called as each file's bytes arrive; `total` is the file size. */
  onProgress?: (progress: { path: string; loaded: number; total: number }) => void;
}

/** A parsed `--model` value. */
export type ModelSpec =
  | { kind: "local"; path: string }
  | { kind: "hub"; owner: string; name: string; revision: string };

const DEFAULT_HUB_URL = "https://huggingface.co";
const DEFAULT_TIMEOUT_MS = 30_000;
/** Files fetched when the repository has them; their absence is not an error. */
const OPTIONAL_FILES = [
  "generation_config.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "chat_template.jinja",
];
const REQUIRED_FILES = ["config.json", "tokenizer.json"];
const ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors"] as const;
const SINGLE_WEIGHTS = "model.safetensors";
const SHARD_INDEX = "model.safetensors.index.json";
/** Written last: its presence means every file of the model is in the directory. */
const COMPLETE_MARKER = ".dpo-complete.json";

const HUB_SPEC =
  /^hf:([A-Za-z0-9][A-Za-z0-9._-]{0,95})\/([A-Za-z0-9][A-Za-z0-9._-]{0,95})(?:@([A-Za-z0-9][A-Za-z0-9._/-]{0,199}))?$/;
const SHARD_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*\.safetensors$/;

const ShardIndexSchema = z.looseObject({ weight_map: z.record(z.string(), z.string()) });
const MarkerSchema = z.object({ files: z.array(z.string()) });

/** Parses a `--model` value: `hf:OWNER/NAME[@REVISION]` (revision default "main"), anything else a local path. */
export function parseModelSpec(spec: string): ModelSpec {
  if (!spec.startsWith("hf:")) return { kind: "local", path: spec };
  const m = HUB_SPEC.exec(spec);
  if (m === null || spec.includes("..")) {
    throw new Error(
      `Cannot parse model '${spec}' as a Hub model must be written hf:OWNER/NAME or hf:OWNER/NAME@REVISION ` +
        "(letters, digits, '.', '_', '-'; no '..'), e.g. hf:openai-community/gpt2@main",
    );
  }
  return { kind: "hub", owner: m[1]!, name: m[2]!, revision: m[3] ?? "main" };
}

/** The default cache root, from the environment. */
export function defaultCacheDir(): string {
  const dpo = env("DPO_CACHE_DIR");
  if (dpo) return dpo;
  const hfHome = env("HF_HOME");
  if (hfHome) return join(hfHome, "dpo-deno");
  const home = env("HOME") ?? env("USERPROFILE");
  if (!home) throw new Error("Cannot choose a model cache directory as none of DPO_CACHE_DIR, HF_HOME, HOME is set");
  return join(home, ".cache", "dpo-deno", "hub");
}

/** Returns a local directory holding the model `spec` names, downloading it from the Hub if needed. */
export async function resolveModel(spec: string, options: ResolveModelOptions = {}): Promise<string> {
  const parsed = parseModelSpec(spec);
  if (parsed.kind === "local") return await checkLocalDir(parsed.path);

  const hubUrl = (options.hubUrl ?? (env("HF_ENDPOINT") || DEFAULT_HUB_URL)).replace(/\/+$/, "");
  if (!/^https?:$/.test(URL.parse(hubUrl)?.protocol ?? "")) {
    throw new Error(
      `Cannot download model '${spec}' as the Hub URL must be an http(s) URL: current value is '${hubUrl}'`,
    );
  }
  const accessToken = (options.accessToken ?? env("HF_TOKEN")) || undefined;
  if (accessToken !== undefined && !accessToken.startsWith("hf_")) {
    // @huggingface/hub rejects other tokens itself, with a message that names no variable.
    throw new Error(`Cannot download model '${spec}' as the access token (HF_TOKEN) must start with 'hf_'`);
  }
  const dir = join(
    options.cacheDir ?? defaultCacheDir(),
    `${parsed.owner}--${parsed.name}`,
    encodeURIComponent(parsed.revision),
  );
  if (await isComplete(dir)) return dir;
  await Deno.mkdir(dir, { recursive: true });

  const ctx: Download = {
    spec,
    repo: `${parsed.owner}/${parsed.name}`,
    revision: parsed.revision,
    hubUrl,
    accessToken,
    dir,
    fetch: guardedFetch(options.fetch ?? globalThis.fetch, options.timeoutMs ?? DEFAULT_TIMEOUT_MS),
    onProgress: options.onProgress,
  };
  const files: string[] = [];
  // A PEFT adapter repository: its two files (the base is loaded from the name its config gives).
  if (await fetchFile(ctx, ADAPTER_FILES[0])) {
    if (!await fetchFile(ctx, ADAPTER_FILES[1])) {
      fail(ctx, `the repository has '${ADAPTER_FILES[0]}' but no '${ADAPTER_FILES[1]}' at revision '${ctx.revision}'`);
    }
    await writeAtomic(
      join(dir, COMPLETE_MARKER),
      new TextEncoder().encode(JSON.stringify({ files: [...ADAPTER_FILES] })),
    );
    return dir;
  }
  for (const path of REQUIRED_FILES) {
    if (!await fetchFile(ctx, path)) fail(ctx, `the repository has no '${path}' at revision '${ctx.revision}'`);
    files.push(path);
  }
  for (const path of OPTIONAL_FILES) {
    if (await fetchFile(ctx, path)) files.push(path);
  }
  files.push(...await fetchWeights(ctx));
  await writeAtomic(join(dir, COMPLETE_MARKER), new TextEncoder().encode(JSON.stringify({ files }, null, 1)));
  return dir;
}

interface Download {
  spec: string;
  repo: string;
  revision: string;
  hubUrl: string;
  accessToken?: string;
  dir: string;
  fetch: typeof fetch;
  onProgress?: ResolveModelOptions["onProgress"];
}

/** model.safetensors, or the shard index and every shard it names; returns the files now present. */
async function fetchWeights(ctx: Download): Promise<string[]> {
  if (await fileExists(join(ctx.dir, SINGLE_WEIGHTS))) return [SINGLE_WEIGHTS];
  const haveIndex = await fileExists(join(ctx.dir, SHARD_INDEX));
  if (!haveIndex) {
    if (await fetchFile(ctx, SINGLE_WEIGHTS)) return [SINGLE_WEIGHTS];
    if (!await fetchFile(ctx, SHARD_INDEX)) {
      fail(
        ctx,
        `the repository has neither '${SINGLE_WEIGHTS}' nor '${SHARD_INDEX}' at revision '${ctx.revision}' ` +
          "(only safetensors weights are supported)",
      );
    }
  }
  const shards = await readShardNames(ctx, join(ctx.dir, SHARD_INDEX));
  for (const shard of shards) {
    if (!await fetchFile(ctx, shard)) {
      fail(ctx, `'${SHARD_INDEX}' names the shard '${shard}', which the repository does not have`);
    }
  }
  return [SHARD_INDEX, ...shards];
}

async function readShardNames(ctx: Download, path: string): Promise<string[]> {
  let raw: unknown;
  try {
    raw = JSON.parse(await Deno.readTextFile(path));
  } catch (err) {
    fail(ctx, `'${SHARD_INDEX}' is not valid JSON (${(err as Error).message})`);
  }
  const parsed = ShardIndexSchema.safeParse(raw);
  if (!parsed.success) fail(ctx, `'${SHARD_INDEX}' has no valid 'weight_map' (${parsed.error.issues[0]?.message})`);
  const shards = [...new Set(Object.values(parsed.data!.weight_map))].sort();
  const bad = shards.find((s) => !SHARD_NAME.test(s));
  // Shard names become local paths: refuse anything that could leave the directory.
  if (bad !== undefined) {
    fail(ctx, `'${SHARD_INDEX}' names the shard '${bad}', which is not a plain *.safetensors file name`);
  }
  if (shards.length === 0) fail(ctx, `'${SHARD_INDEX}' names no shards`);
  return shards;
}

/** Downloads `path` into the cache unless it is there; false when the repository has no such file. */
async function fetchFile(ctx: Download, path: string): Promise<boolean> {
  const dest = join(ctx.dir, path);
  if (await fileExists(dest)) return true;
  let blob: Blob | null;
  try {
    blob = await downloadFile({
      repo: { type: "model", name: ctx.repo },
      path,
      revision: ctx.revision,
      hubUrl: ctx.hubUrl,
      accessToken: ctx.accessToken,
      fetch: ctx.fetch,
      // Plain HTTP (the Hub redirects to its storage); the Xet protocol path cannot be tested offline.
      xet: false,
    });
  } catch (err) {
    throw describeFailure(ctx, path, err);
  }
  if (blob === null) return false;

  const total = blob.size;
  const tmp = `${dest}.part-${crypto.randomUUID()}`;
  let loaded = 0;
  try {
    const file = await Deno.open(tmp, { write: true, createNew: true });
    try {
      for await (const chunk of blob.stream()) {
        await writeAll(file, chunk);
        loaded += chunk.byteLength;
        ctx.onProgress?.({ path, loaded, total });
      }
      await file.sync();
    } finally {
      file.close();
    }
    if (loaded !== total) {
      fail(ctx, `the download of '${path}' stopped at ${loaded} of ${total} bytes`);
    }
    await Deno.rename(tmp, dest);
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    if (err instanceof ResolveError) throw err;
    // WebBlob.stream() aborts with the error's message only, so `err` may be a string.
    const reason = err instanceof Error ? err.message : String(err);
    throw new ResolveError(
      `Cannot download model '${ctx.spec}': the download of '${path}' failed after ${loaded} of ${total} bytes ` +
        `(${shortCause(reason)}); run again to retry`,
      { cause: err },
    );
  }
  return true;
}

/** Errors this module raised with a final message. */
class ResolveError extends Error {}

/** Raised by `guardedFetch` when no HTTP response came back at all. */
class UnreachableError extends Error {}

function fail(ctx: Download, problem: string): never {
  throw new ResolveError(`Cannot download model '${ctx.spec}': ${problem}`);
}

/** Turns a library or network error into a message saying what happened and what to do. */
function describeFailure(ctx: Download, path: string, err: unknown): Error {
  const head = `Cannot download model '${ctx.spec}'`;
  if (err instanceof ResolveError) return err;
  if (err instanceof UnreachableError) {
    return new ResolveError(
      `${head}: the Hugging Face Hub at ${ctx.hubUrl} is unreachable (${err.message}). ` +
        "Download it on a machine with network access and pass --model DIR.",
      { cause: err },
    );
  }
  if (err instanceof HubApiError) {
    const said = hubMessage(err);
    switch (err.statusCode) {
      case 401:
        return new ResolveError(
          `${head}: the Hub at ${ctx.hubUrl} refused '${path}' with 401 Unauthorized (${said}). ` +
            (ctx.accessToken
              ? "HF_TOKEN was sent but not accepted: check that it is valid and can read this repository."
              : "The model may be gated or private (or may not exist): set HF_TOKEN to a token that can read it."),
          { cause: err },
        );
      case 403:
        return new ResolveError(
          `${head}: the Hub at ${ctx.hubUrl} refused '${path}' with 403 Forbidden (${said}). ` +
            "The model is gated or private and this token has no access: request access on the model's page, " +
            "or set HF_TOKEN to a token that has it.",
          { cause: err },
        );
      case 404:
        return new ResolveError(
          `${head}: the repository '${ctx.repo}' or its revision '${ctx.revision}' was not found on the Hub at ` +
            `${ctx.hubUrl} (404: ${said})`,
          { cause: err },
        );
      default:
        return new ResolveError(
          `${head}: the Hub at ${ctx.hubUrl} answered ${err.statusCode} for '${path}' (${said})`,
          { cause: err },
        );
    }
  }
  return new ResolveError(`${head}: fetching '${path}' failed (${(err as Error)?.message ?? String(err)})`, {
    cause: err,
  });
}

/** The Hub's own explanation, without the URL trailer the library appends. */
function hubMessage(err: HubApiError): string {
  const data = err.data as { error?: unknown; message?: unknown } | undefined;
  const said = typeof data?.error === "string" ? data.error : typeof data?.message === "string" ? data.message : "";
  return said.trim() || err.message.replace(/\. URL: .*$/s, "");
}

/**
 * Wraps fetch so that (1) a request that gets no response (DNS, refused, timeout) raises
 * UnreachableError, and (2) the tiny `Range: bytes=0-0` probe bodies the library never reads are
 * read, so no connection is left open.
 */
function guardedFetch(inner: typeof fetch, timeoutMs: number): typeof fetch {
  return async (input, init) => {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    const outer = init?.signal;
    const onAbort = () => controller.abort(outer?.reason);
    outer?.addEventListener("abort", onAbort, { once: true });
    let response: Response;
    try {
      response = await inner(input, { ...init, signal: controller.signal });
    } catch (err) {
      if (outer?.aborted) throw err;
      const cause = controller.signal.aborted
        ? `no response within ${timeoutMs / 1000} s`
        : shortCause(innermostMessage(err));
      throw new UnreachableError(cause, { cause: err });
    } finally {
      clearTimeout(timer);
      outer?.removeEventListener("abort", onAbort);
    }
    const range = new Headers(init?.headers).get("Range");
    if (range !== "bytes=0-0") return response;
    const body = await response.arrayBuffer();
    const copy = new Response(response.status === 204 || response.status === 304 ? null : body, {
      status: response.status,
      statusText: response.statusText,
      headers: response.headers,
    });
    // The library uses `url` to follow the final location of a redirected probe.
    Object.defineProperty(copy, "url", { value: response.url });
    return copy;
  };
}

/** The message of the deepest `cause`: Deno's fetch says "fetch failed" and puts the reason in its cause. */
function innermostMessage(err: unknown): string {
  let e = err;
  while (e instanceof Error && e.cause instanceof Error) e = e.cause;
  return e instanceof Error ? e.message : String(e);
}

/** Drops Deno's "error sending request for url (...)" preamble, keeping the reason. */
function shortCause(message: string): string {
  return message.replace(/^error sending request for url \([^)]*\):\s*/, "");
}

async function checkLocalDir(path: string): Promise<string> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) {
      throw new Error(`Cannot use model directory '${path}': ${(err as Error).message}`);
    }
    const hint = /^[\w.-]+\/[\w.-]+$/.test(path) ? ` (to download it from the Hugging Face Hub, write hf:${path})` : "";
    throw new Error(`Cannot use model directory '${path}': it does not exist${hint}`);
  }
  if (!info.isDirectory) throw new Error(`Cannot use model directory '${path}': it is a file, not a directory`);
  return resolve(path);
}

async function isComplete(dir: string): Promise<boolean> {
  let raw: unknown;
  try {
    raw = JSON.parse(await Deno.readTextFile(join(dir, COMPLETE_MARKER)));
  } catch {
    return false;
  }
  const marker = MarkerSchema.safeParse(raw);
  if (!marker.success) return false;
  for (const f of marker.data.files) if (!await fileExists(join(dir, f))) return false;
  return true;
}

async function writeAll(file: Deno.FsFile, data: Uint8Array): Promise<void> {
  for (let off = 0; off < data.byteLength;) off += await file.write(data.subarray(off));
}

function env(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    // Without --allow-env the variable is simply not used.
    return undefined;
  }
}
