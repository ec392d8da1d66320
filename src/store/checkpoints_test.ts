import assert from "node:assert/strict";
import { join } from "node:path";
import * as tf from "../model/tf.ts";
import { loadModel } from "../model/io/checkpoint.ts";
import { fixturePath } from "../model/_test_utils.ts";
import { sha256 } from "../dpo/checkpoint.ts";
import {
  type CheckpointStore,
  DirCheckpointStore,
  KV_CHUNK_BYTES,
  KvCheckpointStore,
  manifestSha256,
  type PolicyPointer,
  pollPointer,
  readPointer,
} from "./checkpoints.ts";
import { ConflictError, NotFoundError, StoreCorruptError, StoreInputError } from "./errors.ts";
import {
  CHECKPOINT_BLOB_PREFIX,
  CHECKPOINT_UPLOAD_PREFIX,
  checkpointBlobKey,
  checkpointUploadKey,
  checkpointVersionKey,
  policyPointerKey,
} from "./keys.ts";
import { allKeys, barrier, FakeClock } from "./_test_helpers.ts";

type Kind = "dir" | "kv";
const KINDS: Kind[] = ["dir", "kv"];

interface Ctx {
  kv: Deno.Kv;
  tmp: string;
  clock: FakeClock;
  store: CheckpointStore;
  /** Another store of the same kind on another KV handle (same root for the directory store). */
  storeOn(kv: Deno.Kv): CheckpointStore;
}

/** Runs `fn` with a store of `kind` on a fresh in-memory KV and a temp dir, closing and removing both. */
async function withStore(kind: Kind, fn: (ctx: Ctx) => Promise<void>): Promise<void> {
  const tmp = await Deno.makeTempDir({ prefix: "ckpt_store_" });
  const clock = new FakeClock();
  const storeOn = (kv: Deno.Kv) =>
    kind === "dir"
      ? new DirCheckpointStore(kv, join(tmp, "store"), { now: clock.now })
      : new KvCheckpointStore(kv, { now: clock.now });
  try {
    using kv = await Deno.openKv(":memory:");
    await fn({ kv, tmp, clock, store: storeOn(kv), storeOn });
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}

function randomBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i += 65_536) crypto.getRandomValues(out.subarray(i, Math.min(n, i + 65_536)));
  return out;
}

function json(value: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value));
}

/** ~1 MB of random weights plus small JSON files, one of them in a subdirectory. */
function sampleFiles(): Map<string, Uint8Array> {
  return new Map([
    ["model.safetensors", randomBytes(1_000_003)],
    ["config.json", json({ model_type: "gpt2", n_layer: 2 })],
    ["tokenizer_config.json", json({ eos_token: "<|endoftext|>" })],
    ["reference/config.json", json({ n_embd: 8 })],
    ["empty.txt", new Uint8Array()],
  ]);
}

async function assertDirHolds(dir: string, files: Map<string, Uint8Array>): Promise<void> {
  for (const [name, bytes] of files) assert.deepEqual(await Deno.readFile(join(dir, name)), bytes, name);
}

async function countKeys(kv: Deno.Kv, prefix: Deno.KvKey): Promise<number> {
  let n = 0;
  for await (const _ of kv.list({ prefix })) n++;
  return n;
}

async function versionsOnDisk(root: string): Promise<string[]> {
  return (await Array.fromAsync(Deno.readDir(root))).map((e) => e.name).sort();
}

