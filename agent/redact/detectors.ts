// Detectors for secrets and PII in the audit trail. Adding a detector is one entry in DETECTORS
// (or ARGV_RULES for rules that need to see neighbouring argv elements).
//
// A detector's regex may have a named group `secret`: then only that group is replaced and the rest
// of the match stays readable (the user and host of a URL, the flag name of `--password=`). Without
// it the whole match is replaced.

export type DetectorKind = 'secret' | 'pii';

export interface Detector {
  /** Appears in the trail as `[REDACTED:<name>]`; stable, so keep names once shipped. */
  readonly name: string;
  readonly kind: DetectorKind;
  readonly regex: RegExp;
  /**
   * What any match of `regex` must contain: one of these literal strings (ASCII, compared without
   * regard to ASCII case), or for `{ digitRun: n }` n ASCII digits each separated from the next by
   * at most one space or hyphen. All hints are joined into one pre-check (hintPattern), so text that
   * cannot match any detector is scanned once, not once per detector; the native relay runs the same
   * check on the bytes it audits itself (agent/native/src/statement_event.cc). A hint may match
   * more than `regex` does, never less.
   */
  readonly hint: readonly string[] | { readonly digitRun: number };
  /**
   * Rejects a regex match that is not really one (Luhn for card numbers). Gets the text and the
   * match's index for checks on context that would make the regex itself slow (lookbehinds of
   * unbounded length run at every position).
   */
  readonly validate?: (match: string, text: string, index: number) => boolean;
}

/** A value that runs to the next whitespace, or a quoted string (quotes included in the secret). */
const VALUE = String.raw`(?!\[REDACTED:)(?:"[^"\n]*"|'[^'\n]*'|[^\s"',;&|]+)`;

/** Programs whose `-pVALUE` is a password rather than a port or `mkdir -p`. */
const SHORT_P_PASSWORD_PROGRAMS = String.raw`(?:mysql|mysqldump|mysqladmin|mysqlimport|mysqlcheck|mysqlshow|mysqlpump|mysqlbinlog|mariadb|mariadb-dump|mariadb-admin|sshpass)`;

/** The fewest digits a card-number match has: 1 + the {12,18} repetitions' 12. */
const CARD_MIN_DIGITS = 13;

