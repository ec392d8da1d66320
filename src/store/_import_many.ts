/**
 * `PairStore.importLabeledMany`: a list of labeled triples stored all or nothing. Every item is checked
 * (schema, value size) before anything is written, then all go in one atomic commit; a list that cannot
 * fit in one commit is refused up front, so a client never has to find out which part of it was stored.
 */
import type { z } from "zod";
import { decodeStored, parseInput } from "./_codec.ts";
import { decodePair, MAX_ATTEMPTS } from "./_leases.ts";
import { checkedPair, insertPair } from "./_mutations.ts";
import { type GroupCommit, RecordedWrites } from "./_group_commit.ts";
import type { IdGenerator } from "./_ulid.ts";
import { NotFoundError, StoreInputError } from "./errors.ts";
import {
  type IdempotencyOptions,
  IdempotencyOptionsSchema,
  type ImportLabeledInput,
  ImportLabeledInputSchema,
} from "./inputs.ts";
import { idempotencyKey, pairKey } from "./keys.ts";
import { IdempotencyRecordSchema, type Pair } from "./schema.ts";

/** Most keys one `getMany` reads. */
const GET_MANY_KEYS = 10;

/** What the store lends the import: its KV and group commit, clock, id generator and idempotency window. */
export interface ImportContext {
  kv: Deno.Kv;
  group: GroupCommit;
  now: () => number;
  newId: IdGenerator;
  idempotencyTtlMs: number;
}

/** One stored (or replayed) item, as `PairStore.create` reports it. */
export interface ImportResult {
  pair: Pair;
  /** `false` when the item's idempotency key had already stored `pair`. */
  created: boolean;
}

/**
 * Stores `inputs` as labeled pairs in one commit, or nothing. With an idempotency key, item `i` is
 * recorded under `${key}#${i}` (the scheme single imports used), so a repeat returns the first pairs
 * with `created: false`; items of a longer repeat that have no record yet are stored in one commit.
 * Throws `StoreInputError` for an item that breaks the schema and `StoreLimitError` for an item too
 * large for a KV value or a list too large for one commit, in both cases before writing anything.
 */
export async function importLabeledMany(
  ctx: ImportContext,
  inputs: readonly ImportLabeledInput[],
  options: IdempotencyOptions,
): Promise<ImportResult[]> {
  const n = inputs.length;
  if (n === 0) throw new StoreInputError("Cannot import an empty list of pairs: give at least one");
  const items = inputs.map((input, i) => parseInput(ImportLabeledInputSchema, input, `item [${i}] of ${n}`));
  const { idempotencyKey: key } = parseInput(IdempotencyOptionsSchema, options, "import options");
  const idemKeys = key === undefined ? undefined : items.map((_, i) => idempotencyKey(`${key}#${i}`));
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const firsts = idemKeys === undefined ? items.map(() => null) : await replay(ctx.kv, idemKeys, key!);
    const now = ctx.now();
    const fresh = items.flatMap((item, i) => {
      if (firsts[i] !== null) return [];
      const pair = labeledPair(item, ctx.newId(now), now);
      return [{ i, pair: checkedPair(pair, `item [${i}] of ${n} (pair '${pair.id}')`) }];
    });
    if (fresh.length === 0) return firsts.map((pair) => ({ pair: pair!, created: false }));
    const op = new RecordedWrites();
    // Pair ids are fresh time-sortable ids with 80 random bits, so unlike `create` the pair keys are not
    // checked (a commit allows 10 checks, a list has up to 100 items). The first new item's idempotency
    // key is: a concurrent request with the same key writes it too, so only one of the two commits.
    if (idemKeys !== undefined) op.check({ key: idemKeys[fresh[0]!.i]!, versionstamp: null });
    for (const { i, pair } of fresh) {
      if (idemKeys !== undefined) op.set(idemKeys[i]!, pair.id, { expireIn: ctx.idempotencyTtlMs });
      insertPair(op, pair);
    }
    // Refused (StoreLimitError) before anything is written when the list cannot fit in one commit.
    if (await ctx.group.commit(op, `the list of ${n} labeled pairs`)) {
      const stored = new Map(fresh.map(({ i, pair }) => [i, pair]));
      return firsts.map((first, i) =>
        first === null ? { pair: stored.get(i)!, created: true } : { pair: first, created: false }
      );
    }
    // Lost to a concurrent request with the same key: the next round replays what it stored.
  }
  throw new Error(`Cannot import ${n} labeled pairs: lost the race ${MAX_ATTEMPTS} times in a row`);
}

/** The pair an imported triple becomes: labeled, judge kind "import", responses [chosen, rejected]. */
export function labeledPair(p: z.output<typeof ImportLabeledInputSchema>, id: string, now: number): Pair {
  return {
    id,
    createdAt: now,
    updatedAt: now,
    status: "labeled",
    ...(p.prompt === undefined ? {} : { prompt: p.prompt }),
    ...(p.messages === undefined ? {} : { messages: p.messages }),
    promptText: p.promptText ?? p.prompt ?? "",
    responses: [p.chosen, p.rejected],
    policyVersion: p.policyVersion,
    candidates: [0, 1],
    chosen: 0,
    rejected: 1,
    verdict: {
      choice: "a",
      judge: { kind: "import", id: p.judgeId },
      ...(p.annotator === undefined ? {} : { annotator: p.annotator }),
      ...(p.reason === undefined ? {} : { reason: p.reason }),
      at: now,
    },
    source: "imported",
  };
}

/** The pair each idempotency key already names, or `null` where it names none. */
async function replay(kv: Deno.Kv, idemKeys: Deno.KvKey[], key: string): Promise<(Pair | null)[]> {
  const ids = (await getMany(kv, idemKeys)).map((value, i) =>
    value === null ? null : decodeStored(IdempotencyRecordSchema, value, `idempotency record '${key}#${i}'`)
  );
  const named = ids.filter((id) => id !== null);
  const pairs = new Map((await getMany(kv, named.map(pairKey))).map((value, j) => [named[j]!, value]));
  return ids.map((id, i) => {
    if (id === null) return null;
    const value = pairs.get(id);
    if (value === null || value === undefined) {
      throw new NotFoundError(`Idempotency key '${key}#${i}' names pair '${id}', which does not exist`);
    }
    return decodePair(value, id);
  });
}

/** The values of `keys`, `GET_MANY_KEYS` at a time (the most one `getMany` reads). */
async function getMany(kv: Deno.Kv, keys: Deno.KvKey[]): Promise<unknown[]> {
  const values: unknown[] = [];
  for (let start = 0; start < keys.length; start += GET_MANY_KEYS) {
    const entries = await kv.getMany(keys.slice(start, start + GET_MANY_KEYS));
    values.push(...entries.map((e) => e.value));
  }
  return values;
}
