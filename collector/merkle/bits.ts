// Bit arithmetic on non-negative integers up to Number.MAX_SAFE_INTEGER (2^53 - 1). JavaScript's
// bitwise operators work on 32 bits only, so values are split into a high and a low 32-bit half;
// division by a power of two is exact for these values.

const TWO32 = 2 ** 32;

/** True when v is an integer in [0, 2^53). */
export function isIndex(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** Number of bits needed to represent x (0 for 0), like Go's bits.Len64. */
export function bitLen(x: number): number {
  if (x < TWO32) return 32 - Math.clz32(x);
  return 64 - Math.clz32(Math.floor(x / TWO32));
}

function ctz32(x: number): number {
  return 31 - Math.clz32(x & -x);
}

/** Number of trailing zero bits of x; x must be > 0. */
export function trailingZeros(x: number): number {
  const lo = x % TWO32;
  if (lo !== 0) return ctz32(lo);
  return 32 + ctz32(Math.floor(x / TWO32));
}

function pop32(x: number): number {
  x = x - ((x >>> 1) & 0x55555555);
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  x = (x + (x >>> 4)) & 0x0f0f0f0f;
  return Math.imul(x, 0x01010101) >>> 24;
}

/** Number of one bits in x. */
export function popCount(x: number): number {
  return pop32(x % TWO32) + pop32(Math.floor(x / TWO32));
}

/** a XOR b. */
export function xor(a: number, b: number): number {
  const hi = (Math.floor(a / TWO32) ^ Math.floor(b / TWO32)) >>> 0;
  const lo = ((a % TWO32) ^ (b % TWO32)) >>> 0;
  return hi * TWO32 + lo;
}

/** x >> k. */
export function shr(x: number, k: number): number {
  return Math.floor(x / 2 ** k);
}

/** Bit i of x (0 or 1). */
export function bit(x: number, i: number): number {
  return Math.floor(x / 2 ** i) % 2;
}

/** The largest power of two strictly less than n; n must be > 1. */
export function largestPow2Below(n: number): number {
  return 2 ** (bitLen(n - 1) - 1);
}
