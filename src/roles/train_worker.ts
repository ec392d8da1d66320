/**
 * The trainer role in a Web Worker (workers/trainer.ts), so that training never blocks the server's
 * event loop: the messages both sides exchange, checked with zod on arrival, and the parent's handle.
 *
 * parent → worker: `start` (the role's options), then `stop`.
 * worker → parent: the role's events (logs, ready, steps, publishes), then `stopped` or `fatal`.
 */
import { z } from "zod";
import { type TrainerEvent, TrainerEventSchema, type TrainerRoleOptions, TrainerRoleOptionsSchema } from "./train.ts";

/** A message to the worker. */
export const TrainerWorkerRequestSchema = z.discriminatedUnion("type", [
  z.object({ type: z.literal("start"), options: TrainerRoleOptionsSchema }),
  z.object({ type: z.literal("stop") }),
]);
/** A message to the worker. */
export type TrainerWorkerRequest = z.input<typeof TrainerWorkerRequestSchema>;

/** A message from the worker. */
export const TrainerWorkerReplySchema = z.union([
  TrainerEventSchema,
  z.object({ type: z.literal("stopped") }),
  z.object({ type: z.literal("fatal"), message: z.string() }),
]);
/** A message from the worker. */
export type TrainerWorkerReply = z.infer<typeof TrainerWorkerReplySchema>;

/** How long a terminated worker's thread is given to tear down before `done` settles. */
const TEARDOWN_MS = 150;

/** The running worker, as its parent sees it. */
export interface TrainerWorkerHandle {
  /** Asks the role to stop and waits until it has (or until `timeoutMs`, then terminates the worker). */
  stop(timeoutMs?: number): Promise<void>;
  /** Resolves when the role has stopped; rejects when it failed (the worker is then terminated). */
  done: Promise<void>;
}

/** Starts workers/trainer.ts with these options; events arrive through `onEvent`. */
export function startTrainerWorker(
  options: TrainerRoleOptions,
  onEvent: (event: TrainerEvent) => void,
): TrainerWorkerHandle {
  const worker = new Worker(new URL("../../workers/trainer.ts", import.meta.url), { type: "module", name: "trainer" });
  let settle!: { resolve: () => void; reject: (err: Error) => void };
  let finished = false;
  const done = new Promise<void>((resolve, reject) => settle = { resolve, reject });
  done.catch(() => {}); // a failure is reported through `done` to whoever awaits it, never as unhandled
  const end = (err?: Error) => {
    if (finished) return;
    finished = true;
    worker.terminate();
    // Deno reports no end of a worker's thread; a process that exits while the thread still tears down
    // its native resources (a WebGPU device, seen here with llvmpipe) can crash, so give it a moment.
    setTimeout(() => err ? settle.reject(err) : settle.resolve(), TEARDOWN_MS);
  };
  worker.onmessage = (e: MessageEvent) => {
    const parsed = TrainerWorkerReplySchema.safeParse(e.data);
    if (!parsed.success) {
      return end(new Error(`The trainer worker sent a malformed message: ${z.prettifyError(parsed.error)}`));
    }
    const reply = parsed.data;
    if (reply.type === "stopped") end();
    else if (reply.type === "fatal") end(new Error(reply.message));
    else onEvent(reply);
  };
  worker.onerror = (e: ErrorEvent) => {
    e.preventDefault(); // reported through `done`, not as an uncaught error of the parent
    end(new Error(`The trainer worker failed: ${e.message}`));
  };
  worker.onmessageerror = () => end(new Error("The trainer worker sent a message that could not be read"));
  const post = (request: TrainerWorkerRequest) => worker.postMessage(request);
  post({ type: "start", options });
  return {
    done,
    async stop(timeoutMs = 60_000) {
      if (finished) return await done.catch(() => {});
      post({ type: "stop" });
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<void>((resolve) => {
        timer = setTimeout(() => {
          end(new Error(`The trainer did not stop within ${timeoutMs / 1000} s and was terminated`));
          resolve();
        }, timeoutMs);
      });
      await Promise.race([done.catch(() => {}), timeout]);
      clearTimeout(timer);
    },
  };
}
