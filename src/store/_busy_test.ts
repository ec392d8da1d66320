import assert from "node:assert/strict";
import { isDatabaseLocked, retryingKv, retryWhileLocked } from "./_busy.ts";

const LOCKED = () => new Error("database is locked");

Deno.test("retryWhileLocked: a locked database is waited out; any other error passes at once; the wait is bounded", async () => {
  const slept: number[] = [];
  const sleep = (ms: number) => (slept.push(ms), Promise.resolve());
  let calls = 0;
  assert.equal(
    await retryWhileLocked(() => (++calls < 4 ? Promise.reject(LOCKED()) : Promise.resolve("ok")), sleep),
    "ok",
  );
  assert.equal(calls, 4);
  assert.equal(slept.length, 3);

  calls = 0;
  await assert.rejects(retryWhileLocked(() => (calls++, Promise.reject(new TypeError("bad key"))), sleep), TypeError);
  assert.equal(calls, 1, "not a locked database: not retried");

  slept.length = 0;
  await assert.rejects(retryWhileLocked(() => Promise.reject(LOCKED()), sleep), /database is locked/);
  const waited = slept.reduce((a, b) => a + b, 0);
  assert.ok(waited >= 30_000 && waited < 31_000, `gave up after about 30 s of waiting (${waited} ms)`);
  assert.ok(isDatabaseLocked(new Error("SqliteFailure: database is busy")));
});

Deno.test("retryingKv: one-shot calls and atomic commits are retried while locked, each mutation applied once", async () => {
  const real = await Deno.openKv(":memory:");
  try {
    let lockedCommits = 2;
    let lockedGets = 1;
    // The real KV, whose next commits and gets fail as a busy SQLite file would: before writing anything.
    const flaky = new Proxy(real, {
      get(target, prop) {
        if (prop === "get") {
          return (key: Deno.KvKey) => (lockedGets-- > 0 ? Promise.reject(LOCKED()) : target.get(key));
        }
        if (prop === "atomic") {
          return () => {
            const op = target.atomic();
            const commit = op.commit.bind(op);
            op.commit = () => (lockedCommits-- > 0 ? Promise.reject(LOCKED()) : commit());
            return op;
          };
        }
        const value = Reflect.get(target, prop, target);
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
    const kv = retryingKv(flaky);
    const result = await kv.atomic().check({ key: ["x"], versionstamp: null }).set(["x"], 1).sum(["n"], 1n).commit();
    assert.equal(result.ok, true);
    assert.equal(lockedCommits, -1, "two locked commits, then the third went through");
    assert.equal((await kv.get(["x"])).value, 1);
    assert.equal(lockedGets, -1);
    assert.equal((await real.get<Deno.KvU64>(["n"])).value?.value, 1n, "the sum was applied once");
    const listed = [];
    for await (const e of kv.list({ prefix: [] })) listed.push(e.key);
    assert.deepEqual(listed, [["n"], ["x"]]);
  } finally {
    real.close();
  }
});
