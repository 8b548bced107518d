// Redaction of everything that goes into the trail: argv, statements, commands, request lines.
//
// Two sources of truth, applied together in one pass over the original text:
//  - exact values: the secrets in the job's environment and their common encodings (a token is
//    still a token in an Authorization: Basic header or a query string);
//  - detectors (detectors.ts): secret formats and PII that no environment told us about.
// All matches are found on the original text and overlapping ones are merged before anything is
// replaced, so one detector never re-redacts another's marker and a short match inside a longer one
// (an env value inside a private key) can never leave the rest of the longer one in clear.
import { Buffer } from 'node:buffer';
import { ARGV_RULES, DETECTORS, escapeRegExp, hintNeedles, hintPattern, type ArgvRule, type Detector } from './detectors.js';

export interface EnvSecret {
  readonly name: string;
  readonly value: string;
}

/** Variable names whose values are treated as secrets wherever they appear. */
const SECRET_NAME = /TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIAL|AUTH|PRIVATE/i;

/** Shorter values ("true", "1", "main") would redact ordinary words all over the trail. */
export const MIN_SECRET_LENGTH = 6;

/**
 * Below this no detector and no exact value can match, so such text is returned without scanning.
 * Every detector needs at least this much text ("a@b.co", "-pX" after a program name, ...).
 */
const MIN_MATCH_LENGTH = 6;

/** Base64 fragments shorter than this would match unrelated base64 by chance. */
const MIN_FRAGMENT_LENGTH = 6;

export function secretsFromEnv(env: Readonly<Record<string, string | undefined>>): EnvSecret[] {
  const seen = new Set<string>();
  const out: EnvSecret[] = [];
  for (const [name, value] of Object.entries(env)) {
    if (value === undefined || value.length < MIN_SECRET_LENGTH || !SECRET_NAME.test(name)) continue;
    if (seen.has(value)) continue;
    seen.add(value);
    out.push({ name, value });
  }
  return out;
}

export interface RedactorOptions {
  /** Defaults to DETECTORS; pass a filtered list to turn PII detection off, say. */
  readonly detectors?: readonly Detector[];
  readonly argvRules?: readonly ArgvRule[];
}

/** A detector with its own RegExp copy: lastIndex is state, and Redactors must not share it. */
interface CompiledDetector {
  readonly detector: Detector;
  readonly regex: RegExp;
  readonly hasSecretGroup: boolean;
}

/** Matches found in one text: parallel arrays, allocated only once something matched. */
interface Spans {
  readonly start: number[];
  readonly end: number[];
  /** Lower is stronger: exact env values, then detectors in table order. */
  readonly priority: number[];
  readonly label: string[];
}

export class Redactor {
  readonly #detectors: CompiledDetector[];
  readonly #argvRules: readonly ArgvRule[];
  /** Case-insensitive union of all detector hints: one scan decides whether detectors run at all. */
  readonly #hints: RegExp | undefined;
  /** Union of every exact value and encoding, longest first so a value beats its own prefix. */
  readonly #exact: RegExp | undefined;
  readonly #exactTest: RegExp | undefined;
  readonly #exactLabel = new Map<string, string>();
  readonly #hintNeedles: { needles: string[]; digitRuns: number[] };

  constructor(secrets: readonly EnvSecret[] = [], options: RedactorOptions = {}) {
    const detectors = options.detectors ?? DETECTORS;
    this.#argvRules = options.argvRules ?? ARGV_RULES;
    this.#detectors = detectors.map((detector) => {
      const flags = new Set(detector.regex.flags + 'g');
      const hasSecretGroup = /\(\?<secret>/.test(detector.regex.source);
      if (hasSecretGroup) flags.add('d');
      return { detector, regex: new RegExp(detector.regex.source, [...flags].join('')), hasSecretGroup };
    });
    this.#hints = detectors.length > 0 ? new RegExp(hintPattern(detectors), 'i') : undefined;
    this.#hintNeedles = hintNeedles(detectors);

