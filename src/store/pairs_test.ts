import assert from "node:assert/strict";
import { join } from "node:path";
import {
  ConflictError,
  NotFoundError,
  type Pair,
  PairStore,
  StoreCorruptError,
  StoreInputError,
  StoreLimitError,
} from "./pairs.ts";
import { idempotencyKey, leaseKey, pairKey } from "./keys.ts";
import {
  allKeys,
  barrier,
  FakeClock,
  legacyEqualCandidates,
  memoryStore,
  recordVersion,
  sampledInput,
  scanAndCheckIndexes,
  seededRandom,
} from "./_test_helpers.ts";
import { unsettledVersions } from "./training_records.ts";

const judge = { kind: "verifier", id: "exact-match" } as const;

async function ids(pairs: Promise<{ pairs: Pair[] }>): Promise<string[]> {
  return (await pairs).pairs.map((p) => p.id);
}

Deno.test("a verdict moves the pair between status indexes and counters in one step", async () => {
  const { kv, store, clock } = await memoryStore();
  using _ = kv;
  const { pair, created } = await store.create(sampledInput({ candidates: [2, 0] }));
  assert.ok(created);
  assert.equal(pair.status, "awaiting_judgment");
  assert.equal(pair.source, "sampled");
  assert.deepEqual(await store.get(pair.id), pair);
  assert.deepEqual(await ids(store.list({ status: "awaiting_judgment" })), [pair.id]);

  clock.advance(1500);
  const labeled = await store.recordVerdict(pair.id, { choice: "b", judge, latencyMs: 12 });
  // b is candidates[1] = response 0, so the pair prefers " 4" over " four".
  assert.equal(labeled.status, "labeled");
  assert.equal(labeled.chosen, 0);
  assert.equal(labeled.rejected, 2);
  assert.equal(labeled.verdict?.at, clock.t);
  assert.equal(labeled.updatedAt, clock.t);
  assert.deepEqual(await store.get(pair.id), labeled);
  assert.deepEqual(await ids(store.list({ status: "awaiting_judgment" })), []);
  assert.deepEqual(await ids(store.list({ status: "labeled" })), [pair.id]);

  const tie = (await store.create(sampledInput())).pair;
  const tied = await store.recordVerdict(tie.id, { choice: "tie", judge, reason: "both right" });
  assert.equal(tied.status, "tie");
  assert.equal(tied.chosen, undefined);
  assert.deepEqual(await ids(store.list({ status: "tie" })), [tie.id]);
  assert.deepEqual(await ids(store.list()), [tie.id, pair.id]);
  assert.deepEqual(await store.counts(), {
    awaiting_judgment: 0,
    labeled: 1,
    tie: 1,
    expired: 0,
    trained: 0,
    stale: 0,
    rejected: 0,
    judge_failed: 0,
    identical: 0,
  });
  assert.deepEqual(await store.counts(), await scanAndCheckIndexes(kv));
});

Deno.test("a second verdict is a conflict and never overwrites the first", async () => {
  const { kv, store } = await memoryStore();
  using _ = kv;
  const { pair } = await store.create(sampledInput());
  const first = await store.recordVerdict(pair.id, { choice: "a", judge });
  await assert.rejects(
    store.recordVerdict(pair.id, { choice: "b", judge: { kind: "human", id: "alice" } }),
    (err) => err instanceof ConflictError && /no longer awaiting judgment: its status is 'labeled'/.test(err.message),
  );
  assert.deepEqual(await store.get(pair.id), first);
  await assert.rejects(store.recordVerdict("01ARZ3NDEKTSV4RRFFQ69G5FAV", { choice: "a", judge }), NotFoundError);
  await assert.rejects(
    store.recordVerdict(pair.id, { choice: "c" as "a", judge }),
    (err) => err instanceof StoreInputError && /choice/.test(err.message),
  );
});

Deno.test("judges racing on one pair: exactly one verdict lands, the others get 409", async () => {
  const { kv, store } = await memoryStore();
  using _ = kv;
  const { pair } = await store.create(sampledInput());
  const choices = ["a", "b", "tie", "a", "b", "tie"] as const;
  const results = await Promise.allSettled(
    choices.map((choice, i) => store.recordVerdict(pair.id, { choice, judge: { kind: "human", id: `j${i}` } })),
  );
  const won = results.filter((r) => r.status === "fulfilled");
  assert.equal(won.length, 1);
  for (const r of results) if (r.status === "rejected") assert.ok(r.reason instanceof ConflictError, String(r.reason));
  assert.deepEqual(await store.get(pair.id), won[0]!.value);
  assert.deepEqual(await store.counts(), await scanAndCheckIndexes(kv));
});

