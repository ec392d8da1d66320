/** The shapes of the checkpoint store: what callers pass in, and the records it keeps in KV. */
import { z } from "zod";
import { decodeStored } from "./_codec.ts";
import { policyPointerKey } from "./keys.ts";

const Sha256 = z.string().regex(/^[0-9a-f]{64}$/, "must be a lowercase hex sha256");
const Version = z.number().int().positive();

/** Where a version's files live: under a directory store's root, or chunked in KV. */
export const StorageSchema = z.enum(["dir", "kv"]);

/** What a trainer says about a version it publishes; the store adds the rest. */
export const PublishMetaSchema = z.object({
  parentVersion: Version.optional().describe(
    "the version it was trained from; when given, publishing fails unless that version is still current",
  ),
  refVersion: Version.optional().describe("the version the reference model was copied from"),
  trainedPairs: z.number().int().nonnegative().optional().describe("labeled pairs trained on so far"),
  note: z.string().max(4096).optional(),
  eval: z.record(z.string().max(256), z.number().refine(Number.isFinite, "must be finite")).optional(),
});

/** One file of a version. */
export const FileEntrySchema = z.object({ bytes: z.number().int().nonnegative(), sha256: Sha256 });

/** The record of a published version, kept at `checkpointVersionKey(version)`. */
export const PublishedVersionSchema = PublishMetaSchema.extend({
  version: Version,
  sha256: Sha256.describe("sha256 of the canonical manifest of the files (see `manifestSha256`)"),
  files: z.record(z.string(), FileEntrySchema),
  publishedAt: z.number().int().describe("ms since the epoch"),
  storage: StorageSchema,
});

/** The served-version pointer at `policyPointerKey()`. */
export const PolicyPointerSchema = z.object({
  version: Version,
  sha256: Sha256,
  storage: StorageSchema,
  switchedAt: z.number().int().describe("ms since the epoch"),
});

/** The marker of an upload in progress at `checkpointUploadKey(version)`. */
export const UploadMarkerSchema = z.object({
  startedAt: z.number().int(),
  storage: StorageSchema,
  /** The fence token of the trainer uploading (see `training_records.ts`). */
  fence: z.number().int().positive().optional(),
});

/** Metadata given to `publish`. */
export type PublishMeta = z.input<typeof PublishMetaSchema>;
/** One file of a version: its size and sha256. */
export type FileEntry = z.infer<typeof FileEntrySchema>;
/** A published policy version: its files and metadata. */
export type PublishedVersion = z.infer<typeof PublishedVersionSchema>;
/** Which version servers load. */
export type PolicyPointer = z.infer<typeof PolicyPointerSchema>;
/** Where a version's files live. */
export type Storage = z.infer<typeof StorageSchema>;
/** An upload in progress. */
export type UploadMarker = z.infer<typeof UploadMarkerSchema>;

/** Reads the served-version pointer; null before the first publish. */
export async function readPointer(kv: Deno.Kv): Promise<PolicyPointer | null> {
  return decodePointer((await kv.get(policyPointerKey())).value);
}

/** Decodes a pointer value read from KV. */
export function decodePointer(value: unknown): PolicyPointer | null {
  return value === null ? null : decodeStored(PolicyPointerSchema, value, "the policy pointer ['policy', 'current']");
}
