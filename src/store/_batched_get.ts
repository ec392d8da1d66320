/**
 * Reads of single keys that arrive together share one `getMany` (up to 10 keys, KV's limit): on a local KV
 * file every read is a trip to KV's one SQLite thread and back, and under load the trips, not the reads,
 * are most of the cost. A read waits only while another batch is on its way; alone, it goes at once. Each
 * key is read as fresh as a `get` issued at the same moment: a batch is sent after every read in it was
 * asked for.
 */

/** Most keys one `getMany` reads. */
const GET_MANY_KEYS = 10;
// Batches on their way at once: one keeps the batches largest, and measured fastest on a local file.
const MAX_IN_FLIGHT = 1;

interface Read {
  key: Deno.KvKey;
  resolve: (entry: Deno.KvEntryMaybe<unknown>) => void;
  reject: (err: unknown) => void;
}

/** See the module comment. */
export class BatchedGet {
  readonly #kv: Deno.Kv;
  readonly #queue: Read[] = [];
  #inFlight = 0;

  constructor(kv: Deno.Kv) {
    this.#kv = kv;
  }

  /** The entry at `key`, as `kv.get` returns it. */
  get(key: Deno.KvKey): Promise<Deno.KvEntryMaybe<unknown>> {
    const entry = new Promise<Deno.KvEntryMaybe<unknown>>((resolve, reject) => {
      this.#queue.push({ key, resolve, reject });
    });
    this.#pump();
    return entry;
  }

  #pump(): void {
    while (this.#queue.length > 0 && this.#inFlight < MAX_IN_FLIGHT) {
      const batch = this.#queue.splice(0, GET_MANY_KEYS);
      this.#inFlight++;
      this.#read(batch).finally(() => {
        this.#inFlight--;
        this.#pump();
      });
    }
  }

  async #read(batch: Read[]): Promise<void> {
    try {
      const entries = batch.length === 1
        ? [await this.#kv.get(batch[0]!.key)]
        : await this.#kv.getMany(batch.map((r) => r.key));
      for (const [i, read] of batch.entries()) read.resolve(entries[i]!);
    } catch (err) {
      for (const read of batch) read.reject(err);
    }
  }
}
