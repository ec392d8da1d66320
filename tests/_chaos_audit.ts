/**
 * The end of a chaos run: the drain until no pair is in flight, the audit of the KV file (every role
 * stopped) and the report as a table.
 */
import { CHECKPOINT_VERSION_PREFIX, PAIR_PREFIX, pairStatusPrefix, trainedPairsPrefix } from "../src/store/keys.ts";
import type { ChaosReport } from "./_chaos.ts";
import type { HeldAtSwitch, Switch } from "./_chaos_kills.ts";
import type { Load } from "./_chaos_load.ts";
import { ROLES } from "./_chaos_roles.ts";
import { count, sleep } from "./_chaos_util.ts";

const TRAINED_PAIRS_PREFIX = trainedPairsPrefix(0).slice(0, 1); // ["trained_pairs"]
/** Statuses a pair is still on its way in (not terminal). */
const IN_FLIGHT = ["awaiting_judgment", "labeled"] as const;
/** Terminal statuses; any other status found is listed too. */
const TERMINAL = ["trained", "tie", "expired", "stale", "rejected", "judge_failed"] as const;

/** Options of `drain`. */
interface DrainOptions {
  timeoutMs: number;
  quietMs: number;
  /** The worker's batch size: a step takes this many labeled pairs. */
  batchSize: number;
  /** Offers `n` more labeled pairs; `seq` numbers the top-ups. */
  topUp: (n: number, seq: number) => Promise<void>;
  signal?: AbortSignal;
}

/**
 * Waits until no pair is in flight for `quietMs`; false when that did not happen within `timeoutMs`. The
 * stream trainer steps on full batches only, so a last batch left short for a while is topped up.
 */
export async function drain(kv: Deno.Kv, o: DrainOptions): Promise<boolean> {
  const end = Date.now() + o.timeoutMs;
  let quietSince: number | null = null;
  let shortSince: number | null = null;
  let topUps = 0;
  while (Date.now() < end && !o.signal?.aborted) {
    const awaiting = await count(kv, pairStatusPrefix("awaiting_judgment"), 1);
    const labeled = await count(kv, pairStatusPrefix("labeled"), o.batchSize);
    const short = awaiting === 0 && labeled > 0 && labeled < o.batchSize;
    shortSince = short ? shortSince ?? Date.now() : null;
    if (shortSince !== null && Date.now() - shortSince >= 2 * o.quietMs && topUps < 3) {
      await o.topUp(o.batchSize - labeled, topUps++);
      shortSince = null;
    }
    if (awaiting + labeled > 0) quietSince = null;
    else if (quietSince === null) quietSince = Date.now();
    else if (Date.now() - quietSince >= o.quietMs) return true;
    await sleep(250, o.signal);
  }
  return false;
}

type Found = Pick<
  ChaosReport,
  | "lost"
  | "trainedTwice"
  | "stuck"
  | "stuckDetail"
  | "unrecordedVersions"
  | "trainedTwiceDetail"
  | "accepted"
  | "acceptedSampled"
  | "acceptedImported"
  | "duplicateAcceptances"
  | "pairRecords"
  | "statuses"
  | "examples"
>;

/** Reads the KV file (every role stopped) and counts what went wrong. */
export async function audit(kv: Deno.Kv, load: Load, seen: Switch[], held: HeldAtSwitch): Promise<Found> {
  const pairs = new Map<string, { status: string; trainedInto?: number }>();
  for await (const e of kv.list<{ status: string; trainedInto?: number }>({ prefix: PAIR_PREFIX })) {
    pairs.set(String(e.key[1]), { status: e.value.status, trainedInto: e.value.trainedInto });
  }
  const records = new Map<number, Set<string>>(); // version → the ids its record lists
  for await (const e of kv.list<string[]>({ prefix: TRAINED_PAIRS_PREFIX })) {
    const v = e.key[1] as number;
    const ids = records.get(v) ?? new Set<string>();
    for (const id of e.value) ids.add(id);
    records.set(v, ids);
  }
  const inRecords = new Map<string, number[]>();
  for (const [v, ids] of records) for (const id of ids) inRecords.set(id, [...(inRecords.get(id) ?? []), v]);

  const lost = [...load.accepted.keys()].filter((id) => !pairs.has(id));
  const inTwoRecords = [...inRecords].filter(([, vs]) => vs.length > 1).map(([id]) => id);
  const notListed = [...pairs].filter(([id, p]) => p.status === "trained" && !records.get(p.trainedInto ?? -1)?.has(id))
    .map(([id]) => id);
  const listedNotTrained = [...inRecords].filter(([id]) => pairs.get(id)?.status !== "trained").map(([id]) => id);
  const stuck = new Set(listedNotTrained);
  const statuses: Record<string, number> = {};
  for (const [id, p] of pairs) {
    statuses[p.status] = (statuses[p.status] ?? 0) + 1;
    if ((IN_FLIGHT as readonly string[]).includes(p.status)) stuck.add(id);
  }

  // A version that holds pairs but has no record: its pairs are in its weights and listed nowhere.
  const trainedPairsOf = new Map<number, number | undefined>(seen.map((s) => [s.version, s.trainedPairs]));
  for await (const e of kv.list<{ trainedPairs?: number }>({ prefix: CHECKPOINT_VERSION_PREFIX })) {
    trainedPairsOf.set(e.key[1] as number, e.value.trainedPairs);
  }
  const unrecorded = [...trainedPairsOf].filter(([v, n]) => (n ?? 0) > 0 && !records.has(v)).map(([v]) => v);
  const retrained = held.filter((h) => unrecorded.includes(h.version)).flatMap((h) =>
    h.ids.filter((id) => pairs.get(id)?.status === "trained" && pairs.get(id)?.trainedInto !== h.version)
  );
  const twice = new Set([...inTwoRecords, ...notListed, ...retrained]);

  const accepted = [...load.accepted.values()];
  return {
    lost: lost.length,
    trainedTwice: twice.size,
    stuck: stuck.size,
    stuckDetail: {
      labeled: statuses.labeled ?? 0,
      awaitingJudgment: statuses.awaiting_judgment ?? 0,
      listedNotTrained: listedNotTrained.length,
    },
    unrecordedVersions: unrecorded.length,
    trainedTwiceDetail: {
      inTwoRecords: inTwoRecords.length,
      notListed: notListed.length,
      retrainedAfterUnrecordedSwitch: retrained.length,
    },
    accepted: accepted.length,
    acceptedSampled: accepted.filter((a) => a.source === "sampled").length,
    acceptedImported: accepted.filter((a) => a.source === "imported").length,
    duplicateAcceptances: accepted.filter((a) => a.keys.size > 1).length,
    pairRecords: pairs.size,
    statuses,
    examples: { lost: lost.slice(0, 5), trainedTwice: [...twice].slice(0, 5), stuck: [...stuck].slice(0, 5) },
  };
}

