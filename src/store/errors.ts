/** The errors of the pair store, one class per answer the server gives (413/422, 409, 404, 422, 500). */

/** A value or commit would break a Deno KV limit (value size, commit size); nothing was written. */
export class StoreLimitError extends Error {
  override readonly name = "StoreLimitError";
}

/** A state change the record's current state does not allow (a second verdict, a second feedback, …). */
export class ConflictError extends Error {
  override readonly name: string = "ConflictError";
}

/** The record named does not exist (or has already been deleted by its expiry). */
export class NotFoundError extends Error {
  override readonly name = "NotFoundError";
}

/** An argument given to the store does not satisfy its schema. */
export class StoreInputError extends Error {
  override readonly name = "StoreInputError";
}

/** A value read back from KV does not match its schema (written by another version, or by hand). */
export class StoreCorruptError extends Error {
  override readonly name = "StoreCorruptError";
}

/**
 * A publish found the served version is not the one the new version was trained from (someone rolled back,
 * or published another version): nothing was published; the trainer must start again from what is served.
 */
export class PointerMovedError extends ConflictError {
  override readonly name = "PointerMovedError";
}

/** A trainer tried to write after another trainer took the fence from it: it must stop (nothing was written). */
export class FencedOutError extends ConflictError {
  override readonly name = "FencedOutError";
}
