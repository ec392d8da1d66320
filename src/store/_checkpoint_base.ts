/**
 * What both checkpoint stores share: version numbers, upload markers, version records and the served
 * pointer, all in KV. A store subclass only says where the files go (`writeFiles`, `readFile`,
 * `deleteFiles`) and how to find debris of uploads that never finished (`sweepDebris`).
 *
 * A publish is: allocate a number (one commit that raises the counter and writes an upload marker),
 * write the files, then ONE commit that checks the pointer and the marker, writes the version record,
 * switches the pointer and deletes the marker. A version record therefore exists only for versions that
 * were current once, and files with neither a record nor a live marker are debris, safe to delete.
 */
import { decodeStored, parseInput } from "./_codec.ts";
import { fileSources, manifestSha256, materializeInto } from "./_checkpoint_files.ts";
import type { FileReader, FileSource } from "./_checkpoint_files.ts";
import {
  decodePointer,
  type FileEntry,
  type PolicyPointer,
  type PublishedVersion,
  PublishedVersionSchema,
  type PublishMeta,
  PublishMetaSchema,
  readPointer,
  type Storage,
  type UploadMarker,
  UploadMarkerSchema,
} from "./_checkpoint_schema.ts";
import { assertValueFits, commitWithinLimits } from "./_size.ts";
import {
  ConflictError,
  FencedOutError,
  NotFoundError,
  PointerMovedError,
  StoreCorruptError,
  StoreInputError,
} from "./errors.ts";
import { addTrainedPairs, fenceCheck, type FenceHold } from "./training_records.ts";
import {
  CHECKPOINT_UPLOAD_PREFIX,
  CHECKPOINT_VERSION_PREFIX,
  checkpointUploadKey,
  checkpointVersionKey,
  policyPointerKey,
  policyVersionSeqKey,
  trainerFenceKey,
} from "./keys.ts";

const ALLOCATE_ATTEMPTS = 50;
const SWITCH_ATTEMPTS = 20;

/** Options of both checkpoint stores. */
export interface CheckpointStoreOptions {
  /** The clock (ms since the epoch); default `Date.now`. */
  now?: () => number;
  /**
   * How long an upload may run before `prune` treats what it wrote as debris (ms); default 24 h. An
   * upload overtaken this way fails at its final commit instead of publishing a version with holes.
   */
  staleUploadMs?: number;
}

/** What a trainer adds to a publish besides the files and metadata (see `training_records.ts`). */
export interface PublishOptions {
  /** The ids of the pairs the version holds, recorded in the commit that publishes it. */
  pairIds?: readonly string[];
  /** The trainer's hold on the fence: the publish fails if another trainer took the fence since. */
  fence?: FenceHold;
  /**
   * The version the new one was trained from (null: none, the starting model): the publish fails with
   * `PointerMovedError` unless it is still the served one when the upload starts and when the pointer switches.
   */
  expectParent?: number | null;
}

/** The KV half of a checkpoint store. */
export abstract class CheckpointStoreBase {
  protected readonly kv: Deno.Kv;
  protected readonly now: () => number;
  readonly #staleUploadMs: number;
  abstract readonly storage: Storage;

  constructor(kv: Deno.Kv, options: CheckpointStoreOptions = {}) {
    this.kv = kv;
    this.now = options.now ?? Date.now;
    this.#staleUploadMs = options.staleUploadMs ?? 24 * 3600 * 1000;
  }

  /** Writes the files of a version whose number is allocated; returns what it wrote. */
  protected abstract writeFiles(version: number, sources: FileSource[]): Promise<Record<string, FileEntry>>;
  /** Streams one file of a version; throws `StoreCorruptError` naming the version and file if it is unreadable. */
  protected abstract readFile(version: number): FileReader;
  /** Deletes whatever files of a version exist (the list when known, else found by scanning). */
  protected abstract deleteFiles(version: number, files: Record<string, FileEntry> | null): Promise<void>;
  /** Deletes files left by uploads that never finished (for which `isDebris` holds). */
  protected abstract sweepDebris(): Promise<void>;