for (const kind of KINDS) {
  Deno.test(`${kind} store: publish → current → materialize round-trips byte-exact; versions increase`, async () => {
    await withStore(kind, async ({ kv, tmp, clock, store }) => {
      assert.equal(await store.current(), null);
      const files = sampleFiles();
      const v1 = await store.publish(files, { trainedPairs: 0, note: "first", eval: { accuracy: 0.5 } });
      assert.equal(v1.version, 1);
      assert.equal(v1.storage, kind);
      assert.equal(v1.parentVersion, undefined);
      assert.equal(v1.files["model.safetensors"]!.bytes, 1_000_003);
      assert.equal(v1.files["model.safetensors"]!.sha256, await sha256(files.get("model.safetensors")!));
      assert.equal(v1.sha256, manifestSha256(v1.files));
      assert.deepEqual(await store.current(), v1);
      assert.deepEqual(await readPointer(kv), { version: 1, sha256: v1.sha256, storage: kind, switchedAt: clock.t });

      const out = await store.materialize(1, join(tmp, "out", "v1"));
      assert.equal(out, join(tmp, "out", "v1"));
      await assertDirHolds(out, files);
      assert.deepEqual(await versionsOnDisk(join(tmp, "out")), ["v1"], "no temp dir left behind");
      // Materializing again into the same directory verifies and keeps it.
      assert.equal(await store.materialize(1, out), out);

      clock.advance(1000);
      const changed = new Map(files).set("config.json", json({ model_type: "gpt2", n_layer: 3 }));
      const v2 = await store.publish(changed, { refVersion: 1, trainedPairs: 64 });
      assert.equal(v2.version, 2);
      assert.equal(v2.parentVersion, 1, "the parent defaults to the version current when the publish began");
      assert.notEqual(v2.sha256, v1.sha256);
      assert.equal((await store.current())?.version, 2);
      assert.deepEqual((await store.list()).map((r) => r.version), [1, 2]);
      assert.deepEqual(await store.get(1), v1);
      assert.equal(await store.get(3), null);
      await assertDirHolds(await store.materialize(2, join(tmp, "out", "v2")), changed);
      // A directory holding another version is refused, not overwritten.
      await assert.rejects(store.materialize(2, out), ConflictError);
      assert.deepEqual(await upload(kv), [], "no upload marker outlives its publish");
    });
  });

  Deno.test(`${kind} store: the gpt2_tiny fixture directory publishes, materializes and loads`, async () => {
    await withStore(kind, async ({ tmp, store }) => {
      const fixture = fixturePath("gpt2_tiny");
      const published = await store.publish(fixture, { note: "fixture" });
      assert.ok(published.files["config.json"] && published.files["model.safetensors"]);
      const dir = await store.materialize(published.version, join(tmp, "model"));
      for (const name of Object.keys(published.files)) {
        assert.deepEqual(await Deno.readFile(join(dir, name)), await Deno.readFile(join(fixture, name)), name);
      }
      const before = tf.memory().numTensors;
      const loaded = await loadModel(dir);
      assert.equal(loaded.model.config.model_type, "gpt2");
      loaded.model.dispose();
      assert.equal(tf.memory().numTensors, before);
    });
  });

  Deno.test(`${kind} store: racing publishers on two KV handles, exactly one pointer switch wins`, async () => {
    await withStore(kind, async ({ tmp, storeOn }) => {
      const path = join(tmp, "kv.sqlite");
      using kvA = await Deno.openKv(path);
      using kvB = await Deno.openKv(path);
      // Both read the pointer before either switches it, so the loser fails at its final commit.
      const gate = barrier(2);
      const [a, b] = [storeOn(gatePointerRead(kvA, gate)), storeOn(gatePointerRead(kvB, gate))];
      const results = await Promise.allSettled([a.publish(sampleFiles()), b.publish(sampleFiles())]);
      const won = results.filter((r) => r.status === "fulfilled");
      const lost = results.filter((r) => r.status === "rejected");
      assert.equal(won.length, 1);
      assert.equal(lost.length, 1);
      const reason = (lost[0] as PromiseRejectedResult).reason;
      assert.ok(reason instanceof ConflictError, String(reason));
      assert.match(reason.message, /current version changed during the upload \(from none to \d\)/);
      const winner = (won[0] as PromiseFulfilledResult<{ version: number }>).value.version;
      const loser = winner === 1 ? 2 : 1;
      assert.equal((await readPointer(kvB))?.version, winner);
      assert.deepEqual((await a.list()).map((r) => r.version), [winner]);
      assert.equal(await b.get(loser), null);
      // The loser's files are gone and its number is never reused.
      await assertNoFilesOf(kind, kvA, join(tmp, "store"), loser);
      assert.deepEqual(await upload(kvA), []);
      assert.equal((await b.publish(sampleFiles())).version, 3);
    });
  });

  Deno.test(`${kind} store: a stale parentVersion is refused before anything is written`, async () => {
    await withStore(kind, async ({ kv, store }) => {
      await store.publish(sampleFiles());
      const keys = await allKeys(kv);
      await assert.rejects(store.publish(sampleFiles(), { parentVersion: 7 }), (err: Error) => {
        assert.ok(err instanceof ConflictError);
        assert.match(err.message, /trained from version 7 as the current version is 1/);
        return true;
      });
      assert.deepEqual(await allKeys(kv), keys);
      assert.equal((await store.publish(sampleFiles(), { parentVersion: 1 })).version, 2);
    });
  });

  Deno.test(`${kind} store: rollback and prune keep the current version and delete the rest`, async () => {
    await withStore(kind, async ({ kv, tmp, store }) => {
      const inputs = Array.from({ length: 4 }, sampleFiles);
      const published = [];
      for (const [i, files] of inputs.entries()) published.push(await store.publish(files, { note: `v${i + 1}` }));
      await store.rollback(2);
      assert.equal((await store.current())?.version, 2);
      assert.equal((await readPointer(kv))?.sha256, published[1]!.sha256);

      assert.deepEqual(await store.prune(1), [1, 3], "the newest one kept, and the current one");
      assert.deepEqual((await store.list()).map((r) => r.version), [2, 4]);
      assert.equal((await store.current())?.version, 2);
      for (const gone of [1, 3]) {
        await assertNoFilesOf(kind, kv, join(tmp, "store"), gone);
        await assert.rejects(store.rollback(gone), NotFoundError);
        await assert.rejects(store.materialize(gone, join(tmp, `gone${gone}`)), NotFoundError);
      }
      if (kind === "kv") {
        const perVersion = Object.values(published[0]!.files)
          .reduce((n, f) => n + Math.ceil(f.bytes / KV_CHUNK_BYTES), 0);
        assert.equal(await countKeys(kv, CHECKPOINT_BLOB_PREFIX), 2 * perVersion);
      } else {
        assert.deepEqual(await versionsOnDisk(join(tmp, "store")), ["v000002", "v000004"]);
      }
      await store.rollback(4);
      assert.deepEqual(await store.prune(0, { alsoKeep: [2] }), [], "the best evaluated is kept, however old");
      assert.deepEqual(await store.prune(0), [2], "prune(0) keeps only the current version");
      assert.deepEqual(await store.prune(0), []);
      await assertDirHolds(await store.materialize(4, join(tmp, "v4")), inputs[3]!);
      assert.equal((await store.publish(sampleFiles())).version, 5, "pruned numbers are not reused");
      await assert.rejects(store.prune(-1), StoreInputError);
    });
  });

  Deno.test(`${kind} store: prune deletes upload debris, but not an upload in progress`, async () => {
    await withStore(kind, async ({ kv, tmp, clock, store }) => {
      await store.publish(sampleFiles());
      const root = join(tmp, "store");
      // Version 2: an upload that crashed after its files were written (marker left behind).
      // Version 3: files without a marker or a record (a cleanup that died half-way).
      await fakeFiles(kind, kv, root, 2);
      await kv.set(checkpointUploadKey(2), { startedAt: clock.t, storage: kind });
      await fakeFiles(kind, kv, root, 3);
      assert.deepEqual(await store.prune(5), []);
      await assertNoFilesOf(kind, kv, root, 3);
      assert.equal(await hasFilesOf(kind, kv, root, 2), true, "a live upload is left alone");
      clock.advance(24 * 3600 * 1000 + 1);
      assert.deepEqual(await store.prune(5), []);
      await assertNoFilesOf(kind, kv, root, 2);
      assert.deepEqual(await upload(kv), []);
      assert.equal((await store.current())?.version, 1);
      await store.materialize(1, join(tmp, "still"));
    });
  });

  Deno.test(`${kind} store: an upload pruned as stale fails at its final commit instead of publishing`, async () => {
    await withStore(kind, async ({ kv, tmp, clock, storeOn }) => {
      await storeOn(kv).publish(sampleFiles());
      // The slow trainer's upload ends after a day; a prune ran meanwhile, just before its final commit.
      let pruned = false;
      const slow = storeOn(beforeGetReturns(kv, async (key) => {
        if (key[0] !== "ckpt_upload" || pruned) return;
        pruned = true;
        clock.advance(24 * 3600 * 1000 + 1);
        assert.deepEqual(await storeOn(kv).prune(5), []);
      }));
      await assert.rejects(slow.publish(sampleFiles()), (err: Error) => {
        assert.ok(err instanceof ConflictError, String(err));
        assert.match(err.message, /Cannot publish policy version 2 as its upload was pruned as stale/);
        return true;
      });
      assert.ok(pruned);
      await assertNoFilesOf(kind, kv, join(tmp, "store"), 2);
      assert.equal((await readPointer(kv))?.version, 1);
      assert.deepEqual(await upload(kv), []);
    });
  });

  Deno.test(`${kind} store: invalid input and records that fail parsing are clear errors`, async () => {
    await withStore(kind, async ({ kv, tmp, store }) => {
      await assert.rejects(store.publish(new Map()), /without files/);
      await assert.rejects(store.publish(new Map([["../x", new Uint8Array(1)]])), StoreInputError);
      await assert.rejects(store.publish(new Map([["a", new Uint8Array(1)], ["a/b", new Uint8Array(1)]])), /both/);
      await assert.rejects(store.publish(join(tmp, "nope")), StoreInputError);
      await assert.rejects(
        store.publish(sampleFiles(), { trainedPairs: -1 } as never),
        (err: Error) => err instanceof StoreInputError && /trainedPairs/.test(err.message),
      );
      assert.deepEqual(await allKeys(kv), [], "nothing written by a refused publish");

      const v1 = await store.publish(sampleFiles());
      await kv.set(checkpointVersionKey(1), { ...v1, files: "not a map" });
      await assert.rejects(store.current(), (err: Error) => {
        assert.ok(err instanceof StoreCorruptError);
        assert.match(err.message, /record of policy version 1 .*does not match/s);
        return true;
      });
      await kv.set(checkpointVersionKey(1), { ...v1, sha256: "0".repeat(64) });
      await assert.rejects(store.get(1), /record of policy version 1 is inconsistent/);
      await kv.set(policyPointerKey(), { version: "one" });
      await assert.rejects(readPointer(kv), StoreCorruptError);
    });
  });
}

