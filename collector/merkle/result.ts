// Errors as values. Functions that judge untrusted input (proofs, notes, tile paths, entry bundles)
// return one of these instead of throwing, with a reason meant for a human reading a log line.
// Programming errors (a prover asked for index 7 of a 5-leaf tree) throw RangeError instead.

/** The outcome of a check: ok, or not ok and why. */
export type Verdict = { ok: true } | { ok: false; reason: string };

/** A value, or the reason there is none. */
export type Result<T> = { ok: true; value: T } | { ok: false; reason: string };

export const OK: Verdict = Object.freeze({ ok: true }) as Verdict;

export function fail(reason: string): { ok: false; reason: string } {
  return { ok: false, reason };
}

export function okValue<T>(value: T): { ok: true; value: T } {
  return { ok: true, value };
}
