/** Work claiming with leases (a claim key holding its own expiry), and the reads the leases rely on. */
import { decodeStored, parseInput } from "./_codec.ts";
import { commitWithinLimits } from "./_size.ts";
import { type ClaimOptions, ClaimOptionsSchema, type RenewOptions, RenewOptionsSchema } from "./inputs.ts";
import { idOfIndexKey, leaseKey, pairKey, pairStatusPrefix } from "./keys.ts";
import { type Lease, type LeaseRole, LeaseSchema, type Pair, PairSchema, type PairStatus } from "./schema.ts";

/** Rounds of read-check-commit before a method gives up under contention. */
export const MAX_ATTEMPTS = 8;

// Pairs read per getMany while claiming: a pair key and a lease key each, 10 keys at most.
const CLAIM_CHUNK = 5;

/** Parses a stored pair. */
export function decodePair(value: unknown, id: string): Pair {
  return decodeStored(PairSchema, value, `pair '${id}'`);
}

/** Parses a stored lease (`null` when there is none). */
export function decodeLease(value: unknown, role: LeaseRole, id: string): Lease | null {
  return value === null ? null : decodeStored(LeaseSchema, value, `the ${role} lease on pair '${id}'`);
}

/** A lease counts until its `expiresAt`; KV's `expireIn` only bounds when the entry disappears. */
export function isLive(lease: Lease | null, now: number): boolean {
  return lease !== null && lease.expiresAt > now;
}

/** Whether a pair awaiting judgment has passed its `expiresAt`, swept or not. */
export function isPastExpiry(pair: Pair, now: number): boolean {
  return pair.status === "awaiting_judgment" && pair.expiresAt !== undefined && pair.expiresAt <= now;
}

/** `PairStore.claim`: walks the status index oldest first and claims free pairs one commit each. */
export async function claimPairs(kv: Deno.Kv, now: () => number, options: ClaimOptions): Promise<Pair[]> {
  const opts = parseInput(ClaimOptionsSchema, options, "claim options");
  const claim = { ...opts, filter: options.filter, now };
  const claimed: Pair[] = [];
  let ids: string[] = [];
  for await (const entry of kv.list({ prefix: pairStatusPrefix(opts.status) }, { batchSize: 100 })) {
    ids.push(idOfIndexKey(entry.key));
    if (ids.length < CLAIM_CHUNK) continue;
    await claimChunk(kv, ids, claim, claimed);
    ids = [];
    if (claimed.length >= opts.limit) return claimed;
  }
  if (ids.length > 0) await claimChunk(kv, ids, claim, claimed);
  return claimed;
}

interface Claim {
  status: PairStatus;
  role: LeaseRole;
  owner: string;
  leaseMs: number;
  limit: number;
  filter: ClaimOptions["filter"];
  now: () => number;
  fence?: number;
}

async function claimChunk(kv: Deno.Kv, ids: string[], claim: Claim, claimed: Pair[]): Promise<void> {
  const { status, role, owner, leaseMs, limit, filter, now, fence } = claim;
  const entries = await kv.getMany([...ids.map(pairKey), ...ids.map((id) => leaseKey(role, id))]);
  for (const [i, id] of ids.entries()) {
    if (claimed.length >= limit) return;
    let pairEntry = entries[i]!;
    let leaseEntry = entries[i + ids.length]!;
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      if (pairEntry.value === null) break;
      const pair = decodePair(pairEntry.value, id);
      const lease = decodeLease(leaseEntry.value, role, id);
      const t = now();
      const fenced = fence !== undefined && lease !== null && (lease.fence ?? 0) < fence;
      if (pair.status !== status || (isLive(lease, t) && !fenced) || isPastExpiry(pair, t)) break;
      if (filter !== undefined && !(await filter(pair))) break;
      const value: Lease = { owner, expiresAt: t + leaseMs, claimedAt: t, ...(fence === undefined ? {} : { fence }) };
      // Both checks: the pair has not moved on, and nobody claimed (or renewed) the lease since the read.
      const op = kv.atomic().check(pairEntry).check(leaseEntry).set(leaseKey(role, id), value, { expireIn: leaseMs });
      if (await commitWithinLimits(op, `the ${role} lease on pair '${id}'`)) {
        claimed.push(pair);
        break;
      }
      [pairEntry, leaseEntry] = await kv.getMany([pairKey(id), leaseKey(role, id)]) as [
        Deno.KvEntryMaybe<unknown>,
        Deno.KvEntryMaybe<unknown>,
      ];
    }
  }
}

/** `PairStore.renew`. */
export async function renewLease(kv: Deno.Kv, now: () => number, id: string, options: RenewOptions): Promise<boolean> {
  const { role, owner, leaseMs } = parseInput(RenewOptionsSchema, options, "renew options");
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const entry = await kv.get(leaseKey(role, id));
    const lease = decodeLease(entry.value, role, id);
    const t = now();
    if (lease === null || lease.owner !== owner || !isLive(lease, t)) return false;
    const value: Lease = { ...lease, expiresAt: t + leaseMs };
    const op = kv.atomic().check(entry).set(leaseKey(role, id), value, { expireIn: leaseMs });
    if (await commitWithinLimits(op, `the ${role} lease on pair '${id}'`)) return true;
  }
  return false;
}

/** `PairStore.release`. */
export async function releaseLease(kv: Deno.Kv, id: string, role: LeaseRole, owner: string): Promise<boolean> {
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const entry = await kv.get(leaseKey(role, id));
    const lease = decodeLease(entry.value, role, id);
    if (lease === null || lease.owner !== owner) return false;
    if (await commitWithinLimits(kv.atomic().check(entry).delete(leaseKey(role, id)), "a lease")) return true;
  }
  return false;
}