    for (const { name, value } of secrets) {
      if (value.length < MIN_SECRET_LENGTH) continue;
      for (const form of encodedForms(value)) {
        if (!this.#exactLabel.has(form)) this.#exactLabel.set(form, `env:${name}`);
      }
    }
    if (this.#exactLabel.size > 0) {
      const source = [...this.#exactLabel.keys()].sort((a, b) => b.length - a.length).map(escapeRegExp).join('|');
      this.#exact = new RegExp(source, 'g');
      this.#exactTest = new RegExp(source);
    }
  }

  /** Number of exact patterns (values times encodings); for logs and tests. */
  get exactPatternCount(): number {
    return this.#exactLabel.size;
  }

  /**
   * redact()'s two pre-checks as data, for code that runs them on bytes (the native relay's
   * statement events): text with none of the needles (ASCII case aside), no digit run of those
   * lengths and none of the exact forms (case and all) comes back from redact() unchanged.
   */
  precheck(): { needles: string[]; digitRuns: number[]; exact: string[] } {
    return { ...this.#hintNeedles, exact: [...this.#exactLabel.keys()] };
  }

  /** Whether either pre-check finds something in `text` (at any length): what precheck() describes. */
  precheckHit(text: string): boolean {
    return (this.#exactTest !== undefined && this.#exactTest.test(text)) || (this.#hints !== undefined && this.#hints.test(text));
  }

  /** Returns `text` itself (the same string) when nothing needs redacting. */
  redact(text: string): string {
    if (text.length < MIN_MATCH_LENGTH) return text;
    // The pre-checks are non-global test() calls: no match object, no lastIndex, no allocation.
    const exactHit = this.#exactTest !== undefined && this.#exactTest.test(text);
    const hintHit = this.#hints !== undefined && this.#hints.test(text);
    if (!exactHit && !hintHit) return text;

    let spans: Spans | undefined;
    if (exactHit && this.#exact) spans = this.#collectExact(text, this.#exact, spans);
    if (hintHit) {
      for (let i = 0; i < this.#detectors.length; i++) spans = collectDetector(text, this.#detectors[i]!, i + 1, spans);
    }
    return spans === undefined ? text : applySpans(text, spans);
  }

  /**
   * Redacts each element, plus the ARGV_RULES that need the previous element (`--password X`).
   * Returns `argv` itself when nothing changed.
   */
  redactArgv(argv: string[]): string[] {
    let out: string[] | undefined;
    for (let i = 0; i < argv.length; i++) {
      const raw = argv[i]!;
      const redacted = this.#redactArgvElement(argv, i, raw);
      if (redacted !== raw) {
        out ??= argv.slice();
        out[i] = redacted;
      }
    }
    return out ?? argv;
  }

  #redactArgvElement(argv: readonly string[], i: number, raw: string): string {
    for (const rule of this.#argvRules) {
      if (rule.flag !== undefined && (i === 0 || !rule.flag.test(argv[i - 1]!))) continue;
      if (rule.programs !== undefined && !earlierElementMatches(argv, i, rule.programs)) continue;
      if (rule.exceptPrograms !== undefined && earlierElementMatches(argv, i, rule.exceptPrograms)) continue;
      const m = rule.secret.exec(raw);
      if (m === null) continue;
      const secret = m.groups?.secret;
      // Where the named group is, without the 'd' flag: these patterns anchor it at the end.
      const start = secret === undefined ? m.index : m.index + m[0].length - secret.length;
      const end = m.index + m[0].length;
      return this.redact(raw.slice(0, start)) + marker(rule.name) + this.redact(raw.slice(end));
    }
    return this.redact(raw);
  }

  #collectExact(text: string, re: RegExp, spans: Spans | undefined): Spans | undefined {
    re.lastIndex = 0;
    for (let m = re.exec(text); m !== null; m = re.exec(text)) {
      spans = addSpan(spans, m.index, m.index + m[0].length, 0, this.#exactLabel.get(m[0]) ?? 'env');
    }
    return spans;
  }
}

function collectDetector(text: string, c: CompiledDetector, priority: number, spans: Spans | undefined): Spans | undefined {
  const re = c.regex;
  re.lastIndex = 0;
  for (let m = re.exec(text); m !== null; m = re.exec(text)) {
    if (m[0].length === 0) {
      re.lastIndex++;
      continue;
    }
    if (c.detector.validate !== undefined && !c.detector.validate(m[0], text, m.index)) continue;
    let start = m.index;
    let end = m.index + m[0].length;
    const group = c.hasSecretGroup ? m.indices?.groups?.secret : undefined;
    if (group !== undefined) [start, end] = group;
    if (end > start) spans = addSpan(spans, start, end, priority, c.detector.name);
  }
  return spans;
}

function addSpan(spans: Spans | undefined, start: number, end: number, priority: number, label: string): Spans {
  spans ??= { start: [], end: [], priority: [], label: [] };
  spans.start.push(start);
  spans.end.push(end);
  spans.priority.push(priority);
  spans.label.push(label);
  return spans;
}

/** Replaces the union of all spans; a merged span is labelled by its strongest member. */
function applySpans(text: string, spans: Spans): string {
  const order = spans.start.map((_, i) => i).sort((a, b) => spans.start[a]! - spans.start[b]! || spans.priority[a]! - spans.priority[b]!);
  let out = '';
  let pos = 0;
  let k = 0;
  while (k < order.length) {
    const first = order[k]!;
    const start = spans.start[first]!;
    let end = spans.end[first]!;
    let best = first;
    for (k++; k < order.length && spans.start[order[k]!]! < end; k++) {
      const j = order[k]!;
      if (spans.end[j]! > end) end = spans.end[j]!;
      if (spans.priority[j]! < spans.priority[best]!) best = j;
    }
    out += text.slice(pos, start) + marker(spans.label[best]!);
    pos = end;
  }
  return out + text.slice(pos);
}

function marker(label: string): string {
  return `[REDACTED:${label}]`;
}

function earlierElementMatches(argv: readonly string[], i: number, re: RegExp): boolean {
  for (let j = 0; j < i; j++) if (re.test(argv[j]!)) return true;
  return false;
}

/**
 * The value as it appears raw, base64 (standard and url-safe, padded or not, and at each of the three
 * byte alignments it can have inside a longer encoded string such as `user:token`), URL-encoded
 * (both %20 and form style, upper and lower hex) and JSON-escaped.
 */
export function encodedForms(value: string): Set<string> {
  const forms = new Set<string>([value]);
  const bytes = Buffer.from(value, 'utf8');

  const std = bytes.toString('base64');
  for (const b64 of [std, std.replace(/=+$/, '')]) {
    forms.add(b64);
    forms.add(toUrlSafe(b64));
  }
  for (let shift = 0; shift < 3; shift++) {
    const fragment = alignedFragment(bytes, shift);
    if (fragment.length >= MIN_FRAGMENT_LENGTH) {
      forms.add(fragment);
      forms.add(toUrlSafe(fragment));
    }
  }

  const uri = encodeURIComponent(value);
  const form = new URLSearchParams({ v: value }).toString().slice(2);
  for (const encoded of [uri, form]) {
    forms.add(encoded);
    forms.add(encoded.replace(/%[0-9A-F]{2}/g, (h) => h.toLowerCase()));
  }
  forms.add(JSON.stringify(value).slice(1, -1));
  return forms;
}

/**
 * The base64 characters that depend only on `bytes` when they sit `shift` bytes into a longer input:
 * the characters shared with the preceding or following bytes are dropped, since those differ with
 * whatever surrounds the value.
 */
function alignedFragment(bytes: Buffer, shift: number): string {
  const encoded = Buffer.concat([Buffer.alloc(shift), bytes]).toString('base64').replace(/=+$/, '');
  const lead = shift === 0 ? 0 : shift + 1; // 1 byte prefix -> 2 chars touched, 2 bytes -> 3 chars
  const tail = (shift + bytes.length) % 3 === 0 ? 0 : 1; // the last char of a partial group mixes in what follows
  return encoded.slice(lead, encoded.length - tail);
}

function toUrlSafe(b64: string): string {
  return b64.replace(/\+/g, '-').replace(/\//g, '_');
}

const MARKER = '[REDACTED:';

/**
 * The labels of the '[REDACTED:<label>]' markers in a redacted text, each once in order of first
 * appearance, joined with ','; undefined when there is none. Finds what /\[REDACTED:([^\]]+)\]/g
 * finds, by indexOf and without match objects or a Set: it runs for every value written into a
 * masked column (agent/pg/handler.ts secretLabel).
 */
export function redactionLabels(text: string): string | undefined {
  let labels: string[] | undefined;
  let from = 0;
  for (;;) {
    const at = text.indexOf(MARKER, from);
    if (at < 0) break;
    const start = at + MARKER.length;
    const end = text.indexOf(']', start);
    if (end < 0) break; // no later marker can be closed either
    if (end === start) {
      from = at + 1; // '[REDACTED:]' is no marker; one may start inside it
      continue;
    }
    const label = text.slice(start, end);
    if (!labels) labels = [label];
    else if (!labels.includes(label)) labels.push(label);
    from = end + 1;
  }
  return labels?.join(',');
}
