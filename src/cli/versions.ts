/** `versions`: list published policy versions, or roll the served pointer back to one. */
import { z } from "zod";
import { CheckpointsSpecSchema, openCheckpoints, openSharedKv } from "../store/open.ts";
import { numberOption, parseCommand, validate, writeStdout } from "./common.ts";

/** Usage text of the command. */
export const VERSIONS_USAGE = `Usage: deno task cli versions [--rollback N] [options]

Lists the kept policy versions (one JSON line each, the served one marked), or with --rollback N makes
version N the served one again; servers pick the change up at their next poll.

  --kv PATH|URL             the shared KV (default data/dpo.kv)
  --checkpoints dir:PATH|kv where versions are published (default dir:data/checkpoints)
  --rollback N              serve version N`;

const Options = z.object({
  kv: z.string().default("data/dpo.kv"),
  checkpoints: CheckpointsSpecSchema.default("dir:data/checkpoints"),
  rollback: numberOption((n) => n.int().positive()).optional(),
});

/** Runs the command. */
export async function runVersions(args: string[]): Promise<void> {
  const values = parseCommand(args, {
    help: { type: "boolean", short: "h" },
    kv: { type: "string" },
    checkpoints: { type: "string" },
    rollback: { type: "string" },
  });
  if (values.help) return void console.log(VERSIONS_USAGE);
  const opts = validate(Options, values);
  const kv = await openSharedKv(opts.kv);
  try {
    const store = openCheckpoints(kv, opts.checkpoints);
    if (opts.rollback !== undefined) await store.rollback(opts.rollback);
    const current = await store.current();
    for (const v of await store.list()) {
      await writeStdout(JSON.stringify({ ...v, served: v.version === current?.version }) + "\n");
    }
  } finally {
    kv.close();
  }
}