export const DETECTORS: readonly Detector[] = [
  {
    name: 'private-key',
    kind: 'secret',
    // An unterminated block (argv or a log line cut short) is redacted to the end of the text:
    // what follows BEGIN is key material until proven otherwise.
    regex: /-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|$)/,
    hint: ['PRIVATE KEY'],
  },
  {
    name: 'aws-access-key-id',
    kind: 'secret',
    regex: /\b(?:AKIA|ASIA)[A-Z2-7]{16}\b/,
    hint: ['AKIA', 'ASIA'],
  },
  {
    name: 'aws-secret-access-key',
    kind: 'secret',
    regex: /aws_secret_access_key["']?[ \t]*[=:][ \t]*["']?(?<secret>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])/i,
    hint: ['aws_secret_access_key'],
  },
  {
    name: 'github-token',
    kind: 'secret',
    regex: /\b(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,244})\b/,
    hint: ['ghp_', 'gho_', 'ghu_', 'ghs_', 'ghr_', 'github_pat_'],
  },
  {
    name: 'gitlab-token',
    kind: 'secret',
    // Newer GitLab tokens carry dot-separated routing parts after the random part.
    regex: /\bglpat-[A-Za-z0-9_-]{20,}(?:\.[A-Za-z0-9_-]+)*/,
    hint: ['glpat-'],
  },
  {
    name: 'slack-token',
    kind: 'secret',
    regex: /\bxox[baprs]-[A-Za-z0-9-]{10,}/,
    hint: ['xoxb-', 'xoxa-', 'xoxp-', 'xoxr-', 'xoxs-'],
  },
  {
    name: 'jwt',
    kind: 'secret',
    // Header and payload are JSON objects, so both start with base64url('{"') = "eyJ"; the payload
    // may start with '{ ' or '{\n' in the wild, hence only "ey". Unsigned tokens have an empty
    // third segment and are still bearer credentials.
    regex: /\beyJ[A-Za-z0-9_-]{8,}\.ey[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*/,
    hint: ['eyJ'],
  },
  {
    name: 'url-password',
    kind: 'secret',
    // Greedy up to the last '@' before the path: unescaped '@' in passwords is common enough.
    regex: /\b[A-Za-z][A-Za-z0-9+.-]{0,31}:\/\/[^\s:/?#@[\]]*:(?!\[REDACTED:)(?<secret>[^\s/?#]+)@/,
    hint: ['://'],
  },
  {
    name: 'pg-role-password',
    kind: 'secret',
    regex: /\b(?:CREATE|ALTER)\s+(?:ROLE|USER)\b[^;]{0,2000}?\bPASSWORD\s+(?<secret>'(?:[^']|'')*'|E'(?:[^'\\]|\\.|'')*')/i,
    hint: ['PASSWORD'],
  },
  {
    name: 'cli-password',
    kind: 'secret',
    regex: new RegExp(String.raw`(?<![\w-])--?(?:password|passwd|pass)=(?<secret>${VALUE})`, 'i'),
    hint: ['-pass'],
  },
  {
    name: 'cli-password',
    kind: 'secret',
    regex: new RegExp(String.raw`\b${SHORT_P_PASSWORD_PROGRAMS}\b[^\n|;&]{0,1000}?\s-p(?<secret>[^\s"']\S*|"[^"\n]*"|'[^'\n]*')`),
    hint: ['mysql', 'mariadb', 'sshpass'],
  },
  {
    name: 'password-assignment',
    kind: 'secret',
    // PGPASSWORD=x, DB_PASSWORD: x, "password": "x". Not PWD: that is the working directory.
    regex: new RegExp(String.raw`(?<![A-Za-z0-9_])[A-Za-z0-9_]{0,64}?(?:password|passwd)["']?[ \t]*[=:][ \t]*(?<secret>${VALUE})`, 'i'),
    hint: ['passw'],
  },
  {
    name: 'email',
    kind: 'pii',
    regex: /(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b/,
    hint: ['@'],
    validate: notInUrlAuthority,
  },
  {
    name: 'card-number',
    kind: 'pii',
    regex: /\b\d(?:[ -]?\d){12,18}\b/,
    hint: { digitRun: CARD_MIN_DIGITS },
    validate: isLikelyCardNumber,
  },
];

/** The hints of `detectors` as the pre-check the relay runs natively: literal needles and digit-run lengths. */
export function hintNeedles(detectors: readonly Detector[]): { needles: string[]; digitRuns: number[] } {
  const needles: string[] = [];
  const digitRuns: number[] = [];
  for (const d of detectors) {
    if (Array.isArray(d.hint)) needles.push(...(d.hint as readonly string[]));
    else digitRuns.push((d.hint as { digitRun: number }).digitRun);
  }
  return { needles, digitRuns };
}

/** The hints of `detectors` as one case-insensitive RegExp source (the Redactor's pre-check). */
export function hintPattern(detectors: readonly Detector[]): string {
  const { needles, digitRuns } = hintNeedles(detectors);
  const parts = needles.map(escapeRegExp);
  for (const n of digitRuns) parts.push(String.raw`\d(?:[ -]?\d){${n - 1}}`);
  return parts.join('|');
}

/** `s` as a RegExp source that matches it literally. */
export function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&');
}

/**
 * An address inside a URL authority (scheme://user:pass@host) is a login, not an email, and its
 * password is url-password's business.
 */
export function notInUrlAuthority(_match: string, text: string, index: number): boolean {
  // Bounded: authorities are short, and an unbounded scan per match is quadratic on hostile text.
  for (let i = index - 1; i >= 2 && i >= index - 512; i--) {
    const c = text.charCodeAt(i);
    if (c === 0x2f /* / */) return !(text.charCodeAt(i - 1) === 0x2f && text.charCodeAt(i - 2) === 0x3a /* :// */);
    if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) return true;
  }
  return true;
}

/**
 * Luhn, plus a first digit a payment network issues (2-6): epoch milliseconds, order ids and other
 * 13-19 digit numbers pass Luhn one time in ten, and redacting them would hide real audit data.
 */
export function isLikelyCardNumber(text: string): boolean {
  let sum = 0;
  let digits = 0;
  for (let i = text.length - 1; i >= 0; i--) {
    const c = text.charCodeAt(i) - 48;
    if (c < 0 || c > 9) continue;
    const d = digits % 2 === 1 ? (c * 2 > 9 ? c * 2 - 9 : c * 2) : c;
    sum += d;
    digits++;
  }
  if (digits < 13 || digits > 19) return false;
  const first = text.charCodeAt(0) - 48;
  return first >= 2 && first <= 6 && sum % 10 === 0;
}

/**
 * Rules over argv elements rather than text: a flag and its value are separate elements, so no text
 * detector sees them together.
 */
