/** zod at the store's two borders: arguments coming in, and values read back from KV. */
import { z } from "zod";
import { StoreCorruptError, StoreInputError } from "./errors.ts";

/** Parses a value read back from KV, or throws `StoreCorruptError` saying which record and which fields. */
export function decodeStored<S extends z.ZodType>(schema: S, value: unknown, what: string): z.infer<S> {
  const parsed = schema.safeParse(value);
  if (parsed.success) return parsed.data;
  throw new StoreCorruptError(
    `Cannot read ${what} from KV as it does not match the current schema ` +
      `(written by another version of this program, or by hand):\n${z.prettifyError(parsed.error)}`,
  );
}

/** Parses an argument of a store method, or throws `StoreInputError` saying which fields. */
export function parseInput<S extends z.ZodType>(schema: S, value: unknown, what: string): z.infer<S> {
  const parsed = schema.safeParse(value);
  if (parsed.success) return parsed.data;
  throw new StoreInputError(`Cannot accept ${what}:\n${z.prettifyError(parsed.error)}`);
}

/** A counter read back as a number: KV's `sum` wraps around, so a value past 2^63 is shown as negative. */
export function counterValue(value: unknown, what: string): number {
  if (value === null) return 0;
  const n = decodeStored(z.instanceof(Deno.KvU64), value, what).value;
  return Number(BigInt.asIntN(64, n));
}