/** The report as a table, one figure a line. */
export function formatReport(r: ChaosReport): string {
  const byRole = ROLES.map((role) => `${role} ${r.kills.filter((k) => k.role === role).length}`).join(", ");
  const atSwitch = r.kills.filter((k) => k.kind === "switch");
  const statuses = [...IN_FLIGHT, ...TERMINAL, ...Object.keys(r.statuses)]
    .filter((s, i, all) => all.indexOf(s) === i)
    .map((s) => `${s} ${r.statuses[s] ?? 0}`)
    .join(", ");
  const switches = atSwitch.map((k) =>
    `v${k.version} ${k.mode} (${k.stopLatencyMs} ms, record ${k.recordAtSwitch ? "written" : "missing"})`
  );
  const rows: [string, string | number][] = [
    ["lost", r.lost],
    [
      "trained twice",
      `${r.trainedTwice} (in two versions' records ${r.trainedTwiceDetail.inTwoRecords}, trained into a version ` +
      `not listing it ${r.trainedTwiceDetail.notListed}, held at an unrecorded switch and trained again ` +
      `${r.trainedTwiceDetail.retrainedAfterUnrecordedSwitch})`,
    ],
    [
      "stuck",
      `${r.stuck} (labeled ${r.stuckDetail.labeled}, awaiting judgment ${r.stuckDetail.awaitingJudgment}, ` +
      `listed in a version's record but not trained ${r.stuckDetail.listedNotTrained})`,
    ],
    ["unrecorded versions", r.unrecordedVersions],
    ["crashes", r.crashes.length],
    ["accepted pairs", `${r.accepted} (sampled ${r.acceptedSampled}, imported ${r.acceptedImported})`],
    ["pair records", `${r.pairRecords}; duplicate acceptances ${r.duplicateAcceptances}`],
    ["statuses", statuses],
    [
      "requests",
      `${r.requests.sent} sent, ${r.requests.retries} retries, ${r.requests.dropped} dropped, ` +
      `${r.requests.refused} refused${r.requests.refusals.length ? ` (${r.requests.refusals.join("; ")})` : ""}`,
    ],
    ["kills", `${r.kills.length}: ${byRole}; ${atSwitch.length} at the switch, ${r.missedSwitchKills} missed`],
    ["switch kills", switches.join(", ") || "none"],
    ["versions published", `${r.versionsPublished}, ${r.versionsAfterSwitchKill} after the first switch kill`],
    [
      "time",
      `${r.loadSeconds.toFixed(1)} s load, ${r.drainSeconds.toFixed(1)} s drain (${
        r.drained ? "drained" : "NOT drained"
      }), ${r.totalSeconds.toFixed(1)} s in all`,
    ],
  ];
  const examples = Object.entries(r.examples).filter(([, ids]) => ids.length > 0)
    .map(([what, ids]) => `  e.g. ${what}: ${ids.join(" ")}`);
  return [
    `chaos run, ${r.checkpoints} checkpoints, seed ${r.seed}${r.dir ? `, kept in ${r.dir}` : ""}` +
    (r.interrupted ? " (INTERRUPTED)" : ""),
    ...rows.map(([k, v]) => `  ${k.padEnd(34)} ${v}`),
    ...examples,
  ].join("\n");
}
