/**
 * The trainer role's Web Worker (started by `start`): a message loop over the typed messages of
 * src/roles/train_worker.ts; the role itself is src/roles/train.ts.
 */
import { runTrainerRole } from "../src/roles/train.ts";
import { type TrainerWorkerReply, TrainerWorkerRequestSchema } from "../src/roles/train_worker.ts";

const scope = self as unknown as {
  onmessage: ((e: MessageEvent) => void) | null;
  postMessage(message: TrainerWorkerReply): void;
};
const stop = new AbortController();
let started = false;

scope.onmessage = (e) => {
  const request = TrainerWorkerRequestSchema.safeParse(e.data);
  if (!request.success) {
    return scope.postMessage({
      type: "fatal",
      message: `Cannot read a message to the trainer worker: ${request.error.message}`,
    });
  }
  if (request.data.type === "stop") return stop.abort();
  if (started) return;
  started = true;
  runTrainerRole(request.data.options, { signal: stop.signal, onEvent: (event) => scope.postMessage(event) }).then(
    () => scope.postMessage({ type: "stopped" }),
    (err) => scope.postMessage({ type: "fatal", message: err instanceof Error ? err.message : String(err) }),
  );
};