Deno.test("idempotency keys return the first pair instead of creating another", async () => {
  const { kv, store } = await memoryStore();
  using _ = kv;
  const first = await store.create(sampledInput(), { idempotencyKey: "req-1" });
  const again = await store.create(sampledInput({ responses: ["x", "y"] }), { idempotencyKey: "req-1" });
  assert.equal(first.created, true);
  assert.equal(again.created, false);
  assert.deepEqual(again.pair, first.pair);
  assert.equal((await kv.get(idempotencyKey("req-1"))).value, first.pair.id);

  // Concurrent repeats: one creates, the rest replay it.
  const racing = await Promise.all(
    Array.from({ length: 6 }, () => store.create(sampledInput(), { idempotencyKey: "req-2" })),
  );
  assert.equal(racing.filter((r) => r.created).length, 1);
  assert.equal(new Set(racing.map((r) => r.pair.id)).size, 1);

  const imported = { prompt: "p", chosen: "good", rejected: "bad" };
  const i1 = await store.importLabeled(imported, { idempotencyKey: "line-7" });
  const i2 = await store.importLabeled(imported, { idempotencyKey: "line-7" });
  assert.deepEqual([i1.created, i2.created], [true, false]);
  assert.equal(i2.pair.id, i1.pair.id);
  assert.equal(i1.pair.status, "labeled");
  assert.equal(i1.pair.source, "imported");
  assert.deepEqual(i1.pair.verdict?.judge, { kind: "import", id: "import" });
  assert.deepEqual([i1.pair.responses[i1.pair.chosen!], i1.pair.responses[i1.pair.rejected!]], ["good", "bad"]);
  await store.create(sampledInput()); // no key: always a new pair
  assert.deepEqual(await store.counts(), {
    awaiting_judgment: 3,
    labeled: 1,
    tie: 0,
    expired: 0,
    trained: 0,
    stale: 0,
    rejected: 0,
    judge_failed: 0,
    identical: 0,
  });
  assert.deepEqual(await store.counts(), await scanAndCheckIndexes(kv));
});

Deno.test("list pages newest first through a cursor, iterate goes oldest first", async () => {
  const { kv, store, clock } = await memoryStore();
  using _ = kv;
  const created: string[] = [];
  for (let i = 0; i < 25; i++) {
    created.push((await store.create(sampledInput({ prompt: `q${i}` }))).pair.id);
    if (i % 3 === 0) clock.advance(1); // several pairs share a millisecond: ids still keep the order
  }
  const seen: string[] = [];
  let cursor: string | undefined;
  const sizes: number[] = [];
  do {
    const page = await store.list({ status: "awaiting_judgment", limit: 10, cursor });
    sizes.push(page.pairs.length);
    seen.push(...page.pairs.map((p) => p.id));
    cursor = page.cursor;
  } while (cursor !== undefined);
  assert.deepEqual(sizes, [10, 10, 5]);
  assert.deepEqual(seen, created.toReversed());
  assert.deepEqual(await ids(store.list({ limit: 3 })), created.toReversed().slice(0, 3)); // the time index

  // A pair that leaves the status between pages does not break the listing of the others.
  const page1 = await store.list({ status: "awaiting_judgment", limit: 5 });
  await store.recordVerdict(created[15]!, { choice: "a", judge });
  const page2 = await store.list({ status: "awaiting_judgment", limit: 5, cursor: page1.cursor });
  assert.deepEqual(page2.pairs.map((p) => p.id), [19, 18, 17, 16, 14].map((i) => created[i]));

  const exported: string[] = [];
  for await (const p of store.iterate({ status: "awaiting_judgment" })) exported.push(p.id);
  assert.deepEqual(exported, created.filter((_, i) => i !== 15));
  const everything: string[] = [];
  for await (const p of store.iterate()) everything.push(p.id);
  assert.deepEqual(everything, created);

  await assert.rejects(store.list({ limit: 101 }), StoreInputError);
  await assert.rejects(store.list({ cursor: "not-a-cursor!" }), /was not returned by this listing/);
});