  /**
   * Publishes files as the next version and makes it current, in one final commit that also records the
   * pairs it holds and checks the trainer's fence (`options`).
   */
  async publish(
    files: Map<string, Uint8Array> | string,
    meta: PublishMeta = {},
    options: PublishOptions = {},
  ): Promise<PublishedVersion> {
    const m = parseInput(PublishMetaSchema, meta, "the metadata of a policy version");
    const sources = await fileSources(files);
    const fake = Object.fromEntries(sources.map((s) => [s.name, { bytes: 2 ** 40, sha256: "0".repeat(64) }]));
    assertValueFits({ ...m, version: 1, sha256: "0".repeat(64), files: fake, publishedAt: 0 }, "a version record");
    const start = await this.kv.get(policyPointerKey());
    const startPointer = decodePointer(start.value);
    if (options.expectParent !== undefined && (startPointer?.version ?? null) !== options.expectParent) {
      throw new PointerMovedError(
        `Cannot publish a policy version trained from ${
          options.expectParent === null ? "the starting model" : `version ${options.expectParent}`
        } as the current version is ${startPointer?.version ?? "none"}: someone rolled back or published another`,
      );
    }
    if (m.parentVersion !== undefined && startPointer?.version !== m.parentVersion) {
      throw new PointerMovedError(
        `Cannot publish a policy version trained from version ${m.parentVersion} as the current version is ` +
          `${startPointer?.version ?? "none"}: another trainer published or someone rolled back`,
      );
    }
    const version = await this.#allocate(options.fence?.token);
    let written: Record<string, FileEntry>;
    try {
      written = await this.writeFiles(version, sources);
    } catch (err) {
      await this.#discard(version, null);
      throw err;
    }
    const marker = await this.kv.get(checkpointUploadKey(version));
    const record: PublishedVersion = {
      ...m,
      parentVersion: m.parentVersion ?? startPointer?.version,
      version,
      sha256: manifestSha256(written),
      files: written,
      publishedAt: this.now(),
      storage: this.storage,
    };
    if (record.parentVersion === undefined) delete record.parentVersion;
    const pointer: PolicyPointer = {
      version,
      sha256: record.sha256,
      storage: this.storage,
      switchedAt: record.publishedAt,
    };
    const what = `policy version ${version}`;
    const op = this.kv.atomic().check(start).check(marker)
      .set(checkpointVersionKey(version), record)
      .set(policyPointerKey(), pointer)
      .delete(checkpointUploadKey(version));
    if (options.fence) op.check(fenceCheck(options.fence));
    if (options.pairIds) addTrainedPairs(op, version, options.pairIds);
    let ok = false;
    try {
      ok = marker.value !== null && await commitWithinLimits(op, what);
    } catch (err) {
      await this.#discard(version, written);
      throw err;
    }
    if (ok) return record;
    const [latest, markerNow, fenceNow] = await this.kv.getMany([
      policyPointerKey(),
      checkpointUploadKey(version),
      trainerFenceKey(),
    ]);
    await this.#discard(version, written);
    const fenced = options.fence !== undefined && fenceNow!.versionstamp !== options.fence.versionstamp;
    const reason = fenced
      ? `another trainer took over (the trainer fence moved past token ${options.fence!.token}): this trainer ` +
        "must stop"
      : markerNow!.versionstamp !== marker.versionstamp || marker.value === null
      ? `its upload was pruned as stale (it ran longer than staleUploadMs = ${this.#staleUploadMs} ms)`
      : `the current version changed during the upload (from ${startPointer?.version ?? "none"} to ` +
        `${decodePointer(latest!.value)?.version ?? "none"}): another trainer published or someone rolled back`;
    if (fenced) throw new FencedOutError(`Cannot publish ${what} as ${reason}`);
    const moved = markerNow!.versionstamp === marker.versionstamp && marker.value !== null;
    throw new (moved ? PointerMovedError : ConflictError)(
      `Cannot publish ${what} as ${reason}; its files were deleted and the number is not reused`,
    );
  }

  /** The version servers should load; null before the first publish. */
  async current(): Promise<PublishedVersion | null> {
    const pointer = await readPointer(this.kv);
    if (pointer === null) return null;
    const record = await this.get(pointer.version);
    if (record === null) {
      throw new StoreCorruptError(`The policy pointer names version ${pointer.version}, whose record does not exist`);
    }
    return record;
  }

  /** The record of one version; null when it was never published or has been pruned. */
  async get(version: number): Promise<PublishedVersion | null> {
    return this.#decodeRecord((await this.kv.get(checkpointVersionKey(checkedVersion(version)))).value, version);
  }

