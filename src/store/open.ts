/** Opening the shared stores from their command-line spellings: a KV path or URL, a checkpoint store. */
import { dirname } from "node:path";
import { z } from "zod";
import { retryingKv, retryWhileLocked } from "./_busy.ts";
import { type CheckpointStore, DirCheckpointStore, KvCheckpointStore } from "./checkpoints.ts";

/** `dir:PATH` (versions in a directory) or `kv` (versions in KV itself). */
export const CheckpointsSpecSchema = z.string().regex(/^(dir:.+|kv)$/, "expected dir:PATH or kv");

/**
 * The KV every role shares: a local file (the embedded default) or a remote KV URL. A local file is shared
 * by several processes, so its one-shot calls ride out SQLite's "database is locked" (`_busy.ts`).
 */
export async function openSharedKv(spec: string): Promise<Deno.Kv> {
  if (/^https?:\/\//.test(spec)) return await Deno.openKv(spec); // KV Connect: DENO_KV_ACCESS_TOKEN
  if (spec !== ":memory:") await Deno.mkdir(dirname(spec), { recursive: true });
  return retryingKv(await retryWhileLocked(() => Deno.openKv(spec)));
}

/** The checkpoint store named by a `dir:PATH | kv` spec. */
export function openCheckpoints(kv: Deno.Kv, spec: string): CheckpointStore {
  return spec === "kv" ? new KvCheckpointStore(kv) : new DirCheckpointStore(kv, spec.slice("dir:".length));
}
