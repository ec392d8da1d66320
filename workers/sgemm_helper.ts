/**
 * The sgemm helper thread (a `node:worker_threads` Worker started by src/model/kernels/_sgemm_helper.ts):
 * opens the BLAS library and runs the sgemm jobs posted to it until the process exits.
 */
import { parentPort, workerData } from "node:worker_threads";
import { type PointerSgemm, serveSgemmJobs, SgemmHelperData } from "../src/model/kernels/_sgemm_helper.ts";

const data = SgemmHelperData.parse(workerData);
const PARAMETERS = [
  "i32",
  "i32",
  "i32",
  "i32",
  "i32",
  "i32",
  "f32",
  "pointer",
  "i32",
  "pointer",
  "i32",
  "f32",
  "pointer",
  "i32",
] as const;
let sgemm: PointerSgemm | undefined;
try {
  sgemm =
    Deno.dlopen(data.libraryPath, { cblas_sgemm: { parameters: PARAMETERS, result: "void" } }).symbols.cblas_sgemm;
} catch {
  sgemm = undefined;
}
serveSgemmJobs(data.control, sgemm, () => parentPort?.postMessage("started"));