Deno.test("kv store: a corrupted, deleted or missing last chunk is detected by materialize", async () => {
  await withStore("kv", async ({ kv, tmp, store }) => {
    const { version, files } = await store.publish(sampleFiles());
    const chunks = Math.ceil(files["model.safetensors"]!.bytes / KV_CHUNK_BYTES);
    assert.equal(chunks, 17);
    const key = (i: number) => checkpointBlobKey(version, "model.safetensors", i);
    const original = (await kv.get<Uint8Array>(key(3))).value!;
    const dest = join(tmp, "out");
    const expectCorrupt = async (pattern: RegExp) => {
      await assert.rejects(store.materialize(version, dest), (err: Error) => {
        assert.ok(err instanceof StoreCorruptError, String(err));
        assert.match(err.message, /policy version 1: file 'model\.safetensors'/);
        assert.match(err.message, pattern);
        return true;
      });
      assert.deepEqual(await Array.fromAsync(Deno.readDir(tmp)), [], "no directory appears");
    };

    const flipped = original.slice();
    flipped[100]! ^= 0xff;
    await kv.set(key(3), flipped);
    await expectCorrupt(/does not match its sha256/);

    await kv.delete(key(3));
    await expectCorrupt(/missing chunk 3 \(the next chunk held is 4\)/);

    await kv.set(key(3), original);
    await kv.delete(key(chunks - 1));
    await expectCorrupt(/missing chunks from chunk 16 on/);

    await kv.set(key(chunks - 1), new Uint8Array(50_000));
    await expectCorrupt(/is 1010000 bytes but its record says 1000003/);
  });
});

