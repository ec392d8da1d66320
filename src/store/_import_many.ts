/**
 * `PairStore.importLabeledMany`: a list of labeled triples stored all or nothing. Every item is checked
 * (schema, value size) before anything is written, then all go in one atomic commit; a list that cannot
 * fit in one commit is refused up front, so a client never has to find out which part of it was stored.
 */
import { serialize } from "node:v8";
import type { z } from "zod";
import { decodeStored, parseInput } from "./_codec.ts";
import { decodePair, MAX_ATTEMPTS } from "./_leases.ts";
import { checkedPair, insertPair } from "./_mutations.ts";
import { commitWithinLimits, MAX_CHECKS, MAX_COMMIT_BYTES, MAX_MUTATIONS } from "./_size.ts";
import type { IdGenerator } from "./_ulid.ts";
import { NotFoundError, StoreInputError, StoreLimitError } from "./errors.ts";
import {
  type IdempotencyOptions,
  IdempotencyOptionsSchema,
  type ImportLabeledInput,
  ImportLabeledInputSchema,
} from "./inputs.ts";
import { idempotencyKey, pairKey } from "./keys.ts";
import { IdempotencyRecordSchema, type Pair } from "./schema.ts";

/** Largest total size of the keys one commit writes (Deno KV's `MAX_TOTAL_KEY_SIZE_BYTES`). */
const MAX_COMMIT_KEY_BYTES = 80 * 1024;
/** Most keys one `getMany` reads. */
const GET_MANY_KEYS = 10;

/** What the store lends the import: its KV, clock, id generator and idempotency window. */
export interface ImportContext {
  kv: Deno.Kv;
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
    const op = new TalliedOperation(ctx.kv.atomic());
    // Pair ids are fresh time-sortable ids with 80 random bits, so unlike `create` the pair keys are not
    // checked (a commit allows 10 checks, a list has up to 100 items). The first new item's idempotency
    // key is: a concurrent request with the same key writes it too, so only one of the two commits.
    if (idemKeys !== undefined) op.check({ key: idemKeys[fresh[0]!.i]!, versionstamp: null });
    for (const { i, pair } of fresh) {
      if (idemKeys !== undefined) op.set(idemKeys[i]!, pair.id, { expireIn: ctx.idempotencyTtlMs });
      insertPair(op, pair);
    }
    op.assertWithinLimits(`the list of ${n} labeled pairs`);
    if (await commitWithinLimits(op, `the list of ${n} labeled pairs`)) {
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

/**
 * An atomic operation that counts what Deno KV's commit limits count (checks, mutations, the bytes of
 * keys and values) as it passes every call on, so that a commit too large can be refused with a clear
 * reason before KV sees it. Value sizes are V8's serialization (exact, see `_size.ts`) and key sizes
 * KV's key encoding, so the estimate is close; KV's own refusal stays the backstop.
 */
class TalliedOperation implements Deno.AtomicOperation {
  readonly #op: Deno.AtomicOperation;
  #checks = 0;
  #mutations = 0;
  #bytes = 0;
  #keyBytes = 0;

  constructor(op: Deno.AtomicOperation) {
    this.#op = op;
  }

  check(...checks: Deno.AtomicCheck[]): this {
    this.#checks += checks.length;
    for (const c of checks) this.#bytes += keyBytes(c.key);
    this.#op.check(...checks);
    return this;
  }

  mutate(...mutations: Deno.KvMutation[]): this {
    for (const m of mutations) this.#write(m.key, m.type === "delete" ? undefined : valueBytes(m.value));
    this.#op.mutate(...mutations);
    return this;
  }

  sum(key: Deno.KvKey, n: bigint): this {
    this.#write(key, 8);
    this.#op.sum(key, n);
    return this;
  }

  min(key: Deno.KvKey, n: bigint): this {
    this.#write(key, 8);
    this.#op.min(key, n);
    return this;
  }

  max(key: Deno.KvKey, n: bigint): this {
    this.#write(key, 8);
    this.#op.max(key, n);
    return this;
  }

  set(key: Deno.KvKey, value: unknown, options?: { expireIn?: number }): this {
    this.#write(key, valueBytes(value));
    this.#op.set(key, value, options);
    return this;
  }

  delete(key: Deno.KvKey): this {
    this.#write(key, undefined);
    this.#op.delete(key);
    return this;
  }

  enqueue(value: unknown, options?: Parameters<Deno.AtomicOperation["enqueue"]>[1]): this {
    this.#mutations++;
    this.#bytes += valueBytes(value) + 4 * (options?.backoffSchedule?.length ?? 0);
    this.#op.enqueue(value, options);
    return this;
  }

  commit(): Promise<Deno.KvCommitResult | Deno.KvCommitError> {
    return this.#op.commit();
  }

  /** Throws `StoreLimitError` naming the limit when the commit would break one of KV's. */
  assertWithinLimits(what: string): void {
    const over = (count: number, limit: number, unit: string) =>
      new StoreLimitError(
        `Cannot store ${what} as it must go in one commit to be stored all or nothing, and Deno KV allows at ` +
          `most ${limit} ${unit} in one commit: this one needs about ${count} (send fewer or smaller items)`,
      );
    if (this.#checks > MAX_CHECKS) throw over(this.#checks, MAX_CHECKS, "checks");
    if (this.#mutations > MAX_MUTATIONS) throw over(this.#mutations, MAX_MUTATIONS, "mutations");
    if (this.#bytes > MAX_COMMIT_BYTES) throw over(this.#bytes, MAX_COMMIT_BYTES, "bytes of keys and values");
    if (this.#keyBytes > MAX_COMMIT_KEY_BYTES) throw over(this.#keyBytes, MAX_COMMIT_KEY_BYTES, "bytes of keys");
  }

  /**
   * A mutation as Deno KV's `op_kv_atomic_write` sizes it: every mutation's key once, and a mutation with
   * a value (all but a delete) its key again with the value; only the latter count toward the key total.
   */
  #write(key: Deno.KvKey, value: number | undefined): void {
    this.#mutations++;
    const k = keyBytes(key);
    this.#bytes += k;
    if (value === undefined) return;
    this.#keyBytes += k;
    this.#bytes += k + value;
  }
}

/** A value's size as KV stores it: V8's serialization, as `_size.ts` explains (a counter is 8 bytes). */
function valueBytes(value: unknown): number {
  if (value instanceof Deno.KvU64) return 8;
  return serialize(value).byteLength;
}

/** An encoded key's size: a type byte per part, strings and bytes escaped (0x00 doubles) and terminated. */
function keyBytes(key: Deno.KvKey): number {
  const escaped = (b: Uint8Array) => b.length + b.filter((x) => x === 0).length + 2;
  return key.reduce<number>((n, part) => {
    if (typeof part === "string") return n + escaped(new TextEncoder().encode(part));
    if (part instanceof Uint8Array) return n + escaped(part);
    if (typeof part === "bigint") return n + 2 + Math.ceil(part.toString(16).length / 2);
    if (typeof part === "number") return n + 9;
    return n + 1; // a boolean
  }, 0);
}
