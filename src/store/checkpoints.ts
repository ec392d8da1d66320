/**
 * The checkpoint store: how the trainer publishes policy versions and servers pick them up. A version
 * is a model directory (Hugging Face layout) plus a record in KV; the pointer `["policy", "current"]`
 * names the one to serve and is switched by ONE atomic commit that checks it has not moved since the
 * publish began, so of two racing trainers exactly one wins. Two places for the files:
 *
 * - `DirCheckpointStore`: `root/v000001/…` on a filesystem every process shares (the default);
 * - `KvCheckpointStore`: chunks of at most 60,000 bytes under `["ckpt_blob", version, file, chunk]`,
 *   so a server on another machine loads a version through nothing but KV.
 *
 * Loading never trusts: `materialize` checks every file's size and sha256 against the record, and the
 * record's own manifest sha256, before the directory appears. Servers poll the pointer (`pollPointer`):
 * `watch` does not cross processes on a local KV file.
 */
import { join, resolve } from "node:path";
import { createHash } from "node:crypto";
import { CheckpointStoreBase, type CheckpointStoreOptions, type PublishOptions } from "./_checkpoint_base.ts";
import { type FileReader, type FileSource, hashing, readStream, rechunk, writeStream } from "./_checkpoint_files.ts";
import {
  decodePointer,
  type FileEntry,
  type PolicyPointer,
  type PublishedVersion,
  type PublishMeta,
} from "./_checkpoint_schema.ts";
import { commitWithinLimits, MAX_COMMIT_BYTES, MAX_MUTATIONS } from "./_size.ts";
import { StoreCorruptError, StoreInputError } from "./errors.ts";
import {
  CHECKPOINT_BLOB_PREFIX,
  checkpointBlobKey,
  checkpointBlobPrefix,
  checkpointFilePrefix,
  policyPointerKey,
} from "./keys.ts";
import { pause } from "../util/time.ts";

export { readPointer } from "./_checkpoint_schema.ts";
export type { CheckpointStoreOptions, PublishOptions } from "./_checkpoint_base.ts";
export { manifestSha256 } from "./_checkpoint_files.ts";
export type { FileEntry, PolicyPointer, PublishedVersion, PublishMeta } from "./_checkpoint_schema.ts";

/** Largest chunk of a file in one KV value (KV's limit is 65,536 bytes serialized). */
export const KV_CHUNK_BYTES = 60_000;

// Room in each commit for keys and framing: 13 chunks of 60,000 bytes fit under 800 KiB.
const COMMIT_BUDGET = MAX_COMMIT_BYTES - 16 * 1024;
const DELETE_BATCH = 500; // keys of at most ~600 bytes: far under the commit's size and mutation limits

/** Where trainers publish policy versions and servers find them. */
export interface CheckpointStore {
  /**
   * Publishes files (a map of name → bytes, or a model directory) as the next version and makes it
   * current; the same commit records the pairs it holds and checks the trainer's fence (`options`).
   */
  publish(
    files: Map<string, Uint8Array> | string,
    meta?: PublishMeta,
    options?: PublishOptions,
  ): Promise<PublishedVersion>;
  /** The version servers should load; null before the first publish. */
  current(): Promise<PublishedVersion | null>;
  /** One kept version; null when it was never published or has been pruned. */
  get(version: number): Promise<PublishedVersion | null>;
  /** Every kept version, oldest first. */
  list(): Promise<PublishedVersion[]>;
  /** Writes a version's files into `destDir` (temp dir + rename), verifying every sha256; returns the dir. */
  materialize(version: number, destDir: string): Promise<string>;
  /** Makes a kept version current again. */
  rollback(version: number): Promise<void>;
  /**
   * Deletes versions beyond the newest `keep`, never the current one nor those in `alsoKeep` (the best
   * evaluated), and upload debris; returns those deleted.
   */
  prune(keep: number, options?: { alsoKeep?: readonly number[] }): Promise<number[]>;
  /** Deletes the unfinished uploads of trainers fenced off before `token`; returns their version numbers. */
  abandonUploads(token: number): Promise<number[]>;
}

