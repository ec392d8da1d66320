/**
 * Group commit: concurrent writes, each an atomic operation of its own with its own checks, share one KV
 * commit. On a local KV file every commit is a SQLite transaction made durable on its own (a sync of the
 * write-ahead log), run one at a time by KV's one SQLite thread, so under load most of a write's cost is
 * its commit and the trip to that thread; ten writes in one commit pay them once.
 *
 * A write is recorded (`RecordedWrites`), then handed to `GroupCommit.commit`, which resolves to that
 * write's own result once it is committed: `true` when its checks held and everything it wrote is stored,
 * `false` when one of its checks failed and nothing of it was. The writes that arrive while commits are on
 * their way wait and go together in the next one, within KV's limits per commit (10 checks, so at most ten
 * versionstamp-checked writes; mutations; bytes), and never two that check, set or delete the same key;
 * sums may share keys, and are folded into one sum per key. When a shared commit fails because one
 * member's check failed, or KV refuses it as too large (nothing was written either way), every member is
 * committed again on its own, so each gets exactly the result, or the error, it would have had alone. Any
 * other error, which may come after the commit landed, is every member's error, never a second commit.
 * With nothing on its way, a write is committed at once: grouping adds no wait at low load.
 */
import { serialize } from "node:v8";
import { commitWithinLimits, MAX_CHECKS, MAX_COMMIT_BYTES, MAX_MUTATIONS, serializedBound } from "./_size.ts";
import { StoreLimitError } from "./errors.ts";

/** Largest total size of the keys one commit writes (Deno KV's `MAX_TOTAL_KEY_SIZE_BYTES`). */
export const MAX_COMMIT_KEY_BYTES = 80 * 1024;

/**
 * An atomic operation that records its checks and mutations instead of committing them, and counts what
 * Deno KV's commit limits count (checks, mutations, the bytes of keys and values), so that a commit too
 * large can be refused with a clear reason before KV sees it and so that `GroupCommit` can fill a commit
 * up to the limits. Value sizes are V8's serialization and key sizes KV's key encoding, so the estimate is
 * close; KV's own refusal stays the backstop.
 */
export class RecordedWrites implements Deno.AtomicOperation {
  readonly checks: Deno.AtomicCheck[] = [];
  readonly mutations: Deno.KvMutation[] = [];
  /**
   * Sizes as KV counts them against its limits; `bytes` counts values at their bound (`serializedBound`),
   * never less than their size, and is made exact by `assertWithinLimits` when the bound is over the limit.
   */
  bytes = 0;
  keyBytes = 0;
  #enqueued: [unknown, Parameters<Deno.AtomicOperation["enqueue"]>[1]][] = [];

  check(...checks: Deno.AtomicCheck[]): this {
    for (const c of checks) this.bytes += keyBytes(c.key);
    this.checks.push(...checks);
    return this;
  }

  mutate(...mutations: Deno.KvMutation[]): this {
    for (const m of mutations) {
      this.#tally(m.key, m.type === "delete" ? undefined : m.type === "set" ? valueBytes(m.value) : 8);
    }
    this.mutations.push(...mutations);
    return this;
  }

  sum(key: Deno.KvKey, n: bigint): this {
    return this.mutate({ type: "sum", key, value: new Deno.KvU64(n) });
  }

  min(key: Deno.KvKey, n: bigint): this {
    return this.mutate({ type: "min", key, value: new Deno.KvU64(n) });
  }

  max(key: Deno.KvKey, n: bigint): this {
    return this.mutate({ type: "max", key, value: new Deno.KvU64(n) });
  }

  set(key: Deno.KvKey, value: unknown, options?: { expireIn?: number }): this {
    return this.mutate({ type: "set", key, value, ...(options?.expireIn === undefined ? {} : options) });
  }

  delete(key: Deno.KvKey): this {
    return this.mutate({ type: "delete", key });
  }

  enqueue(value: unknown, options?: Parameters<Deno.AtomicOperation["enqueue"]>[1]): this {
    this.bytes += valueBytes(value) + 4 * (options?.backoffSchedule?.length ?? 0);
    this.#enqueued.push([value, options]);
    return this;
  }

  /** Not to be called: the writes are committed by `GroupCommit.commit` (or `applyTo` a real operation). */
  commit(): Promise<Deno.KvCommitResult | Deno.KvCommitError> {
    return Promise.reject(new Error("Cannot commit recorded writes by themselves: pass them to GroupCommit.commit"));
  }

  /** Mutations as KV counts them (an enqueue is one). */
  get mutationCount(): number {
    return this.mutations.length + this.#enqueued.length;
  }

  /** Adds every recorded check and mutation to `op`; returns it. */
  applyTo(op: Deno.AtomicOperation): Deno.AtomicOperation {
    if (this.checks.length > 0) op.check(...this.checks);
    if (this.mutations.length > 0) op.mutate(...this.mutations);
    return this.applyEnqueued(op);
  }

