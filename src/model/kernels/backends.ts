/** The backend names, apart from `backend.ts` so that reading them loads no TF.js. */

/** Backend names accepted by `--backend` and the config. */
export const BACKENDS = ["auto", "webgpu", "tensorflow", "wasm", "cpu"] as const;

/** A backend name accepted by `--backend`. */
export type BackendChoice = typeof BACKENDS[number];
