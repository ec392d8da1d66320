import assert from "node:assert/strict";
import { PairStore } from "../store/pairs.ts";
import { LeasedAllowance, type TakeTokens } from "./_allowance.ts";

const WINDOW = 60_000;

/** `n` instances drawing on one limit in one KV (a store each, as separate processes would have). */
async function instances(n: number, limit: number, options: { clock?: () => number } = {}) {
  const kv = await Deno.openKv(":memory:");
  const wants: number[] = [];
  const allowances = Array.from({ length: n }, () => {
    const store = new PairStore(kv);
    const take: TakeTokens = (key, window, want) => {
      wants.push(want);
      return store.takeRateTokens(key, window, want, limit);
    };
    return new LeasedAllowance({ limit, take, clock: options.clock });
  });
  // What the instances took: the limit less what is left, taken all at once.
  const taken = async (key: string) => limit - (await new PairStore(kv).takeRateTokens(key, WINDOW, limit, limit));
  return { kv, allowances, wants, taken };
}

async function admitAll(admits: (boolean | Promise<boolean>)[]): Promise<number> {
  return (await Promise.all(admits)).filter((ok) => ok).length;
}

Deno.test("leased allowance: N instances never admit more than the limit in a window, and lose at most a block each", async () => {
  for (const limit of [1_000, 6_400, 20_000]) {
    const { kv, allowances, taken } = await instances(4, limit);
    // Twice the limit, spread over the instances and all at once.
    const admits = Array.from({ length: 2 * limit }, (_, i) => allowances[i % 4]!.admit("k", WINDOW));
    const admitted = await admitAll(admits);
    const block = Math.floor(limit / 64);
    assert.ok(admitted <= limit, `limit ${limit}: admitted ${admitted}`);
    assert.ok(admitted >= limit - 4 * (block - 1), `limit ${limit}: admitted ${admitted}, lost more than a block each`);
    assert.equal(await taken("k"), limit, "every token of the window was taken");
    kv.close();
  }
});

Deno.test("leased allowance: a small limit is exact across instances, concurrent or one request at a time", async () => {
  const concurrent = await instances(3, 5);
  const admits = Array.from({ length: 30 }, (_, i) => concurrent.allowances[i % 3]!.admit("k", WINDOW));
  assert.equal(await admitAll(admits), 5);
  assert.ok(concurrent.wants.every((w) => w === 1), "blocks of one token under a limit of 128");
  concurrent.kv.close();

  const sequential = await instances(3, 30);
  let admitted = 0;
  for (let i = 0; i < 40; i++) if (await sequential.allowances[i % 3]!.admit("k", WINDOW)) admitted++;
  assert.equal(admitted, 30, "requests round-robin over the instances get exactly the limit");
  sequential.kv.close();
});

Deno.test("leased allowance: concurrent requests on one instance never take more than they spend and a block", async () => {
  const { kv, allowances, wants, taken } = await instances(1, 1_000_000);
  const admitted = await admitAll(Array.from({ length: 500 }, () => allowances[0]!.admit("k", WINDOW)));
  assert.equal(admitted, 500);
  const block = Math.floor(1_000_000 / 64);
  assert.ok((await taken("k")) < 500 + block, "what was taken is what was spent and less than a block");
  assert.ok(wants.length < 500, `requests that arrived together took tokens together (${wants.length} takes)`);
  kv.close();
});

Deno.test("leased allowance: a block follows the key's rate, within a 64th of the limit", async () => {
  let now = 0;
  const { kv, allowances, wants } = await instances(1, 64_000, { clock: () => now });
  const allowance = allowances[0]!;
  // 1,000 requests a second, one at a time, on the fake clock: about 100 ms of them a block, capped at 1,000.
  for (let i = 0; i < 3_000; i++) {
    assert.equal(await allowance.admit("k", WINDOW), true);
    now += 1;
  }
  assert.equal(wants[0], 1, "no rate known yet: one token");
  assert.ok(wants.slice(2).every((w) => w >= 50 && w <= 1_000), `blocks ${wants.slice(0, 8)}`);
  kv.close();
});

Deno.test("leased allowance: a window used up refuses without asking again; a new window starts afresh", async () => {
  let calls = 0;
  const taken = new Map<string, number>();
  // Another instance already took two of the three tokens of window 0.
  taken.set("k 0", 2);
  const take: TakeTokens = (key, window, want) => {
    calls++;
    const before = taken.get(`${key} ${window}`) ?? 0;
    const got = Math.max(0, Math.min(want, 3 - before));
    taken.set(`${key} ${window}`, before + got);
    return Promise.resolve(got);
  };
  const allowance = new LeasedAllowance({ limit: 3, take });
  assert.equal(await allowance.admit("k", 0), true);
  assert.equal(await allowance.admit("k", 0), false);
  const asked = calls;
  assert.equal(await allowance.admit("k", 0), false);
  assert.equal(calls, asked, "the used-up window was not asked again");
  assert.equal(await allowance.admit("k", WINDOW), true);
  assert.equal(await allowance.admit("other", 0), true, "keys are counted apart");
});

Deno.test("leased allowance: a failed take fails the requests waiting for it; the next request tries again", async () => {
  let fail = true;
  const take: TakeTokens = (_key, _window, want) => fail ? Promise.reject(new Error("KV down")) : Promise.resolve(want);
  const allowance = new LeasedAllowance({ limit: 10, take });
  await assert.rejects(Promise.resolve(allowance.admit("k", 0)), /KV down/);
  fail = false;
  assert.equal(await allowance.admit("k", 0), true);
});
