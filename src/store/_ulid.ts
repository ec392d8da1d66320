/** Time-sortable ids in the ULID layout: 48-bit ms timestamp then 80 random bits, Crockford base32. */

const ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const TIME_CHARS = 10;
const RANDOM_CHARS = 16;
const RANDOM_LIMIT = 1n << 80n;
const MAX_TIME = 2 ** 48 - 1;

/** What every id of the store looks like: 26 Crockford base32 characters. */
export const ID_PATTERN = /^[0-7][0-9A-HJKMNP-TV-Z]{25}$/;

/** A function returning a new id for a time in ms; ids from one generator sort in call order. */
export type IdGenerator = (nowMs: number) => string;

/**
 * Creates an id generator. Within one millisecond (or when the clock steps back) it increments the
 * random part instead of drawing a new one, so ids from one process are strictly increasing.
 */
export function createIdGenerator(): IdGenerator {
  let lastMs = -1;
  let lastRandom = 0n;
  return (nowMs) => {
    if (!Number.isInteger(nowMs) || nowMs < 0 || nowMs > MAX_TIME) {
      throw new RangeError(`Cannot make an id as the time must be an integer in [0, 2^48): current value is ${nowMs}`);
    }
    if (nowMs > lastMs) {
      lastMs = nowMs;
      lastRandom = randomBits80();
    } else {
      lastRandom += 1n;
      if (lastRandom >= RANDOM_LIMIT) { // 2^80 ids in one ms: borrow the next millisecond
        lastMs += 1;
        lastRandom = randomBits80();
      }
    }
    return encode(BigInt(lastMs), TIME_CHARS) + encode(lastRandom, RANDOM_CHARS);
  };
}

/** The creation time (ms) encoded in an id. */
export function idTime(id: string): number {
  let t = 0;
  for (const ch of id.slice(0, TIME_CHARS)) t = t * 32 + ALPHABET.indexOf(ch);
  return t;
}

function randomBits80(): bigint {
  const bytes = crypto.getRandomValues(new Uint8Array(10));
  let n = 0n;
  for (const b of bytes) n = (n << 8n) | BigInt(b);
  return n;
}

function encode(n: bigint, chars: number): string {
  let out = "";
  for (let i = 0; i < chars; i++) {
    out = ALPHABET[Number(n & 31n)] + out;
    n >>= 5n;
  }
  return out;
}