/** Versions as directories `root/v000001/` on a shared filesystem; records and pointer in KV. */
export class DirCheckpointStore extends CheckpointStoreBase implements CheckpointStore {
  readonly storage = "dir";
  /** The directory holding one subdirectory per version. */
  readonly root: string;

  constructor(kv: Deno.Kv, root: string, options: CheckpointStoreOptions = {}) {
    super(kv, options);
    this.root = resolve(root);
  }

  /** The directory of a version (read it through `materialize`, which verifies it). */
  versionDir(version: number): string {
    return join(this.root, versionDirName(version));
  }

  protected async writeFiles(version: number, sources: FileSource[]): Promise<Record<string, FileEntry>> {
    await Deno.mkdir(this.root, { recursive: true });
    const tmp = join(this.root, `.tmp-${versionDirName(version)}-${crypto.randomUUID()}`);
    try {
      await Deno.mkdir(tmp);
      const files: Record<string, FileEntry> = {};
      for (const s of sources) files[s.name] = await writeStream(join(tmp, s.name), s.read());
      await Deno.rename(tmp, this.versionDir(version));
      return files;
    } catch (err) {
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
      throw new Error(`Cannot write policy version ${version} under '${this.root}': ${(err as Error).message}`);
    }
  }

  protected readFile(version: number): FileReader {
    const dir = this.versionDir(version);
    return async function* (name) {
      const stream = readStream(join(dir, name));
      try {
        let first: IteratorResult<Uint8Array>;
        try {
          first = await stream.next(); // opens the file: a missing one fails here
        } catch (err) {
          throw new StoreCorruptError(
            `Cannot materialize policy version ${version}: file '${name}' cannot be read from '${dir}' ` +
              `(${(err as Error).message})`,
          );
        }
        if (first.done) return;
        yield first.value;
        yield* stream;
      } finally {
        await stream.return(undefined); // closes the file when the reader stops early
      }
    };
  }

  protected async deleteFiles(version: number): Promise<void> {
    await Deno.remove(this.versionDir(version), { recursive: true }).catch((err) => {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    });
  }

  protected async sweepDebris(): Promise<void> {
    for (const version of await this.staleMarkers()) await this.deleteDebris(version);
    let entries: Deno.DirEntry[];
    try {
      entries = await Array.fromAsync(Deno.readDir(this.root));
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return;
      throw err;
    }
    for (const entry of entries) {
      const match = /^(?:\.tmp-)?v(\d{6,})(?:-|$)/.exec(entry.name);
      if (match && await this.isDebris(Number(match[1]))) {
        await Deno.remove(join(this.root, entry.name), { recursive: true });
      }
    }
  }
}

/** Versions chunked into KV values, so that nothing but KV connects a trainer and its servers. */
export class KvCheckpointStore extends CheckpointStoreBase implements CheckpointStore {
  readonly storage = "kv";

  constructor(kv: Deno.Kv, options: CheckpointStoreOptions = {}) {
    super(kv, options);
  }

  protected async writeFiles(version: number, sources: FileSource[]): Promise<Record<string, FileEntry>> {
    const files: Record<string, FileEntry> = {};
    let op = this.kv.atomic(), bytes = 0, mutations = 0;
    const flush = async () => {
      if (mutations === 0) return;
      if (!await commitWithinLimits(op, `the files of policy version ${version}`)) {
        throw new Error(`Cannot write the files of policy version ${version}: a commit without checks failed`);
      }
      op = this.kv.atomic(), bytes = 0, mutations = 0;
    };
    for (const s of sources) {
      const seen = { bytes: 0, hash: createHash("sha256") };
      let index = 0;
      for await (const chunk of rechunk(hashing(s.read(), seen), KV_CHUNK_BYTES)) {
        const key = checkpointBlobKey(version, s.name, index++);
        const cost = chunk.byteLength + keyBytes(key);
        if (mutations >= MAX_MUTATIONS || bytes + cost > COMMIT_BUDGET) await flush();
        op.set(key, chunk);
        bytes += cost;
        mutations++;
      }
      files[s.name] = { bytes: seen.bytes, sha256: seen.hash.digest("hex") };
    }
    await flush();
    return files;
  }