  /** Every kept version, oldest first. */
  async list(): Promise<PublishedVersion[]> {
    const out: PublishedVersion[] = [];
    for await (const e of this.kv.list({ prefix: CHECKPOINT_VERSION_PREFIX })) {
      out.push(this.#decodeRecord(e.value, e.key[1] as number)!);
    }
    return out;
  }

  /** Writes a version's files into `destDir` (temp dir + rename), verifying every size and sha256; returns the dir. */
  async materialize(version: number, destDir: string): Promise<string> {
    const record = await this.get(version);
    if (record === null) throw new NotFoundError(`Cannot materialize policy version ${version} as it does not exist`);
    if (record.storage !== this.storage) {
      throw new NotFoundError(
        `Cannot materialize policy version ${version} as it was published to a '${record.storage}' checkpoint ` +
          `store, not to this '${this.storage}' one`,
      );
    }
    try {
      return await materializeInto(destDir, record.files, this.readFile(version), `policy version ${version}`);
    } catch (err) {
      // Files vanishing under a reader look like corruption; say so when a prune took them.
      if (err instanceof StoreCorruptError && await this.get(version) === null) {
        throw new NotFoundError(`Cannot materialize policy version ${version} as it was pruned while being read`);
      }
      throw err;
    }
  }

  /** Makes a kept version current again (a pointer switch; files are not touched). */
  async rollback(version: number): Promise<void> {
    const entry = await this.kv.get(checkpointVersionKey(checkedVersion(version)));
    const record = this.#decodeRecord(entry.value, version);
    if (record === null) throw new NotFoundError(`Cannot roll back to policy version ${version} as it is not kept`);
    if (record.storage !== this.storage) {
      throw new NotFoundError(
        `Cannot roll back to policy version ${version} as it lives in a '${record.storage}' store, not this one`,
      );
    }
    const pointer: PolicyPointer = { version, sha256: record.sha256, storage: record.storage, switchedAt: this.now() };
    // The check on the record keeps a concurrent prune from leaving the pointer on deleted files.
    const op = this.kv.atomic().check(entry).set(policyPointerKey(), pointer);
    if (!await commitWithinLimits(op, `the rollback to policy version ${version}`)) {
      throw new NotFoundError(`Cannot roll back to policy version ${version} as it was pruned meanwhile`);
    }
  }

  /** Deletes every version beyond the newest `keep` except the current one, and upload debris; returns those deleted. */
  async prune(keep: number, options: { alsoKeep?: readonly number[] } = {}): Promise<number[]> {
    if (!Number.isInteger(keep) || keep < 0) {
      throw new StoreInputError(`Cannot prune as 'keep' must be a non-negative integer: current value is ${keep}`);
    }
    // A store deletes only the versions whose files it holds; another kind's versions are left alone.
    const ours = (await this.list()).filter((r) => r.storage === this.storage).map((r) => r.version);
    const spared = new Set(options.alsoKeep);
    const doomed = ours.sort((a, b) => b - a).slice(keep).filter((v) => !spared.has(v)).reverse();
    const pruned: number[] = [];
    for (const version of doomed) if (await this.#pruneOne(version)) pruned.push(version);
    await this.sweepDebris();
    return pruned;
  }

  /** Whether a version's files are debris: no record, and no upload marker younger than `staleUploadMs`. */
  protected async isDebris(version: number): Promise<boolean> {
    const [record, marker] = await this.kv.getMany([checkpointVersionKey(version), checkpointUploadKey(version)]);
    if (record!.value !== null) return false;
    if (marker!.value === null) return true;
    const m = decodeStored(UploadMarkerSchema, marker!.value, `the upload marker of version ${version}`);
    return this.now() - m.startedAt > this.#staleUploadMs;
  }

  /** Deletes the files and the upload marker of a debris version (the marker last: a crash leaves it findable). */
  protected async deleteDebris(version: number): Promise<void> {
    await this.deleteFiles(version, null);
    await this.kv.delete(checkpointUploadKey(version));
  }

  /** Upload markers older than `staleUploadMs`, whose files may be gone already. */
  protected async staleMarkers(): Promise<number[]> {
    const out: number[] = [];
    for await (const e of this.kv.list<UploadMarker>({ prefix: CHECKPOINT_UPLOAD_PREFIX })) {
      const version = e.key[1] as number;
      if (await this.isDebris(version)) out.push(version);
    }
    return out;
  }

  async #pruneOne(version: number): Promise<boolean> {
    for (let attempt = 0; attempt < SWITCH_ATTEMPTS; attempt++) {
      const [pointer, entry] = await this.kv.getMany([policyPointerKey(), checkpointVersionKey(version)]);
      const record = this.#decodeRecord(entry!.value, version);
      if (record === null || decodePointer(pointer!.value)?.version === version) return false;
      const op = this.kv.atomic().check(pointer!).check(entry!).delete(checkpointVersionKey(version));
      if (await commitWithinLimits(op, `the deletion of policy version ${version}`)) {
        await this.deleteFiles(version, record.files);
        return true;
      }
    }
    throw new ConflictError(`Cannot prune policy version ${version}: its record or the pointer kept changing`);
  }

  /**
   * Deletes the uploads that trainers fenced off before `token` left unfinished (they can never publish
   * them), and any other debris; the trainer holding `token` calls it as it starts.
   */
  async abandonUploads(token: number): Promise<number[]> {
    const abandoned: number[] = [];
    for await (const e of this.kv.list({ prefix: CHECKPOINT_UPLOAD_PREFIX })) {
      const version = e.key[1] as number;
      const m = decodeStored(UploadMarkerSchema, e.value, `the upload marker of version ${version}`);
      if ((m.fence ?? 0) >= token || (await this.kv.get(checkpointVersionKey(version))).value !== null) continue;
      await this.deleteDebris(version);
      abandoned.push(version);
    }
    await this.sweepDebris();
    return abandoned;
  }

  /** Raises the version counter and writes the upload marker in one commit; numbers are never reused. */
  async #allocate(fence: number | undefined): Promise<number> {
    for (let attempt = 0; attempt < ALLOCATE_ATTEMPTS; attempt++) {
      const seq = await this.kv.get(policyVersionSeqKey());
      let last = seq.value === null ? 0 : decodeStored(checkedVersionSchema, seq.value, "the policy version counter");
      // Defensive: never hand out a number a kept record already has, even if the counter was lost.
      for await (const e of this.kv.list({ prefix: CHECKPOINT_VERSION_PREFIX }, { reverse: true, limit: 1 })) {
        last = Math.max(last, e.key[1] as number);
      }
      const version = last + 1;
      const marker: UploadMarker = {
        startedAt: this.now(),
        storage: this.storage,
        ...(fence === undefined ? {} : { fence }),
      };
      const op = this.kv.atomic().check(seq).set(policyVersionSeqKey(), version)
        .set(checkpointUploadKey(version), marker);
      if (await commitWithinLimits(op, "a policy version number")) return version;
      await new Promise((r) => setTimeout(r, Math.random() * Math.min(2 ** attempt, 100)));
    }
    throw new ConflictError(`Cannot allocate a policy version number: ${ALLOCATE_ATTEMPTS} attempts lost a race`);
  }

  /** Deletes what a failed publish wrote; a failure here leaves debris for `prune`, never hides the first error. */
  async #discard(version: number, files: Record<string, FileEntry> | null): Promise<void> {
    try {
      await this.deleteFiles(version, files);
      await this.kv.delete(checkpointUploadKey(version));
    } catch {
      // The marker outlives the files: `prune` finds the version once the marker is stale.
    }
  }

  #decodeRecord(value: unknown, version: number): PublishedVersion | null {
    if (value === null) return null;
    const record = decodeStored(PublishedVersionSchema, value, `the record of policy version ${version}`);
    const sum = manifestSha256(record.files);
    if (record.version !== version || sum !== record.sha256) {
      throw new StoreCorruptError(
        `The record of policy version ${version} is inconsistent: it says version ${record.version} and ` +
          `manifest ${record.sha256}, but its files hash to manifest ${sum}`,
      );
    }
    return record;
  }
}

const checkedVersionSchema = PublishedVersionSchema.shape.version;

function checkedVersion(version: number): number {
  if (!Number.isInteger(version) || version < 1) {
    throw new StoreInputError(
      `Cannot read a policy version as it must be a positive integer: current value is ${version}`,
    );
  }
  return version;
}