  /** Adds the recorded enqueues alone to `op`; returns it. */
  applyEnqueued(op: Deno.AtomicOperation): Deno.AtomicOperation {
    for (const [value, options] of this.#enqueued) op.enqueue(value, options);
    return op;
  }

  /** Throws `StoreLimitError` naming the limit when these writes would break one of KV's in one commit. */
  assertWithinLimits(what: string): void {
    const over = (count: number, limit: number, unit: string) =>
      new StoreLimitError(
        `Cannot store ${what} as it must go in one commit to be stored all or nothing, and Deno KV allows at ` +
          `most ${limit} ${unit} in one commit: this one needs about ${count} (send fewer or smaller items)`,
      );
    if (this.checks.length > MAX_CHECKS) throw over(this.checks.length, MAX_CHECKS, "checks");
    if (this.mutationCount > MAX_MUTATIONS) throw over(this.mutationCount, MAX_MUTATIONS, "mutations");
    if (this.bytes > MAX_COMMIT_BYTES) this.bytes = this.#exactBytes();
    if (this.bytes > MAX_COMMIT_BYTES) throw over(this.bytes, MAX_COMMIT_BYTES, "bytes of keys and values");
    if (this.keyBytes > MAX_COMMIT_KEY_BYTES) throw over(this.keyBytes, MAX_COMMIT_KEY_BYTES, "bytes of keys");
  }

  /**
   * The keys these writes check, set or delete (`exclusive`: no other write of a shared commit may touch
   * them) and those they only sum (`summed`: other writes may sum them too), as strings that tell keys apart.
   */
  keyTexts(): { exclusive: string[]; summed: string[] } {
    const exclusive = this.checks.map((c) => keyText(c.key));
    const summed: string[] = [];
    for (const m of this.mutations) (m.type === "sum" ? summed : exclusive).push(keyText(m.key));
    return { exclusive, summed };
  }

  /** `bytes` with every value at its serialized size rather than its bound. */
  #exactBytes(): number {
    let n = 0;
    for (const c of this.checks) n += keyBytes(c.key);
    for (const m of this.mutations) {
      const k = keyBytes(m.key);
      n += m.type === "delete" ? k : 2 * k + (m.type === "set" ? exactBytes(m.value) : 8);
    }
    for (const [value, options] of this.#enqueued) {
      n += exactBytes(value) + 4 * (options?.backoffSchedule?.length ?? 0);
    }
    return n;
  }

  /**
   * A mutation as Deno KV's `op_kv_atomic_write` sizes it: every mutation's key once, and a mutation with
   * a value (all but a delete) its key again with the value; only the latter count toward the key total.
   */
  #tally(key: Deno.KvKey, value: number | undefined): void {
    const k = keyBytes(key);
    this.bytes += k;
    if (value === undefined) return;
    this.keyBytes += k;
    this.bytes += k + value;
  }
}

interface Member {
  writes: RecordedWrites;
  what: string;
  exclusive: string[];
  summed: string[];
  resolve: (ok: boolean) => void;
  reject: (err: unknown) => void;
}

// Shared commits on their way at once. On a local file KV runs them one after the other anyway, and one
// would make the groups largest; a second lets this thread prepare the next while KV commits one, and lets
// a remote KV's round trips overlap.
const MAX_IN_FLIGHT = 2;

/** See the module comment. One per KV handle; it holds no state beyond the writes waiting for a commit. */
export class GroupCommit {
  readonly #kv: Deno.Kv;
  readonly #queue: Member[] = [];
  #inFlight = 0;

  constructor(kv: Deno.Kv) {
    this.#kv = kv;
  }

  /**
   * Commits `writes` (with others' waiting writes, when there are), retrying a locked database as
   * `commitWithinLimits` does; resolves to whether its checks held. `what` names it in errors. Writes that
   * would break KV's limits alone are refused (`StoreLimitError`) before anything is committed.
   */
  commit(writes: RecordedWrites, what: string): Promise<boolean> {
    try {
      writes.assertWithinLimits(what);
    } catch (err) {
      return Promise.reject(err);
    }
    const done = new Promise<boolean>((resolve, reject) => {
      this.#queue.push({ writes, what, ...writes.keyTexts(), resolve, reject });
    });
    this.#pump();
    return done;
  }

