/**
 * The serve role: the Hono app on the shared KV, serving the published policy version the KV pointer
 * names (polled, hot-swapped) or the starting model until one is published, and sweeping expired
 * pending pairs. The `serve` command runs it alone; `start` runs it beside the other roles.
 */
import { join } from "node:path";
import { type AppDeps, createApp } from "../server/app.ts";
import type { PolicyHolder } from "../server/policy.ts";
import { type CheckpointStore, pollPointer } from "../store/checkpoints.ts";
import type { PairStore } from "../store/pairs.ts";

/** Options of `startServerRole`. */
export interface ServerRoleOptions {
  kv: Deno.Kv;
  store: PairStore;
  checkpoints: CheckpointStore;
  /** The policy before any version is published. */
  model?: string;
  /**
   * Serve no policy at all (feedback-only): never load a model nor import TF.js, never pick up a version;
   * the routes that need a policy answer 503. Also what an instance with no model and no version does.
   */
  feedbackOnly?: boolean;
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** How often to look for a new policy version, ms. */
  pollMs: number;
  /** Where KV-stored versions are unpacked. */
  cacheDir: string;
  /** The rest of the app's dependencies (keys, scorer, limits...). */
  app: Omit<AppDeps, "store" | "policy">;
  /** Closes the server and stops polling. */
  signal: AbortSignal;
  log: (message: string) => void;
}

/** A listening server. */
export interface RunningServer {
  /** `http://host:port`, with the port actually bound. */
  url: string;
  /** The served policy; undefined on a feedback-only instance. */
  policy: PolicyHolder | undefined;
  /** Settles once the server is closed and polling has stopped (rejects when polling failed). */
  finished: Promise<void>;
}

/** Loads the policy to serve, builds the app and listens; resolves once it listens. */
export async function startServerRole(o: ServerRoleOptions): Promise<RunningServer> {
  const load = async (version: number) => {
    // Imported here: a feedback-only instance never loads the model code (nor TF.js).
    const { loadModel } = await import("../model/io/checkpoint.ts");
    const dir = await o.checkpoints.materialize(version, join(o.cacheDir, `policy-v${version}`));
    // A LoRA version is an adapter: served merged into its base, as fast as a full checkpoint.
    const { model, tokenizer } = await loadModel(dir, { trainable: false, mergeAdapter: true });
    return { model, tokenizer, version };
  };
  const current = o.feedbackOnly ? null : await o.checkpoints.current();
  let policy: PolicyHolder | undefined;
  if (!o.feedbackOnly && (current || o.model)) {
    let initial;
    if (current) initial = await load(current.version);
    else {
      const [{ loadModel }, { resolveModel }] = await Promise.all([
        import("../model/io/checkpoint.ts"),
        import("../model/io/hub.ts"),
      ]);
      const { model, tokenizer } = await loadModel(await resolveModel(o.model!), {
        trainable: false,
        mergeAdapter: true,
      });
      initial = { model, tokenizer, version: 0 };
    }
    const { PolicyHolder: Holder } = await import("../server/policy.ts");
    policy = new Holder(initial);
  } else {
    o.log("feedback-only: no model and no published version, so no policy is served (sampling and chat answer 503)");
  }
  // Kept versions are servable by name (policy@vN) on the OpenAI routes, loaded when first asked for.
  const kept = {
    list: async () => (await o.checkpoints.list()).map((v) => ({ version: v.version, publishedAt: v.publishedAt })),
    load,
  };
  const app = createApp({ ...o.app, store: o.store, policy, kept });
  // A feedback-only instance never picks a version up: it has no policy to swap.
  const served = policy;
  const polling = served === undefined ? Promise.resolve() : pollPointer(o.kv, o.pollMs, async (pointer) => {
    if (!pointer || pointer.version === served.version) return;
    try {
      served.swap(await load(pointer.version));
      o.log(`serving policy v${pointer.version}`);
    } catch (err) {
      o.log(`cannot load policy v${pointer.version}, still serving v${served.version}: ${(err as Error).message}`);
    }
  }, o.signal);
  // Pending pairs expire even when no judge runs (human labeling only).
  const sweeper = setInterval(() => {
    o.store.expirePending().catch((err) => o.log(`cannot expire pending pairs: ${(err as Error).message}`));
  }, 60_000);
  let listening!: (url: string) => void;
  const url = new Promise<string>((resolve) => listening = resolve);
  let server: Deno.HttpServer;
  try {
    server = Deno.serve({
      hostname: o.host,
      port: o.port,
      signal: o.signal,
      onListen: ({ hostname, port }) =>
        listening(`http://${hostname.includes(":") ? `[${hostname}]` : hostname}:${port}`),
    }, app.fetch);
  } catch (err) {
    clearInterval(sweeper);
    policy?.dispose();
    throw new Error(`Cannot listen on ${o.host}:${o.port}: ${(err as Error).message}`);
  }
  const finished = Promise.all([server.finished, polling]).then(() => {}).finally(() => {
    clearInterval(sweeper);
    policy?.dispose();
  });
  return { url: await url, policy, finished };
}
