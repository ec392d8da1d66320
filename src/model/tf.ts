/**
 * TensorFlow.js core with every gradient registered. `@tensorflow/tfjs-core`'s Node
 * entry point registers no gradients and its ESM build does not load under Deno,
 * so the union package (which registers them against the same core) is loaded first.
 * Every module imports TF.js from here.
 */
import "@tensorflow/tfjs";
export * from "@tensorflow/tfjs-core";
