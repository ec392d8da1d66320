import assert from "node:assert/strict";
import { memoryStore, recordVersion, sampledInput } from "./_test_helpers.ts";
import { ACTIVITY_RETENTION_MS, MINUTE_MS, minuteOf } from "./activity.ts";
import { ConflictError, StoreInputError } from "./errors.ts";
import { ACTIVITY_PREFIX } from "./keys.ts";

const human = { kind: "human", id: "ann" } as const;
const llm = { kind: "hf", id: "hf:judge" } as const;

Deno.test("activity: every insert and transition is counted in its minute, in the same commit", async () => {
  const { kv, store, clock } = await memoryStore();
  try {
    const t0 = clock.t;
    const created = [];
    for (let i = 0; i < 4; i++) created.push((await store.create(sampledInput())).pair);
    await store.importLabeled({ prompt: "1+1=", chosen: "2", rejected: "3" });

    clock.advance(MINUTE_MS + 5);
    await store.recordVerdict(created[0]!.id, { choice: "a", judge: llm, agreed: true });
    await store.recordVerdict(created[1]!.id, { choice: "tie", judge: llm, agreed: false });
    await store.recordVerdict(created[2]!.id, { choice: "b", judge: human, annotator: "ann" });
    // A refused verdict writes nothing, its counters included.
    await assert.rejects(store.recordVerdict(created[0]!.id, { choice: "b", judge: llm, agreed: true }), ConflictError);

    clock.advance(MINUTE_MS);
    const [claimed] = await store.claim({ status: "labeled", role: "train", owner: "t", leaseMs: 10_000, limit: 1 });
    await recordVersion(kv, 1, [claimed!.id]);
    const marked = await store.settle(1);
    assert.equal(marked.trained.length, 1);
    await store.settle(1); // a retry counts nothing

    clock.advance(MINUTE_MS);
    const expiring = (await store.create(sampledInput({ expiresAt: clock.t + 10 }))).pair;
    clock.advance(10);
    assert.equal(await store.expirePending(), 1);
    assert.equal((await store.get(expiring.id))!.status, "expired");

    const activity = await store.activity({ from: t0, to: clock.t + MINUTE_MS });
    assert.deepEqual(activity.minutes, [0, 1, 2, 3, 4].map((i) => minuteOf(t0) + i * MINUTE_MS));
    assert.deepEqual(activity.counts, {
      created: [4, 0, 0, 1, 0],
      imported: [1, 0, 0, 0, 0],
      labeled: [0, 2, 0, 0, 0],
      tie: [0, 1, 0, 0, 0],
      expired: [0, 0, 0, 1, 0],
      trained: [0, 0, 1, 0, 0],
      stale: [0, 0, 0, 0, 0],
      rejected: [0, 0, 0, 0, 0],
      judge_failed: [0, 0, 0, 0, 0],
      identical: [0, 0, 0, 0, 0],
      agreed: [0, 1, 0, 0, 0],
      disagreed: [0, 1, 0, 0, 0],
    });
    // The verdict kept the judge's agreement; a human verdict has none.
    assert.equal((await store.get(created[1]!.id))!.verdict!.agreed, false);
    assert.equal((await store.get(created[2]!.id))!.verdict!.agreed, undefined);
    // A window is read exactly: the minute before t0 and a single minute.
    const one = await store.activity({ from: t0 + MINUTE_MS, to: t0 + MINUTE_MS + 1 });
    assert.deepEqual(one.minutes, [minuteOf(t0) + MINUTE_MS]);
    assert.deepEqual(one.counts.labeled, [2]);
  } finally {
    kv.close();
  }
});

Deno.test("activity: verdicts recorded before the agreement field existed still read back", async () => {
  const { kv, store } = await memoryStore();
  try {
    const { pair } = await store.create(sampledInput());
    await store.recordVerdict(pair.id, { choice: "a", judge: llm });
    const stored = (await kv.get(["pair", pair.id])).value as Record<string, unknown>;
    assert.equal("agreed" in (stored.verdict as object), false);
    assert.equal((await store.get(pair.id))!.status, "labeled");
  } finally {
    kv.close();
  }
});

Deno.test("activity: counters past the retention are pruned by the periodic sweep, at most every 10 minutes", async () => {
  const { kv, store, clock } = await memoryStore();
  const counters = async () => {
    const keys = [];
    for await (const e of kv.list({ prefix: ACTIVITY_PREFIX })) keys.push(e.key[1] as number);
    return keys;
  };
  try {
    const first = minuteOf(clock.t);
    await store.create(sampledInput());
    clock.advance(5 * MINUTE_MS);
    const second = minuteOf(clock.t);
    await store.create(sampledInput());
    await store.expirePending(); // the first sweep prunes nothing: both minutes are recent
    assert.deepEqual(await counters(), [first, second]);
    clock.advance(ACTIVITY_RETENTION_MS - 2 * MINUTE_MS); // the first minute is past the retention
    await store.expirePending();
    assert.deepEqual(await counters(), [second]);
    clock.advance(5 * MINUTE_MS); // now the second is past it too, but the last prune was 5 minutes ago
    await store.expirePending();
    assert.deepEqual(await counters(), [second], "not pruned again within 10 minutes");
    clock.advance(5 * MINUTE_MS);
    await store.expirePending();
    assert.deepEqual(await counters(), []);
  } finally {
    kv.close();
  }
});

Deno.test("activity: many minutes are pruned in batches", async () => {
  const { kv, store, clock } = await memoryStore();
  try {
    const op = kv.atomic();
    for (let i = 0; i < 900; i++) op.sum(["activity", minuteOf(clock.t) + i * MINUTE_MS, "created"], 1n);
    await op.commit();
    clock.advance(ACTIVITY_RETENTION_MS + 900 * MINUTE_MS);
    await store.expirePending();
    assert.equal((await Array.fromAsync(kv.list({ prefix: ACTIVITY_PREFIX }))).length, 0);
  } finally {
    kv.close();
  }
});

Deno.test("activity: a window must be in order and at most a day", async () => {
  const { kv, store, clock } = await memoryStore();
  try {
    assert.throws(() => store.activity({ from: clock.t, to: clock.t - 1 }), StoreInputError);
    assert.throws(() => store.activity({ from: 0, to: clock.t }), StoreInputError);
    assert.throws(() => store.activity({ from: NaN, to: clock.t }), StoreInputError);
    const day = await store.activity({ from: clock.t - 1439 * MINUTE_MS, to: clock.t + MINUTE_MS - 1 });
    assert.equal(day.minutes.length, 24 * 60);
  } finally {
    kv.close();
  }
});