Deno.test("pending pairs expire: verdicts refused at once, the sweep moves them", async () => {
  const { kv, store, clock } = await memoryStore();
  using _ = kv;
  const soon = (await store.create(sampledInput({ expiresAt: clock.t + 1000 }))).pair;
  const later = (await store.create(sampledInput({ expiresAt: clock.t + 5000 }))).pair;
  const never = (await store.create(sampledInput())).pair;
  clock.advance(1000); // expiresAt <= now: expired
  await assert.rejects(
    store.recordVerdict(soon.id, { choice: "a", judge }),
    (err) => err instanceof ConflictError && /expired at/.test(err.message),
  );
  const claimed = await store.claim({
    status: "awaiting_judgment",
    role: "judge",
    owner: "j",
    leaseMs: 60_000,
    limit: 10,
  });
  assert.deepEqual(claimed.map((p) => p.id), [later.id, never.id]);

  assert.equal(await store.expirePending(), 1);
  assert.equal((await store.get(soon.id))?.status, "expired");
  assert.deepEqual(await ids(store.list({ status: "expired" })), [soon.id]);
  assert.equal(await store.expirePending(), 0);
  assert.equal(await store.expirePending(clock.t + 10_000), 1);
  assert.equal((await store.get(later.id))?.status, "expired");
  assert.equal((await store.get(never.id))?.status, "awaiting_judgment");
  assert.equal((await kv.get(leaseKey("judge", later.id))).value, null, "the judge lease goes with the wait");
  assert.deepEqual(await store.counts(), {
    awaiting_judgment: 1,
    labeled: 0,
    tie: 0,
    expired: 2,
    trained: 0,
    stale: 0,
    rejected: 0,
    judge_failed: 0,
    identical: 0,
  });
  assert.deepEqual(await store.counts(), await scanAndCheckIndexes(kv));

  // A sweep over more pairs than one commit takes, with a verdict landing on one just before.
  const batch = [];
  for (let i = 0; i < 20; i++) batch.push((await store.create(sampledInput({ expiresAt: clock.t + 10 }))).pair.id);
  await store.recordVerdict(batch[9]!, { choice: "a", judge });
  clock.advance(10);
  assert.equal(await store.expirePending(), 19);
  assert.deepEqual(await store.counts(), await scanAndCheckIndexes(kv));
});

Deno.test("leases: one owner at a time, no double claim, expiry hands the pair on", async () => {
  const { kv, store, clock } = await memoryStore();
  using _ = kv;
  const [p1, p2, p3] = [
    (await store.create(sampledInput())).pair,
    (await store.create(sampledInput())).pair,
    (await store.create(sampledInput())).pair,
  ];
  const claim = (owner: string, limit = 10) =>
    store.claim({ status: "awaiting_judgment", role: "judge", owner, leaseMs: 1000, limit }).then((ps) =>
      ps.map((p) => p.id)
    );
  assert.deepEqual(await claim("A", 2), [p1!.id, p2!.id]); // oldest first
  assert.deepEqual(await claim("A"), [p3!.id]); // what A holds is not handed out twice
  assert.deepEqual(await claim("A"), []);
  assert.deepEqual(await claim("B"), []);
  // A lease for another role is independent.
  assert.equal(
    (await store.claim({ status: "awaiting_judgment", role: "train", owner: "T", leaseMs: 1000, limit: 10 })).length,
    3,
  );

  clock.advance(600);
  assert.equal(await store.renew(p1!.id, { role: "judge", owner: "A", leaseMs: 1000 }), true);
  assert.equal(await store.renew(p1!.id, { role: "judge", owner: "B", leaseMs: 1000 }), false);
  clock.advance(400); // p2 and p3 expire now; p1 was renewed until +1600
  assert.deepEqual(await claim("B"), [p2!.id, p3!.id]);
  assert.equal(await store.renew(p2!.id, { role: "judge", owner: "A", leaseMs: 1000 }), false, "A lost p2");
  assert.equal(await store.release(p1!.id, "judge", "B"), false);
  assert.equal(await store.release(p1!.id, "judge", "A"), true);
  assert.deepEqual(await claim("C"), [p1!.id]);
  assert.equal(await store.release(p1!.id, "judge", "A"), false);

  // A claim filter sees the pair and can pass it over.
  const p4 = (await store.create(sampledInput({ policyVersion: 9 }))).pair;
  const filtered = await store.claim({
    status: "awaiting_judgment",
    role: "judge",
    owner: "D",
    leaseMs: 1000,
    limit: 10,
    filter: (p) => p.policyVersion !== 9,
  });
  assert.deepEqual(filtered, []);
  assert.deepEqual(await claim("D"), [p4.id]);
});

