/** Cursor pages over an index whose keys end in a record id. */
import { idOfIndexKey } from "./keys.ts";
import { StoreInputError } from "./errors.ts";

/** One page of records and, when more may follow, the cursor that continues after it. */
export interface Page<T> {
  items: T[];
  cursor?: string;
}

/** Options of `readIndexPage`. */
export interface IndexPageOptions {
  /** Most records on the page. */
  limit: number;
  /** A cursor returned by the previous page of the same listing. */
  cursor?: string;
  /** Newest (highest key) first. */
  reverse: boolean;
}

// getMany reads at most 10 keys.
const RESOLVE_CHUNK = 10;

/**
 * Reads index entries and resolves their ids to records (`null` skips an entry, e.g. a pair that left
 * the status between the two reads). The returned cursor points just after the last entry resolved,
 * so no entry is skipped or repeated across pages; it is absent when the index has no more entries.
 */
export async function readIndexPage<T>(
  kv: Deno.Kv,
  prefix: Deno.KvKey,
  options: IndexPageOptions,
  resolve: (ids: string[]) => Promise<(T | null)[]>,
): Promise<Page<T>> {
  const { limit, cursor, reverse } = options;
  const iter = kv.list({ prefix }, { cursor, reverse, batchSize: Math.min(limit + 1, 500) });
  const items: T[] = [];
  let after: string | undefined;
  try {
    while (items.length < limit) {
      const ids: string[] = [];
      let done = false;
      // Never take more entries than the page still has room for, so the cursor can stop at the last.
      while (ids.length < Math.min(RESOLVE_CHUNK, limit - items.length)) {
        const next = await iter.next();
        if (next.done) {
          done = true;
          break;
        }
        ids.push(idOfIndexKey(next.value.key));
      }
      if (ids.length > 0) {
        after = iter.cursor;
        for (const item of await resolve(ids)) if (item !== null) items.push(item);
      }
      if (done) return { items };
    }
    return (await iter.next()).done ? { items } : { items, cursor: after };
  } catch (err) {
    if (err instanceof TypeError && /cursor/i.test(err.message)) {
      throw new StoreInputError(`Cannot list from cursor '${cursor}' as it was not returned by this listing`);
    }
    throw err;
  }
}
