/**
 * A second thread for OpenBLAS products of a few rows. The main thread gives it part of a product's columns
 * and computes the rest itself, each part on one OpenBLAS thread: for 8 rows over gpt2-8x512's weights (206 MB a
 * decoding step, read from memory) this took the blocks' products from 10.0 to 7.2 ms a step and the LM head's
 * from 12.4 (OpenBLAS's own two threads) to 8.0 ms, 7.5 in chunks (`blas.ts`, CHUNK_COLUMNS). OpenBLAS's own split
 * of such a product gains little over one thread.
 *
 * The main side stays synchronous, as a TF.js kernel must: a job and its completion pass through a
 * SharedArrayBuffer with Atomics.wait and notify (about 8 µs a round trip here), and the helper reads and
 * writes the memory at the addresses it is given. The helper is a `node:worker_threads` Worker, unref'd once
 * started, so that it never keeps the process alive; its loop is `workers/sgemm_helper.ts`.
 */
import { Worker } from "node:worker_threads";
import { z } from "zod";

/** The helper's state word: idle, or a job posted and not yet done. */
const IDLE = 0;
const JOB = 1;
/** Int32 slots of the control block. READY: 0 while the helper starts, 1 once it runs jobs, -1 if it cannot. */
const [STATE, READY, TRANS_A, TRANS_B, M, N, K, LDA, LDB, LDC, COUNT] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
const INT_SLOTS = 16;
/** Float64 slots, after the int32 ones: beta, the three addresses, and the steps of B's and C's. */
const [BETA, A, B, C, STEP_B, STEP_C] = [0, 1, 2, 3, 4, 5];
const FLOAT_SLOTS = 6;
const CONTROL_BYTES = INT_SLOTS * 4 + FLOAT_SLOTS * 8;

const CBLAS_ROW_MAJOR = 101;

/**
 * Row-major sgemm calls C = op(A) op(B) + beta C, their matrices given by address: `count` of them, the i-th with
 * B at b + i·stepB and C at c + i·stepC (bytes), A the same (a product's columns in chunks).
 */
export interface SgemmJob {
  transA: number;
  transB: number;
  m: number;
  n: number;
  k: number;
  a: number;
  lda: number;
  b: number;
  ldb: number;
  beta: number;
  c: number;
  ldc: number;
  count: number;
  stepB: number;
  stepC: number;
}

/** The main thread's side of the helper. */
export interface SgemmHelper {
  /** Whether the helper runs jobs; false while it starts, and for good if it could not load the library. */
  ready(): boolean;
  /** Resolves to `ready()` once the helper has started or failed to. */
  started: Promise<boolean>;
  /** Posts one job; the caller must `wait()` before posting another or touching the job's output. */
  post(job: SgemmJob): void;
  /** Blocks until the posted job is done. */
  wait(): void;
}

/** What the helper's worker is started with. */
export const SgemmHelperData = z.object({
  control: z.instanceof(SharedArrayBuffer),
  libraryPath: z.string(),
});

/** Starts the helper thread over the BLAS library at `libraryPath`; undefined where no worker can start. */
export function startSgemmHelper(libraryPath: string): SgemmHelper | undefined {
  const control = new SharedArrayBuffer(CONTROL_BYTES);
  const ints = new Int32Array(control, 0, INT_SLOTS);
  const floats = new Float64Array(control, INT_SLOTS * 4, FLOAT_SLOTS);
  let worker: Worker;
  try {
    worker = new Worker(new URL("../../../workers/sgemm_helper.ts", import.meta.url), {
      workerData: { control, libraryPath },
    });
  } catch {
    return undefined;
  }
  // Referenced until it has started, so that awaiting `started` keeps the event loop alive; not after.
  const started = new Promise<boolean>((resolve) => {
    let settled = false;
    const settle = (failure?: string) => {
      if (settled) return;
      settled = true;
      Atomics.compareExchange(ints, READY, 0, -1);
      worker.unref();
      const ready = Atomics.load(ints, READY) === 1;
      if (!ready) {
        console.warn(
          `Cannot split few-row products with a helper thread as ${failure ?? `it could not open ${libraryPath}`}: ` +
            `they run on OpenBLAS's own threads`,
        );
      }
      resolve(ready);
    };
    worker.once("error", (error: Error) => settle(`it failed: ${error.message}`));
    worker.once("exit", (code: number) => settle(`it exited with code ${code}`));
    worker.once("message", () => settle());
  });
  return {
    ready: () => Atomics.load(ints, READY) === 1,
    started,
    post(job) {
      ints.set([job.transA, job.transB, job.m, job.n, job.k, job.lda, job.ldb, job.ldc, job.count], TRANS_A);
      floats.set([job.beta, job.a, job.b, job.c, job.stepB, job.stepC], BETA);
      Atomics.store(ints, STATE, JOB);
      Atomics.notify(ints, STATE);
    },
    wait() {
      while (Atomics.load(ints, STATE) === JOB) Atomics.wait(ints, STATE, JOB);
    },
  };
}

/** The sgemm the helper calls, its matrices as pointers. */
export type PointerSgemm = (
  order: number,
  transA: number,
  transB: number,
  m: number,
  n: number,
  k: number,
  alpha: number,
  a: Deno.PointerValue,
  lda: number,
  b: Deno.PointerValue,
  ldb: number,
  beta: number,
  c: Deno.PointerValue,
  ldc: number,
) => void;

/**
 * The helper's loop (run by `workers/sgemm_helper.ts`): says it is ready, then runs each posted job and marks it
 * done, for the life of the process. `sgemm` is undefined where the library could not be loaded: the helper says so.
 * `announce` tells the main thread that READY is set.
 */
export function serveSgemmJobs(
  control: SharedArrayBuffer,
  sgemm: PointerSgemm | undefined,
  announce: () => void,
): void {
  const ints = new Int32Array(control, 0, INT_SLOTS);
  const floats = new Float64Array(control, INT_SLOTS * 4, FLOAT_SLOTS);
  Atomics.store(ints, READY, sgemm === undefined ? -1 : 1);
  announce();
  if (sgemm === undefined) return;
  const pointer = (address: number) => Deno.UnsafePointer.create(BigInt(address));
  for (;;) {
    while (Atomics.load(ints, STATE) !== JOB) Atomics.wait(ints, STATE, IDLE);
    for (let i = 0; i < ints[COUNT]!; i++) {
      sgemm(
        CBLAS_ROW_MAJOR,
        ints[TRANS_A]!,
        ints[TRANS_B]!,
        ints[M]!,
        ints[N]!,
        ints[K]!,
        1,
        pointer(floats[A]!),
        ints[LDA]!,
        pointer(floats[B]! + i * floats[STEP_B]!),
        ints[LDB]!,
        floats[BETA]!,
        pointer(floats[C]! + i * floats[STEP_C]!),
        ints[LDC]!,
      );
    }
    Atomics.store(ints, STATE, IDLE);
    Atomics.notify(ints, STATE);
  }
}
