/**
 * `versions`: the kept policy versions as a table (or JSON lines), a rollback, or publishing a model
 * trained elsewhere as the next version.
 */
import { join } from "node:path";
import { z } from "zod";
import { VersionEvalSchema } from "../dpo/evaluate.ts";
import { type GateDecision, GateDecisionSchema } from "../dpo/gate.ts";
import { openCheckpoints, openSharedKv } from "../store/open.ts";
import { PairStore } from "../store/pairs.ts";
import { log, UsageError, writeStdout } from "./common.ts";
import { flag, number, optionsUsage, parseOptions, SHARED, text } from "./_options.ts";

export const OPTIONS = {
  kv: { ...SHARED.kv, help: `${SHARED.kv.help}; it must exist, except to publish` },
  checkpoints: SHARED.checkpoints,
  rollback: number("N", "serve version N", (n) => n.int().positive()),
  note: text("TEXT", "with publish: a note kept with the version", z.string().max(4096).optional()),
  json: flag("one JSON line per version instead of the table"),
};

/** Usage text of the command. */
export const VERSIONS_USAGE = `Usage: deno task cli versions [publish DIR] [--rollback N] [options]

Lists the kept policy versions: version, parent, when published, pairs trained in, held-out accuracy,
and which one is served. With --rollback N version N is served again (servers follow at their next
poll; a running worker notices at its next publish and starts again from it). "publish DIR" publishes
a model or LoRA adapter trained elsewhere (offline train, TRL) as the next version, served at once: it
must load, and match the served version's architecture and vocabulary; a worker running meanwhile
starts again from it.

${optionsUsage(OPTIONS)}`;

/** Runs the command. */
export async function runVersions(args: string[]): Promise<void> {
  let publishDir: string | undefined;
  if (args[0] === "publish") {
    publishDir = args[1];
    if (publishDir === undefined || publishDir.startsWith("-")) throw new UsageError("publish needs a DIR");
    args = args.slice(2);
  }
  const parsed = parseOptions(args, OPTIONS);
  if (parsed.help) return void console.log(VERSIONS_USAGE);
  const opts = parsed.values;
  if (opts.note !== undefined && publishDir === undefined) throw new UsageError("--note goes with publish DIR");
  // Opening a path that is not there would make an empty KV and list nothing: say what is wrong instead.
  const local = !/^https?:\/\//.test(opts.kv);
  if (publishDir === undefined && local && !(await Deno.stat(opts.kv).then(() => true, () => false))) {
    throw new UsageError(`Cannot read versions: there is no KV at '${opts.kv}' (give --kv PATH|URL)`);
  }
  const kv = await openSharedKv(opts.kv);
  try {
    const checkpoints = openCheckpoints(kv, opts.checkpoints);
    if (publishDir !== undefined) await publish(checkpoints, publishDir, opts.note);
    if (opts.rollback !== undefined) await checkpoints.rollback(opts.rollback);
    const current = await checkpoints.current();
    const records = new PairStore(kv).records;
    // The gate decision that promoted each version, when a gate ran.
    const gates = new Map<number, GateDecision>();
    for (const d of (await records.gates(1000)).decisions) {
      const parsed = GateDecisionSchema.safeParse(d);
      if (parsed.success && parsed.data.version !== undefined) gates.set(parsed.data.version, parsed.data);
    }
    const rows = [];
    for (const v of await checkpoints.list()) {
      const evaluation = VersionEvalSchema.safeParse(await records.evalOf(v.version));
      rows.push({
        ...v,
        served: v.version === current?.version,
        eval: evaluation.success ? evaluation.data : null,
        gate: gates.get(v.version) ?? null,
      });
    }
    if (opts.json) {
      for (const row of rows) await writeStdout(JSON.stringify(row) + "\n");
    } else {
      await writeStdout(table(rows));
    }
  } finally {
    kv.close();
  }
}

/** Publishes a model directory trained elsewhere, after checking it loads and fits the served version. */
async function publish(checkpoints: ReturnType<typeof openCheckpoints>, dir: string, note: string | undefined) {
  const [{ initBackend }, { loadModel }, { describeModel }] = await Promise.all([
    import("../model/kernels/backend.ts"),
    import("../model/io/checkpoint.ts"),
    import("../model/arch/registry.ts"),
  ]);
  await initBackend("wasm");
  const current = await checkpoints.current();
  const loaded = await loadModel(dir, { trainable: false, mergeAdapter: true }).catch((err) => {
    throw new UsageError(`Cannot publish '${dir}': it does not load as a model or adapter: ${(err as Error).message}`);
  });
  try {
    if (current) {
      const tmp = await Deno.makeTempDir({ prefix: "dpo_versions_" });
      try {
        const served = await loadModel(await checkpoints.materialize(current.version, join(tmp, "served")), {
          trainable: false,
          mergeAdapter: true,
        });
        const [a, b] = [loaded.model.config, served.model.config];
        served.model.dispose();
        if (a.model_type !== b.model_type || a.vocab_size !== b.vocab_size) {
          throw new UsageError(
            `Cannot publish '${dir}': it is a ${a.model_type} with ${a.vocab_size} tokens, and the served ` +
              `v${current.version} a ${b.model_type} with ${b.vocab_size}: servers and the worker could not swap to it`,
          );
        }
      } finally {
        await Deno.remove(tmp, { recursive: true });
      }
    }
    const published = await checkpoints.publish(dir, {
      ...(current ? { parentVersion: current.version } : {}),
      note: note ?? `published from ${dir}`,
    }, { expectParent: current?.version ?? null });
    log(`published ${dir} (${describeModel(loaded.model)}) as policy v${published.version}`);
  } finally {
    loaded.model.dispose();
  }
}

function table(
  rows: {
    version: number;
    parentVersion?: number;
    publishedAt: number;
    trainedPairs?: number;
    served: boolean;
    eval: { accuracy: number } | null;
    gate: GateDecision | null;
  }[],
): string {
  if (rows.length === 0) return "no policy version is published yet\n";
  const lines = [["", "version", "parent", "published", "pairs", "accuracy", "gate"]];
  for (const r of rows) {
    lines.push([
      r.served ? "*" : "",
      `v${r.version}`,
      r.parentVersion === undefined ? "-" : `v${r.parentVersion}`,
      new Date(r.publishedAt).toISOString().replace("T", " ").slice(0, 19),
      r.trainedPairs === undefined ? "-" : String(r.trainedPairs),
      r.eval === null ? "-" : `${(r.eval.accuracy * 100).toFixed(1)}%`,
      r.gate === null
        ? "-"
        : `${(r.gate.candidate_accuracy * 100).toFixed(1)}% vs ${(r.gate.served_accuracy * 100).toFixed(1)}%`,
    ]);
  }
  const widths = lines[0]!.map((_, i) => Math.max(...lines.map((l) => l[i]!.length)));
  const text = lines.map((l) => l.map((c, i) => (i >= 4 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join("  "))
    .map((l) => l.trimEnd()).join("\n");
  return `${text}\n(* served)\n`;
}
