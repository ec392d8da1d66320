/**
 * The file side of the checkpoint store: reading what a trainer publishes (a map of bytes or a model
 * directory) as streams, hashing while copying, and writing a version out to a directory that appears
 * only once every file has matched its size and sha256.
 */
import { createHash } from "node:crypto";
import { dirname, join, resolve } from "node:path";
import { ConflictError, StoreCorruptError, StoreInputError } from "./errors.ts";
import type { FileEntry } from "./_checkpoint_schema.ts";

const READ_BYTES = 1 << 20;
const MAX_NAME_BYTES = 512; // keeps `["ckpt_blob", version, name, chunk]` far under KV's 2,048-byte key limit

/** One file to publish: its relative name and a reader of its bytes. */
export interface FileSource {
  name: string;
  read(): AsyncIterable<Uint8Array>;
}

/** A version's files, streamed from wherever a store keeps them. */
export type FileReader = (name: string, entry: FileEntry) => AsyncIterable<Uint8Array>;

/** Why `name` cannot be a file of a version (a relative POSIX path inside it), or null when it can. */
export function fileNameProblem(name: string): string | null {
  if (name.length === 0) return "it is empty";
  if (new TextEncoder().encode(name).length > MAX_NAME_BYTES) return `it is longer than ${MAX_NAME_BYTES} bytes`;
  if (/[\\\0]/.test(name)) return "it holds a backslash or a NUL";
  if (name.startsWith("/")) return "it is absolute";
  if (name.split("/").some((part) => part === "" || part === "." || part === "..")) {
    return "it has an empty, '.' or '..' path segment";
  }
  return null;
}

/** The files of `files` (a map of name → bytes, or a directory read recursively), sorted by name. */
export async function fileSources(files: Map<string, Uint8Array> | string): Promise<FileSource[]> {
  const sources: FileSource[] = typeof files === "string"
    ? (await listDir(files)).map((name) => ({ name, read: () => readStream(join(files, name)) }))
    : [...files].map(([name, bytes]) => {
      if (!(bytes instanceof Uint8Array)) {
        throw new StoreInputError(`Cannot publish file '${name}' as its content must be a Uint8Array`);
      }
      return {
        name,
        read: async function* () {
          if (bytes.byteLength > 0) yield bytes;
        },
      };
    });
  if (sources.length === 0) {
    throw new StoreInputError(`Cannot publish a policy version without files: ${describe(files)} holds none`);
  }
  const names = new Set(sources.map((s) => s.name));
  for (const { name } of sources) {
    const problem = fileNameProblem(name);
    if (problem) throw new StoreInputError(`Cannot publish file '${name}' as ${problem}`);
    const parts = name.split("/");
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join("/");
      if (names.has(dir)) throw new StoreInputError(`Cannot publish both a file '${dir}' and a file '${name}' in it`);
    }
  }
  return sources.sort((a, b) => compareNames(a.name, b.name));
}

/**
 * sha256 of a version's canonical manifest: one `<sha256>  <name>\n` line per file (the format of
 * `sha256sum`), sorted by the UTF-8 bytes of the name, so any tool can recompute it from the files.
 */
export function manifestSha256(files: Record<string, Pick<FileEntry, "sha256">>): string {
  const lines = Object.keys(files).sort(compareNames).map((name) => `${files[name]!.sha256}  ${name}\n`);
  return createHash("sha256").update(lines.join("")).digest("hex");
}

/** Cuts a stream into pieces of exactly `size` bytes (the last one shorter), each in a fresh buffer. */
export async function* rechunk(stream: AsyncIterable<Uint8Array>, size: number): AsyncGenerator<Uint8Array> {
  let buf = new Uint8Array(size);
  let filled = 0;
  for await (const piece of stream) {
    let offset = 0;
    while (offset < piece.byteLength) {
      const n = Math.min(size - filled, piece.byteLength - offset);
      buf.set(piece.subarray(offset, offset + n), filled);
      filled += n;
      offset += n;
      if (filled === size) {
        yield buf;
        buf = new Uint8Array(size);
        filled = 0;
      }
    }
  }
  if (filled > 0) yield buf.slice(0, filled);
}

/** Counts and hashes a stream as it passes through. */
export async function* hashing(
  stream: AsyncIterable<Uint8Array>,
  into: { bytes: number; hash: ReturnType<typeof createHash> },
): AsyncGenerator<Uint8Array> {
  for await (const piece of stream) {
    into.bytes += piece.byteLength;
    into.hash.update(piece);
    yield piece;
  }
}