  /** Starts commits of the waiting writes, up to `MAX_IN_FLIGHT` at a time. */
  #pump(): void {
    while (this.#queue.length > 0 && this.#inFlight < MAX_IN_FLIGHT) {
      const group = this.#nextGroup();
      this.#inFlight++;
      (group.length === 1 ? this.#alone(group[0]!) : this.#together(group)).finally(() => {
        this.#inFlight--;
        this.#pump();
      });
    }
  }

  /** The waiting writes that fit in one commit together, oldest first; those left over keep their order. */
  #nextGroup(): Member[] {
    const group: Member[] = [];
    const left: Member[] = [];
    const exclusive = new Set<string>();
    const summed = new Set<string>();
    let checks = 0, mutations = 0, bytes = 0, keyBytes = 0;
    for (const member of this.#queue) {
      const w = member.writes;
      const fits = group.length === 0 ||
        (checks + w.checks.length <= MAX_CHECKS && mutations + w.mutationCount <= MAX_MUTATIONS &&
          bytes + w.bytes <= MAX_COMMIT_BYTES && keyBytes + w.keyBytes <= MAX_COMMIT_KEY_BYTES &&
          !member.exclusive.some((k) => exclusive.has(k) || summed.has(k)) &&
          !member.summed.some((k) => exclusive.has(k)));
      if (!fits) {
        left.push(member);
        continue;
      }
      group.push(member);
      for (const k of member.exclusive) exclusive.add(k);
      for (const k of member.summed) summed.add(k);
      checks += w.checks.length;
      mutations += w.mutationCount;
      bytes += w.bytes;
      keyBytes += w.keyBytes;
    }
    this.#queue.splice(0, this.#queue.length, ...left);
    return group;
  }

  async #alone(member: Member): Promise<void> {
    try {
      member.resolve(await commitWithinLimits(member.writes.applyTo(this.#kv.atomic()), member.what));
    } catch (err) {
      member.reject(err);
    }
  }

  async #together(group: Member[]): Promise<void> {
    let ok: boolean;
    try {
      ok = await commitWithinLimits(combined(this.#kv.atomic(), group), `${group.length} writes in one commit`);
    } catch (err) {
      // Any other error may have come after the commit landed (a remote KV's lost answer): committing the
      // members again could write one twice, so each gets the error, as a commit of its own would have.
      if (!(err instanceof StoreLimitError)) {
        for (const member of group) member.reject(err);
        return;
      }
      ok = false; // KV refused it before writing anything: one member is too large for it.
    }
    if (ok) {
      for (const member of group) member.resolve(true);
      return;
    }
    // Nothing of the group was written: each member alone, for its own exact result.
    for (const member of group) await this.#alone(member);
  }
}

/**
 * Adds every member's checks and writes to `op`, the sums on one key folded into one (KV's sum adds modulo
 * 2^64, so one sum of the total is the same as the sums one after the other; no member of a group sets or
 * deletes a key another sums). Returns `op`.
 */
function combined(op: Deno.AtomicOperation, group: Member[]): Deno.AtomicOperation {
  const checks: Deno.AtomicCheck[] = [];
  const mutations: Deno.KvMutation[] = [];
  const sums = new Map<string, { key: Deno.KvKey; total: bigint }>();
  for (const member of group) {
    checks.push(...member.writes.checks);
    let s = 0;
    for (const m of member.writes.mutations) {
      if (m.type !== "sum") {
        mutations.push(m);
        continue;
      }
      const text = member.summed[s++]!;
      const sum = sums.get(text);
      if (sum === undefined) sums.set(text, { key: m.key, total: m.value.value });
      else sum.total += m.value.value;
    }
  }
  for (const { key, total } of sums.values()) {
    mutations.push({ type: "sum", key, value: new Deno.KvU64(BigInt.asUintN(64, total)) });
  }
  op.check(...checks).mutate(...mutations);
  for (const member of group) member.writes.applyEnqueued(op);
  return op;
}

/** A value's size as KV stores it, or a bound of it (see `_size.ts`); a counter is 8 bytes. */
function valueBytes(value: unknown): number {
  if (value instanceof Deno.KvU64) return 8;
  return serializedBound(value) ?? serialize(value).byteLength;
}

/** A value's size as KV stores it: V8's serialization; a counter is 8 bytes. */
function exactBytes(value: unknown): number {
  return value instanceof Deno.KvU64 ? 8 : serialize(value).byteLength;
}

/** An encoded key's size: a type byte per part, strings and bytes escaped (0x00 doubles) and terminated. */
function keyBytes(key: Deno.KvKey): number {
  let n = 0;
  for (const part of key) {
    if (typeof part === "string") n += utf8Bytes(part) + 2;
    else if (part instanceof Uint8Array) n += part.length + part.filter((x) => x === 0).length + 2;
    else if (typeof part === "bigint") n += 2 + Math.ceil(part.toString(16).length / 2);
    else if (typeof part === "number") n += 9;
    else n += 1; // a boolean
  }
  return n;
}

/** A string's UTF-8 length, with each NUL counted twice (KV escapes it). */
function utf8Bytes(text: string): number {
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0) n += 2;
    else if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        n += 4;
        i++;
      } else n += 3;
    } else n += 3;
  }
  return n;
}

/** A key as a string that tells keys apart (typed parts, so 1 and "1" differ). */
function keyText(key: Deno.KvKey): string {
  let text = "";
  for (const part of key) {
    const shown = part instanceof Uint8Array ? Array.from(part).join(",") : String(part);
    text += `${typeof part === "object" ? "bytes" : typeof part}:${shown.length}:${shown}/`;
  }
  return text;
}