  protected readFile(version: number): FileReader {
    const kv = this.kv;
    return async function* (name, entry) {
      const fail = (problem: string): never => {
        throw new StoreCorruptError(`Cannot materialize policy version ${version}: file '${name}' ${problem}`);
      };
      let index = 0, bytes = 0;
      for await (const e of kv.list({ prefix: checkpointFilePrefix(version, name) }, { batchSize: 32 })) {
        if (e.key[3] !== index) fail(`is missing chunk ${index} (the next chunk held is ${String(e.key[3])})`);
        if (!(e.value instanceof Uint8Array)) fail(`has chunk ${index} that is not bytes`);
        const chunk = e.value as Uint8Array;
        index++, bytes += chunk.byteLength;
        yield chunk;
      }
      if (bytes < entry.bytes) {
        fail(`is missing chunks from chunk ${index} on: its chunks hold ${bytes} of ${entry.bytes} bytes`);
      }
    };
  }

  protected async deleteFiles(version: number, files: Record<string, FileEntry> | null): Promise<void> {
    // Known files: keys computed from sizes, so no chunk is read just to be deleted.
    const keys: Deno.KvKey[] = [];
    for (const [name, { bytes }] of Object.entries(files ?? {})) {
      for (let i = 0; i < Math.ceil(bytes / KV_CHUNK_BYTES); i++) keys.push(checkpointBlobKey(version, name, i));
    }
    await this.#deleteKeys(keys);
    // Then whatever is left (an upload cut short, or chunks the sizes did not predict).
    for (;;) {
      const left: Deno.KvKey[] = [];
      for await (const e of this.kv.list({ prefix: checkpointBlobPrefix(version) }, { limit: DELETE_BATCH })) {
        left.push(e.key);
      }
      if (left.length === 0) return;
      await this.#deleteKeys(left);
    }
  }

  protected async sweepDebris(): Promise<void> {
    for (const version of await this.staleMarkers()) await this.deleteDebris(version);
    // Skip from version to version, reading one chunk of each.
    let after = 0;
    for (;;) {
      const selector = { prefix: CHECKPOINT_BLOB_PREFIX, start: [...CHECKPOINT_BLOB_PREFIX, after + 1] };
      const [first] = await Array.fromAsync(this.kv.list(selector, { limit: 1 }));
      if (first === undefined) return;
      const version = first.key[1] as number;
      if (await this.isDebris(version)) await this.deleteFiles(version, null);
      after = version;
    }
  }

  async #deleteKeys(keys: Deno.KvKey[]): Promise<void> {
    for (let i = 0; i < keys.length; i += DELETE_BATCH) {
      const op = this.kv.atomic();
      for (const key of keys.slice(i, i + DELETE_BATCH)) op.delete(key);
      await commitWithinLimits(op, "the deletion of checkpoint chunks");
    }
  }
}

/**
 * Polls the served-version pointer every `intervalMs` until `signal` aborts, calling `onChange` with the
 * pointer as first read and again after every change (a publish or a rollback); compare its `version`
 * with what you serve. `onChange` is awaited before the next poll, so a slow load never overlaps another.
 * Resolves when aborted; rejects (and stops) when a read or `onChange` throws.
 */
export async function pollPointer(
  kv: Deno.Kv,
  intervalMs: number,
  onChange: (pointer: PolicyPointer | null) => void | Promise<void>,
  signal: AbortSignal,
): Promise<void> {
  if (!(intervalMs > 0 && Number.isFinite(intervalMs))) {
    throw new StoreInputError(
      `Cannot poll the policy pointer as 'intervalMs' must be positive: current value is ${intervalMs}`,
    );
  }
  let seen: string | null | undefined; // the versionstamp last reported; undefined before the first read
  while (!signal.aborted) {
    const entry = await kv.get(policyPointerKey());
    if (signal.aborted) return;
    if (entry.versionstamp !== seen) {
      await onChange(decodePointer(entry.value));
      seen = entry.versionstamp;
    }
    await pause(intervalMs, signal);
  }
}

function versionDirName(version: number): string {
  return `v${String(version).padStart(6, "0")}`;
}

/** Upper estimate of a key's encoded size. */
function keyBytes(key: Deno.KvKey): number {
  let n = 0;
  for (const part of key) n += (typeof part === "string" ? new TextEncoder().encode(part).length : 9) + 2;
  return n;
}