Deno.test("dir store: an altered, truncated or deleted file is detected by materialize", async () => {
  await withStore("dir", async ({ kv, tmp }) => {
    const store = new DirCheckpointStore(kv, join(tmp, "store"));
    const { version } = await store.publish(sampleFiles());
    const file = join(store.versionDir(version), "model.safetensors");
    const original = await Deno.readFile(file);
    const dest = join(tmp, "out");
    const expectCorrupt = async (pattern: RegExp) => {
      await assert.rejects(store.materialize(version, dest), (err: Error) => {
        assert.ok(err instanceof StoreCorruptError, String(err));
        assert.match(err.message, /policy version 1: file 'model\.safetensors'/);
        assert.match(err.message, pattern);
        return true;
      });
      assert.deepEqual((await Array.fromAsync(Deno.readDir(tmp))).map((e) => e.name), ["store"]);
    };
    const altered = original.slice();
    altered[500_000]! ^= 1;
    await Deno.writeFile(file, altered);
    await expectCorrupt(/does not match its sha256/);
    await Deno.writeFile(file, original.subarray(0, 999_999));
    await expectCorrupt(/is 999999 bytes but its record says 1000003/);
    await Deno.remove(file);
    await expectCorrupt(/cannot be read from/);
  });
});

Deno.test("kv store: every commit stays under KV's limits (the local KV enforces them)", async () => {
  await withStore("kv", async ({ kv, tmp, store }) => {
    // 3 MB in one file: 50 chunks, so at least 4 commits of at most 13 chunks.
    const big = new Map([["model.safetensors", randomBytes(3_000_000)]]);
    const { version } = await store.publish(big);
    await assertDirHolds(await store.materialize(version, join(tmp, "big")), big);
    assert.equal(await countKeys(kv, CHECKPOINT_BLOB_PREFIX), 50);
  });
});