Deno.test("claimers racing on one KV: every pair is won exactly once", async () => {
  const { kv, store } = await memoryStore();
  using _ = kv;
  const { pair } = await store.create(sampledInput());
  // The filter holds every claimer until all have read the free lease, so all of them commit against it.
  const gate = barrier(8);
  const claims = await Promise.all(
    Array.from({ length: 8 }, (_, i) =>
      store.claim({
        status: "awaiting_judgment",
        role: "judge",
        owner: `w${i}`,
        leaseMs: 60_000,
        limit: 1,
        filter: () => gate.wait().then(() => true),
      })),
  );
  const winners = claims.flatMap((c, i) => c.map(() => `w${i}`));
  assert.equal(winners.length, 1);
  assert.equal(claims.flat()[0]!.id, pair.id);
  assert.equal(((await kv.get(leaseKey("judge", pair.id))).value as { owner: string }).owner, winners[0]);

  for (let i = 0; i < 19; i++) await store.create(sampledInput());
  const many = await Promise.all(
    Array.from(
      { length: 4 },
      (_, i) => store.claim({ status: "awaiting_judgment", role: "judge", owner: `v${i}`, leaseMs: 60_000, limit: 6 }),
    ),
  );
  const claimed = many.flat().map((p) => p.id);
  assert.equal(new Set(claimed).size, claimed.length, "no pair claimed twice");
  assert.equal(claimed.length, 19);
});