export interface ArgvRule {
  readonly name: string;
  /** Applies only after an element naming one of these programs (argv[0], or after sudo/env/exec). */
  readonly programs?: RegExp;
  /** Does not apply after an element naming one of these programs. */
  readonly exceptPrograms?: RegExp;
  /** If set, `secret` is matched against the element that follows a flag matching this. */
  readonly flag?: RegExp;
  /** The secret inside the element: its named group `secret` (which must end the match), or the whole match. */
  readonly secret: RegExp;
}

/** Programs are matched against whole elements, with or without a directory. */
const MYSQL_FAMILY = /(?:^|\/)(?:mysql|mysqldump|mysqladmin|mysqlimport|mysqlcheck|mysqlshow|mysqlpump|mysqlbinlog|mariadb|mariadb-dump|mariadb-admin)$/;
const WHOLE = /^[\s\S]+$/;

export const ARGV_RULES: readonly ArgvRule[] = [
  // mysql's bare --password prompts, and the next element is a database name.
  { name: 'cli-password', exceptPrograms: MYSQL_FAMILY, flag: /^--?(?:password|passwd|pass|passin|passout)$/i, secret: WHOLE },
  { name: 'cli-secret', flag: /^--?(?:token|secret|api-key|apikey|access-token|auth-token|client-secret)$/i, secret: WHOLE },
  { name: 'cli-password', programs: MYSQL_FAMILY, secret: /^-p(?<secret>[\s\S]+)$/ },
  { name: 'cli-password', programs: /(?:^|\/)sshpass$/, flag: /^-p$/, secret: WHOLE },
  { name: 'cli-password', programs: /(?:^|\/)sshpass$/, secret: /^-p(?<secret>[\s\S]+)$/ },
  { name: 'cli-password', programs: /(?:^|\/)curl$/, flag: /^(?:-u|--user|--proxy-user|-U)$/, secret: /^[^:]*:(?<secret>[\s\S]+)$/ },
];

// Keyed by the detector itself: several detectors share a name (two cli-password forms).
const SINGLE = new Map<Detector, RegExp>();

/**
 * Whether any of the named detectors finds a (validated) hit in `text`: used to mask result values
 * that look like what a detector names (e.g. an email in a column policy did not list).
 */
export function detectorHit(names: readonly string[], text: string): boolean {
  for (const d of DETECTORS) {
    if (!names.includes(d.name)) continue;
    let re = SINGLE.get(d);
    if (!re) {
      re = new RegExp(d.regex.source, d.regex.flags.includes('g') ? d.regex.flags : d.regex.flags + 'g');
      SINGLE.set(d, re);
    }
    re.lastIndex = 0;
    for (let m = re.exec(text); m !== null; m = re.exec(text)) {
      if (!d.validate || d.validate(m[0], text, m.index)) return true;
      if (m[0].length === 0) re.lastIndex++;
    }
  }
  return false;
}

/**
 * For result masking, which runs detectorHit on every text value of every row: a byte test over a
 * whole DataRow that, when it returns true, proves none of `names` can hit in any of its values, so
 * the row needs no decoding. Undefined unless every name has such a test; the tests follow from the
 * regexes above, and test/unit/redact.test.ts checks them against detectorHit:
 *   email        needs a literal '@' (U+0040);
 *   card-number  /\b\d(?:[ -]?\d){12,18}\b/ needs at least 13 digits, and JavaScript's \d is [0-9]
 *                even with the u flag.
 * Values are UTF-8: bytes 0x40 and 0x30-0x39 appear only as those ASCII characters (never inside a
 * multi-byte sequence, and an invalid sequence decodes to U+FFFD, not to them), so a row without a
 * 0x40 byte has no '@' in any value, and one with fewer than 13 bytes 0x30-0x39 (counting the
 * length words too, which can only raise the count) has no value with 13 digits. Any other detector
 * (secrets with prefixes, words, URLs) gets no test here: such a spec always takes the full path.
 */
export function rowCannotHit(names: readonly string[]): ((row: Uint8Array) => boolean) | undefined {
  let at = false;
  let digits = false;
  for (const n of names) {
    if (n === 'email') at = true;
    else if (n === 'card-number') digits = true;
    else return undefined;
  }
  if (!at && !digits) return undefined;
  const maxDigits = digits ? CARD_MIN_DIGITS - 1 : Infinity;
  return (row) => {
    let count = 0;
    for (let i = 0; i < row.length; i++) {
      const b = row[i]!;
      if (b === 0x40 && at) return false;
      if (b >= 0x30 && b <= 0x39 && ++count > maxDigits) return false;
    }
    return true;
  };
}