Deno.test("pollPointer reports the first pointer and every change, and stops on abort", async () => {
  await withStore("kv", async ({ kv, store }) => {
    const seen: (PolicyPointer | null)[] = [];
    let notify = () => {};
    const next = () => new Promise<void>((resolve) => notify = resolve);
    const controller = new AbortController();
    let first = next();
    const polling = pollPointer(kv, 5, (p) => {
      seen.push(p);
      notify();
    }, controller.signal);
    await first;
    assert.deepEqual([...seen], [null]);

    first = next();
    await store.publish(sampleFiles());
    await first;
    first = next();
    await store.publish(sampleFiles());
    await first;
    first = next();
    await store.rollback(1);
    await first;
    await new Promise((r) => setTimeout(r, 30)); // several polls without a change
    assert.deepEqual(seen.map((p) => p?.version ?? null), [null, 1, 2, 1]);

    controller.abort();
    await polling;
    await store.publish(sampleFiles());
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(seen.length, 4, "nothing reported after abort");
    await assert.rejects(pollPointer(kv, 0, () => {}, controller.signal), StoreInputError);
  });
});

/** Upload markers still in KV. */
async function upload(kv: Deno.Kv): Promise<Deno.KvKey[]> {
  return (await Array.fromAsync(kv.list({ prefix: CHECKPOINT_UPLOAD_PREFIX }))).map((e) => e.key);
}

/** A KV handle whose reads of the pointer wait at `gate`, so two publishers both start from the same pointer. */
function gatePointerRead(kv: Deno.Kv, gate: { wait: () => Promise<void> }): Deno.Kv {
  const pointer = JSON.stringify(policyPointerKey());
  return beforeGetReturns(kv, (key) => JSON.stringify(key) === pointer ? gate.wait() : Promise.resolve());
}

/** A KV handle that runs `hook` after each `get` has read and before it returns. */
function beforeGetReturns(kv: Deno.Kv, hook: (key: Deno.KvKey) => Promise<void>): Deno.Kv {
  return new Proxy(kv, {
    get(target, prop) {
      if (prop === "get") {
        return async (key: Deno.KvKey, options?: { consistency?: Deno.KvConsistencyLevel }) => {
          const entry = await target.get(key, options);
          await hook(key);
          return entry;
        };
      }
      const value = Reflect.get(target, prop, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

async function hasFilesOf(kind: Kind, kv: Deno.Kv, root: string, version: number): Promise<boolean> {
  if (kind === "kv") return (await countKeys(kv, [...CHECKPOINT_BLOB_PREFIX, version])) > 0;
  return (await versionsOnDisk(root)).some((name) => name.includes(`v${String(version).padStart(6, "0")}`));
}

async function assertNoFilesOf(kind: Kind, kv: Deno.Kv, root: string, version: number): Promise<void> {
  assert.equal(await hasFilesOf(kind, kv, root, version), false, `files of version ${version} are gone`);
}

/** Files of a version as a crashed upload leaves them. */
async function fakeFiles(kind: Kind, kv: Deno.Kv, root: string, version: number): Promise<void> {
  if (kind === "kv") {
    for (let i = 0; i < 3; i++) await kv.set(checkpointBlobKey(version, "model.safetensors", i), randomBytes(100));
  } else {
    const dir = join(root, `.tmp-v${String(version).padStart(6, "0")}-${crypto.randomUUID()}`);
    await Deno.mkdir(dir, { recursive: true });
    await Deno.writeFile(join(dir, "model.safetensors"), randomBytes(100));
  }
}