/** Writes a stream to a new file, flushed to disk; returns its size and sha256. */
export async function writeStream(path: string, stream: AsyncIterable<Uint8Array>): Promise<FileEntry> {
  await Deno.mkdir(dirname(path), { recursive: true });
  const seen = { bytes: 0, hash: createHash("sha256") };
  using file = await Deno.open(path, { write: true, createNew: true });
  for await (const piece of hashing(stream, seen)) {
    for (let off = 0; off < piece.byteLength;) off += await file.write(piece.subarray(off));
  }
  await file.sync();
  return { bytes: seen.bytes, sha256: seen.hash.digest("hex") };
}

/** Reads a file as a stream of pieces of at most 1 MiB. */
export async function* readStream(path: string): AsyncGenerator<Uint8Array> {
  using file = await Deno.open(path, { read: true });
  for (;;) {
    const buf = new Uint8Array(READ_BYTES);
    const n = await file.read(buf);
    if (n === null) return;
    yield buf.subarray(0, n);
  }
}

/**
 * Writes the files of a version into `destDir` through a temporary sibling directory renamed into place
 * once every file has matched its recorded size and sha256. A `destDir` that already holds exactly those
 * files (an earlier materialize, or a racing one) is verified and kept; any other non-empty one is refused.
 */
export async function materializeInto(
  destDir: string,
  files: Record<string, FileEntry>,
  read: FileReader,
  what: string,
): Promise<string> {
  const dest = resolve(destDir);
  if (await dirState(dest) === "full") return await keepExisting(dest, files, what);
  await Deno.remove(dest).catch(() => {}); // an empty directory, or nothing
  await Deno.mkdir(dirname(dest), { recursive: true });
  const tmp = `${dest}.tmp-${crypto.randomUUID()}`;
  try {
    await Deno.mkdir(tmp);
    for (const name of Object.keys(files).sort(compareNames)) {
      const expected = files[name]!;
      const got = await writeStream(join(tmp, name), read(name, expected));
      assertMatches(got, expected, `Cannot materialize ${what}: file '${name}'`);
    }
  } catch (err) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw err;
  }
  try {
    await Deno.rename(tmp, dest);
    return dest;
  } catch (err) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    if (await dirState(dest) !== "full") throw err;
    return await keepExisting(dest, files, what); // another process materialized it first
  }
}

/** Throws `StoreCorruptError` when a file read back differs from its record. */
export function assertMatches(got: FileEntry, expected: FileEntry, prefix: string): void {
  if (got.bytes !== expected.bytes) {
    throw new StoreCorruptError(
      `${prefix} is ${got.bytes} bytes but its record says ${expected.bytes} (truncated, missing chunks or modified)`,
    );
  }
  if (got.sha256 !== expected.sha256) {
    throw new StoreCorruptError(
      `${prefix} does not match its sha256 (corrupt or modified): expected ${expected.sha256}, got ${got.sha256}`,
    );
  }
}

/** Names in UTF-8 byte order, the order of the canonical manifest. */
export function compareNames(a: string, b: string): number {
  const x = new TextEncoder().encode(a), y = new TextEncoder().encode(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i]! - y[i]!;
  return x.length - y.length;
}

async function keepExisting(dest: string, files: Record<string, FileEntry>, what: string): Promise<string> {
  for (const [name, expected] of Object.entries(files)) {
    let got: FileEntry;
    try {
      const seen = { bytes: 0, hash: createHash("sha256") };
      for await (const _ of hashing(readStream(join(dest, name)), seen));
      got = { bytes: seen.bytes, sha256: seen.hash.digest("hex") };
    } catch {
      got = { bytes: -1, sha256: "" };
    }
    if (got.bytes !== expected.bytes || got.sha256 !== expected.sha256) {
      throw new ConflictError(
        `Cannot materialize ${what} into '${dest}' as that directory exists and does not hold it ` +
          `('${name}' is missing or differs); remove it or choose another directory`,
      );
    }
  }
  return dest;
}

async function dirState(path: string): Promise<"absent" | "empty" | "full"> {
  let stat: Deno.FileInfo;
  try {
    stat = await Deno.stat(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return "absent";
    throw err;
  }
  if (!stat.isDirectory) return "full";
  for await (const _ of Deno.readDir(path)) return "full";
  return "empty";
}

/** Regular files under `root` (symlinks followed, as in a Hugging Face cache snapshot), relative names. */
async function listDir(root: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir(join(root, prefix)));
  } catch (err) {
    throw new StoreInputError(`Cannot publish the model directory '${root}': ${(err as Error).message}`);
  }
  for (const entry of entries) {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    const stat = entry.isSymlink ? await Deno.stat(join(root, rel)) : entry;
    if (stat.isDirectory) out.push(...await listDir(root, rel));
    else if (stat.isFile) out.push(rel);
  }
  return out;
}

function describe(files: Map<string, Uint8Array> | string): string {
  return typeof files === "string" ? `the directory '${files}'` : "the map given";
}