Deno.test("two KV handles on one file (two processes) never both win a claim", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pair_store_" });
  try {
    const path = join(dir, "kv.sqlite");
    using kvA = await Deno.openKv(path);
    using kvB = await Deno.openKv(path);
    const clock = new FakeClock();
    const storeA = new PairStore(kvA, { now: clock.now });
    const storeB = new PairStore(kvB, { now: clock.now });
    const created: string[] = [];
    for (let i = 0; i < 12; i++) created.push((await storeA.create(sampledInput())).pair.id);
    const gate = barrier(6);
    const claimers = [storeA, storeB, storeA, storeB, storeA, storeB].map((store, i) =>
      store.claim({
        status: "awaiting_judgment",
        role: "judge",
        owner: `p${i}`,
        leaseMs: 60_000,
        limit: 12,
        filter: () => gate.wait().then(() => true),
      })
    );
    const results = await Promise.all(claimers);
    const all = results.flat().map((p) => p.id);
    assert.equal(new Set(all).size, all.length, "no pair won by two claimers");
    assert.deepEqual(all.toSorted(), created);
    for (const [i, won] of results.entries()) {
      for (const p of won) {
        assert.equal(((await kvB.get(leaseKey("judge", p.id))).value as { owner: string }).owner, `p${i}`);
      }
    }
    // The verdict race across handles too.
    const verdicts = await Promise.allSettled([
      storeA.recordVerdict(created[0]!, { choice: "a", judge }),
      storeB.recordVerdict(created[0]!, { choice: "b", judge }),
    ]);
    assert.deepEqual(verdicts.map((v) => v.status).toSorted(), ["fulfilled", "rejected"]);
    assert.deepEqual(await storeB.counts(), await scanAndCheckIndexes(kvA));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("settle marks what a version's record holds whatever lease it carries, once; retire ends a labeled pair", async () => {
  const { kv, store } = await memoryStore();
  using _ = kv;
  const labeled: string[] = [];
  for (let i = 0; i < 4; i++) {
    labeled.push((await store.importLabeled({ prompt: `p${i}`, chosen: "y", rejected: "n" })).pair.id);
  }
  const pending = (await store.create(sampledInput())).pair.id;
  // A trainer that died holding live leases on three of them (the production lease outlives a restart).
  const held = await store.claim({ status: "labeled", role: "train", owner: "T#dead", leaseMs: 300_000, limit: 3 });
  assert.equal(held.length, 3);

  await recordVersion(kv, 4, [labeled[0]!, labeled[1]!, labeled[3]!, pending]);
  assert.deepEqual(await unsettledVersions(kv), [4]);
  const first = await store.settle(4);
  assert.deepEqual(first.trained, [labeled[0], labeled[1], labeled[3]]);
  assert.deepEqual(first.alreadyTrained, []);
  assert.deepEqual(first.refused.map((r) => r.id), [pending]);
  assert.match(first.refused[0]!.reason, /awaiting_judgment, not labeled/);
  assert.deepEqual(await unsettledVersions(kv), [], "settled: a refusal for good does not keep it unsettled");
  const trained = await store.get(labeled[0]!);
  assert.equal(trained?.status, "trained");
  assert.equal(trained?.trainedInto, 4);
  assert.equal((await kv.get(leaseKey("train", labeled[0]!))).value, null, "the lease goes with the transition");

  // Settling again (a restart after a crash in the middle): nothing counted twice.
  const countsBefore = await store.counts();
  const retry = await store.settle(4);
  assert.deepEqual(retry.alreadyTrained, [labeled[0], labeled[1], labeled[3]]);
  assert.deepEqual(retry.trained, []);
  assert.deepEqual(await store.counts(), countsBefore);
  await recordVersion(kv, 5, [labeled[0]!]);
  const other = await store.settle(5);
  assert.match(other.refused[0]!.reason, /trained into policy version 4, not labeled/);

  // The one pair left ends stale with its reason, once.
  assert.equal(await store.retire(labeled[2]!, "stale", "sampled from v0, more than 2 versions back"), true);
  assert.equal(await store.retire(labeled[2]!, "rejected", "again"), false);
  const stale = await store.get(labeled[2]!);
  assert.equal(stale?.status, "stale");
  assert.equal(stale?.statusReason, "sampled from v0, more than 2 versions back");
  assert.equal((await kv.get(leaseKey("train", labeled[2]!))).value, null);
  assert.deepEqual(await store.counts(), {
    awaiting_judgment: 1,
    labeled: 0,
    tie: 0,
    expired: 0,
    trained: 3,
    stale: 1,
    rejected: 0,
    judge_failed: 0,
    identical: 0,
  });
  assert.deepEqual(await store.counts(), await scanAndCheckIndexes(kv));
});

Deno.test("values over 64 KiB are refused before anything is written", async () => {
  const { kv, store } = await memoryStore();
  using _ = kv;
  await assert.rejects(
    store.create(sampledInput({ responses: ["a".repeat(70_000), "b"] }), { idempotencyKey: "big" }),
    (err) => err instanceof StoreLimitError && /under 65536 bytes .*'responses' ≈ 7\d{4} bytes/.test(err.message),
  );
  // The same text stored two bytes a character (sliced out of a string with an emoji) is measured as such.
  const twoByte = ("😀" + "x".repeat(40_000)).slice(2);
  await assert.rejects(store.create(sampledInput({ responses: [twoByte, "b"] })), StoreLimitError);
  assert.deepEqual(await allKeys(kv), []);

  // Just under the limit is fine; a verdict reason that pushes it over is refused and leaves the pair as it was.
  const { pair } = await store.create(sampledInput({ responses: ["a".repeat(64_000), "b"] }));
  await assert.rejects(store.recordVerdict(pair.id, { choice: "a", judge, reason: "r".repeat(2000) }), StoreLimitError);
  assert.deepEqual(await store.get(pair.id), pair);
  await assert.rejects(
    store.recordCompletion({ id: "c1", prompt: "p", text: "t".repeat(70_000), policyVersion: 0 }),
    StoreLimitError,
  );
  assert.deepEqual(await store.counts(), await scanAndCheckIndexes(kv));
});

Deno.test("a malformed stored value is refused with a clear error", async () => {
  const { kv, store } = await memoryStore();
  using _ = kv;
  const { pair } = await store.create(sampledInput());
  await kv.set(pairKey(pair.id), { ...pair, responses: "not a list", candidates: [0, 0] });
  const clear = (err: unknown) =>
    err instanceof StoreCorruptError &&
    err.message.includes(`Cannot read pair '${pair.id}' from KV as it does not match the current schema`) &&
    /expected array, received string\n\s+→ at responses/.test(err.message);
  await assert.rejects(store.get(pair.id), clear);
  await assert.rejects(store.list(), clear);
  await assert.rejects(store.recordVerdict(pair.id, { choice: "a", judge }), clear);

  await kv.set(pairKey(pair.id), pair); // repaired, so the claim below reaches the lease
  const ok = (await store.create(sampledInput())).pair;
  await kv.set(leaseKey("judge", ok.id), { owner: "old-format", until: 5 });
  await assert.rejects(
    store.claim({ status: "awaiting_judgment", role: "judge", owner: "j", leaseMs: 1000, limit: 10 }),
    (err) => err instanceof StoreCorruptError && /the judge lease on pair '.*'[\s\S]*expiresAt/.test(err.message),
  );
  // A stored pair that breaks a rule across fields (a labeled pair without a verdict).
  const { verdict: _v, ...unjudged } = await store.recordVerdict(ok.id, { choice: "a", judge });
  await kv.set(pairKey(ok.id), unjudged);
  await assert.rejects(store.get(ok.id), /a labeled pair needs a verdict of a or b/);
});

Deno.test("counters match a full scan after a random sequence of operations", async () => {
  for (const seed of [1, 2, 3]) {
    const { kv, store, clock } = await memoryStore();
    using _ = kv;
    const random = seededRandom(seed);
    const pick = <T>(xs: T[]): T | undefined => xs[Math.floor(random() * xs.length)];
    const all: string[] = [];
    for (let step = 0; step < 150; step++) {
      const r = random();
      if (r < 0.3) {
        const expiresAt = random() < 0.5 ? clock.t + Math.floor(random() * 500) : undefined;
        const key = random() < 0.3 ? `k${Math.floor(random() * 5)}` : undefined;
        all.push((await store.create(sampledInput({ expiresAt }), { idempotencyKey: key })).pair.id);
      } else if (r < 0.4) {
        all.push((await store.importLabeled({ prompt: "p", chosen: "c", rejected: "r" })).pair.id);
      } else if (r < 0.65) {
        const choice = pick(["a", "b", "tie"] as const)!;
        await store.recordVerdict(pick(all) ?? "none", { choice, judge }).catch((err) => {
          assert.ok(err instanceof ConflictError || err instanceof NotFoundError, String(err));
        });
      } else if (r < 0.75) {
        const owner = pick(["T1", "T2"])!;
        const won = await store.claim({ status: "labeled", role: "train", owner, leaseMs: 300, limit: 4 });
        const ids = new Set([...won.map((p) => p.id), ...[pick(all)].filter((id) => id !== undefined)]);
        if (random() < 0.2 && won[0]) await store.retire(won[0].id, pick(["stale", "rejected"] as const)!, "why");
        await recordVersion(kv, step, [...ids]);
        await store.settle(step);
      } else if (r < 0.85) {
        await store.expirePending();
      } else if (r < 0.9) {
        await store.claim({ status: "awaiting_judgment", role: "judge", owner: "J", leaseMs: 200, limit: 3 });
      } else {
        clock.advance(Math.floor(random() * 200));
      }
    }
    const scanned = await scanAndCheckIndexes(kv);
    assert.deepEqual(await store.counts(), scanned, `seed ${seed}`);
    assert.ok(Object.values(scanned).filter((n) => n > 0).length >= 4, "the sequence reached most statuses");
  }
});

Deno.test("repairCandidates: an old pair showing the same text as a and b gets two different ones, or ends identical; no verdict lands on it", async () => {
  const { kv, store } = await memoryStore();
  try {
    const mixed = await legacyEqualCandidates(kv, store, [" 56", "56 ", " 57"]);
    const same = await legacyEqualCandidates(kv, store, [" 56", "56", " 56 "]);
    // A verdict on what the old pair showed is refused (it compared a text with itself), and repairs it.
    await assert.rejects(
      store.recordVerdict(mixed.id, { choice: "a", judge: { kind: "human", id: "ann" } }),
      (e: unknown) => e instanceof ConflictError && /two different responses replace them/.test(e.message),
    );
    const repaired = (await store.get(mixed.id))!;
    assert.deepEqual([repaired.status, repaired.candidates], ["awaiting_judgment", [0, 2]]);
    assert.equal(
      (await store.recordVerdict(mixed.id, { choice: "b", judge: { kind: "human", id: "ann" } })).status,
      "labeled",
    );

    const ended = await store.repairCandidates(same.id);
    assert.equal(ended!.status, "identical");
    assert.equal(ended!.expiresAt, undefined);
    assert.equal(await store.repairCandidates(same.id).then((p) => p!.status), "identical", "a repeat changes nothing");
    assert.equal(await store.repairCandidates("01ARZ3NDEKTSV4RRFFQ69G5FAV"), null);
    assert.deepEqual([(await store.counts()).identical, (await store.counts()).awaiting_judgment], [1, 0]);
    await scanAndCheckIndexes(kv);
  } finally {
    kv.close();
  }
});
