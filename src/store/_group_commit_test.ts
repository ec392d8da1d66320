import assert from "node:assert/strict";
import { GroupCommit, RecordedWrites } from "./_group_commit.ts";
import { StoreLimitError } from "./errors.ts";
import { PairStore } from "./pairs.ts";

/**
 * `kv` counting its commits; `after(n, mutations)` runs after the n-th commit, of that many mutations,
 * landed (it may throw).
 */
function counting(kv: Deno.Kv, after: (n: number, mutations: number) => void = () => {}) {
  const counts = { commits: 0 };
  const proxy = new Proxy(kv, {
    get(target, prop) {
      if (prop === "atomic") {
        return () => {
          const op = target.atomic();
          let mutations = 0;
          const mutate = op.mutate.bind(op);
          op.mutate = (...m: Deno.KvMutation[]) => {
            mutations += m.length;
            return mutate(...m);
          };
          const commit = op.commit.bind(op);
          op.commit = async () => {
            const result = await commit();
            after(++counts.commits, mutations);
            return result;
          };
          return op;
        };
      }
      const value = Reflect.get(target, prop, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  return { kv: proxy, counts };
}

function write(key: string, versionstamp: string | null, counter = ["n"]) {
  return new RecordedWrites().check({ key: [key], versionstamp }).set([key], key).sum(counter, 1n);
}

Deno.test("group commit: writes that arrive together share commits, each resolved with its own result", async () => {
  const { kv, counts } = counting(await Deno.openKv(":memory:"));
  const group = new GroupCommit(kv);
  const results = await Promise.all(Array.from({ length: 42 }, (_, i) => group.commit(write(`k${i}`, null), `w${i}`)));
  assert.ok(results.every((ok) => ok));
  // Two go at once (nothing was on its way), the other 40 wait and go ten at a time (10 checks a commit).
  assert.equal(counts.commits, 6);
  for (let i = 0; i < 42; i++) assert.equal((await kv.get([`k${i}`])).value, `k${i}`);
  assert.equal((await kv.get<Deno.KvU64>(["n"])).value?.value, 42n, "sums on one key, folded, add up");
  kv.close();
});

Deno.test("group commit: one failed check fails only its own write; two writes of one key never both win", async () => {
  const { kv, counts } = counting(await Deno.openKv(":memory:"));
  await kv.set(["taken"], "before");
  const group = new GroupCommit(kv);
  const writes = [
    write("a", null),
    write("b", null),
    write("c", null),
    write("taken", null), // its check fails: the key exists
    write("d", null),
    write("same", null),
    write("same", null), // the same key as the one before: never in the same commit
  ];
  const results = await Promise.all(writes.map((w, i) => group.commit(w, `w${i}`)));
  assert.deepEqual(results.slice(0, 5), [true, true, true, false, true]);
  assert.equal(results.slice(5).filter((ok) => ok).length, 1, "one of the two writes of one key wins");
  assert.equal((await kv.get(["taken"])).value, "before");
  assert.equal((await kv.get<Deno.KvU64>(["n"])).value?.value, 5n, "the counter counts the five that won, once each");
  assert.ok(counts.commits >= 4, "the failed group was retried write by write");
  kv.close();
});

Deno.test("group commit: a write KV refuses fails alone; one too large for a commit is refused before any", async () => {
  const kv = await Deno.openKv(":memory:");
  const group = new GroupCommit(kv);
  const huge = new RecordedWrites().set(["big"], "x".repeat(70_000)); // over KV's 64 KiB a value
  const writes = [write("a", null), write("b", null), write("c", null), huge, write("d", null)];
  const results = await Promise.allSettled(writes.map((w, i) => group.commit(w, `w${i}`)));
  assert.deepEqual(results.map((r) => r.status), ["fulfilled", "fulfilled", "fulfilled", "rejected", "fulfilled"]);
  assert.ok((results[3] as PromiseRejectedResult).reason instanceof StoreLimitError);
  assert.equal((await kv.get<Deno.KvU64>(["n"])).value?.value, 4n);

  // Bounded at two bytes a character, these 600 kB of ASCII would be over the 800 KiB of a commit: the
  // bound is made exact before anything is refused.
  const ascii = new RecordedWrites();
  for (let i = 0; i < 12; i++) ascii.set(["ascii", i], "x".repeat(50_000));
  assert.ok(ascii.bytes > 800 * 1024);
  assert.equal(await group.commit(ascii, "600 kB of ASCII"), true);

  const tooMany = new RecordedWrites();
  for (let i = 0; i < 11; i++) tooMany.check({ key: ["c", i], versionstamp: null });
  await assert.rejects(group.commit(tooMany, "eleven checks"), StoreLimitError);
  kv.close();
});

Deno.test("group commit: an error that may follow a landed commit fails every member, never commits twice", async () => {
  // The first shared commit (more than one write's set and sum) lands, then its answer is lost, as a remote
  // KV's can be.
  let lost = false;
  const { kv } = counting(await Deno.openKv(":memory:"), (_, mutations) => {
    if (mutations > 2 && !lost) {
      lost = true;
      throw new Error("connection reset");
    }
  });
  const group = new GroupCommit(kv);
  const plain = (i: number) => new RecordedWrites().set([`k${i}`], i).sum(["n"], 1n); // no check: a retry would double
  const results = await Promise.allSettled(Array.from({ length: 6 }, (_, i) => group.commit(plain(i), `w${i}`)));
  // The first two go alone (nothing was on its way); the four that waited share the commit that was lost.
  assert.deepEqual(results.map((r) => r.status), [
    "fulfilled",
    "fulfilled",
    "rejected",
    "rejected",
    "rejected",
    "rejected",
  ]);
  for (const r of results.slice(2)) assert.match(String((r as PromiseRejectedResult).reason), /connection reset/);
  assert.equal((await kv.get<Deno.KvU64>(["n"])).value?.value, 6n, "each write landed once");
  kv.close();
});

Deno.test("group commit: concurrent verdicts through the store land once each, counters exact", async () => {
  const kv = await Deno.openKv(":memory:");
  const store = new PairStore(kv);
  const ids: string[] = [];
  for (let i = 0; i < 60; i++) {
    ids.push(
      (await store.create({ prompt: `p${i}`, promptText: `p${i}`, responses: ["a", "b"], policyVersion: 0 })).pair.id,
    );
  }
  // Every pair twice at once, from two stores on the KV (two instances): one verdict wins, the other is a 409.
  const other = new PairStore(kv);
  const results = await Promise.allSettled(
    ids.flatMap((id, i) => [
      store.recordVerdict(id, { choice: i % 2 ? "a" : "b", judge: { kind: "human", id: "one" } }),
      other.recordVerdict(id, { choice: "tie", judge: { kind: "human", id: "two" } }),
    ]),
  );
  const won = results.filter((r) => r.status === "fulfilled").length;
  assert.equal(won, 60);
  for (const r of results) if (r.status === "rejected") assert.match(String(r.reason), /no longer awaiting judgment/);
  const counts = await store.counts();
  assert.equal(counts.labeled + counts.tie, 60);
  assert.equal(counts.awaiting_judgment, 0);
  kv.close();
});
