import assert from "node:assert/strict";
import { KvCheckpointStore } from "./checkpoints.ts";
import { FencedOutError, StoreInputError } from "./errors.ts";
import { CHECKPOINT_BLOB_PREFIX, checkpointUploadKey, trainedPairsPrefix } from "./keys.ts";
import { memoryStore } from "./_test_helpers.ts";
import {
  holdsFence,
  MAX_PAIRS_PER_VERSION,
  readFence,
  takeFence,
  trainedPairs,
  unsettledVersions,
} from "./training_records.ts";

const files = () => new Map([["model.safetensors", new Uint8Array([1, 2, 3])], ["config.json", new Uint8Array([7])]]);

async function keysUnder(kv: Deno.Kv, prefix: Deno.KvKey): Promise<Deno.KvKey[]> {
  return (await Array.fromAsync(kv.list({ prefix }))).map((e) => e.key);
}

Deno.test("a version's pair ids and its unsettled marker exist exactly when the version does", async () => {
  const { kv } = await memoryStore();
  using _ = kv;
  const store = new KvCheckpointStore(kv);
  const fence = await takeFence(kv, { owner: "t", instance: "t#1" });
  const ids = Array.from({ length: 2500 }, (_, i) => `id-${i}`);
  const v1 = await store.publish(files(), {}, { pairIds: ids, fence });
  assert.deepEqual(await trainedPairs(kv, v1.version), ids, "three chunks, in order");
  assert.deepEqual(await unsettledVersions(kv), [1]);

  // A second trainer takes the fence: the first one's next publish writes nothing at all.
  const successor = await takeFence(kv, { owner: "t", instance: "t#2" });
  assert.equal(successor.token, fence.token + 1);
  assert.equal(await holdsFence(kv, fence), false);
  await assert.rejects(
    store.publish(files(), { parentVersion: 1 }, { pairIds: ["late"], fence }),
    (err) => err instanceof FencedOutError && /another trainer took over .*token 1/.test(err.message),
  );
  assert.equal((await store.current())?.version, 1);
  assert.deepEqual(await keysUnder(kv, trainedPairsPrefix(2)), [], "no record for the refused version");
  assert.deepEqual(await unsettledVersions(kv), [1]);
  assert.deepEqual((await keysUnder(kv, CHECKPOINT_BLOB_PREFIX)).map((k) => k[1]), [1, 1], "its chunks are gone");
  assert.equal((await readFence(kv))?.instance, "t#2");

  // The successor publishes; too many ids for one commit are refused before anything is written.
  const v3 = await store.publish(files(), { parentVersion: 1 }, { pairIds: ["a", "b"], fence: successor });
  assert.equal(v3.version, 3, "a refused publish never reuses its number");
  assert.deepEqual(await trainedPairs(kv, 3), ["a", "b"]);
  const tooMany = Array.from({ length: MAX_PAIRS_PER_VERSION + 1 }, (_, i) => `x${i}`);
  await assert.rejects(store.publish(files(), {}, { pairIds: tooMany, fence: successor }), StoreInputError);
  await assert.rejects(store.publish(files(), {}, { pairIds: ["a", "a"], fence: successor }), /one pair twice/);
  assert.equal((await store.current())?.version, 3);
});

Deno.test("a train lease claimed under a lower fence token is free to the fence holder at once", async () => {
  const { kv, store } = await memoryStore();
  using _ = kv;
  for (let i = 0; i < 3; i++) await store.importLabeled({ prompt: `p${i}`, chosen: "y", rejected: "n" });
  const claim = (owner: string, fence?: number) =>
    store.claim({ status: "labeled", role: "train", owner, leaseMs: 300_000, limit: 10, fence });
  assert.equal((await claim("t#dead", 1)).length, 3);
  assert.equal((await claim("t#other")).length, 0, "a live lease, for a claimer without a fence");
  assert.equal((await claim("t#same-token", 1)).length, 0, "a live lease, for the same token");
  assert.equal((await claim("t#next", 2)).length, 3, "void for a higher token");
  assert.equal((await claim("t#next", 2)).length, 0, "and then held under it");
});

Deno.test("abandonUploads deletes what fenced-off trainers left half-uploaded, not the holder's own", async () => {
  const { kv } = await memoryStore();
  using _ = kv;
  const store = new KvCheckpointStore(kv);
  const old = await takeFence(kv, { owner: "t", instance: "t#1" });
  const current = await takeFence(kv, { owner: "t", instance: "t#2" });
  // Uploads killed before their final commit: files written, marker left; one by each trainer.
  await kv.set(checkpointUploadKey(7), { startedAt: Date.now(), storage: "kv", fence: old.token });
  await kv.set([...CHECKPOINT_BLOB_PREFIX, 7, "model.safetensors", 0], new Uint8Array([1]));
  await kv.set(checkpointUploadKey(8), { startedAt: Date.now(), storage: "kv", fence: current.token });
  await kv.set([...CHECKPOINT_BLOB_PREFIX, 8, "model.safetensors", 0], new Uint8Array([1]));
  assert.deepEqual(await store.abandonUploads(current.token), [7]);
  assert.deepEqual((await keysUnder(kv, CHECKPOINT_BLOB_PREFIX)).map((k) => k[1]), [8]);
  assert.equal((await kv.get(checkpointUploadKey(7))).value, null);
  assert.notEqual((await kv.get(checkpointUploadKey(8))).value, null);
});
