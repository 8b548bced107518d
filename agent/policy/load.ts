// Reading a policy file: YAML in, a compiled Policy out. Every error names FILE:LINE, says what is
// wrong and what was expected; nothing is guessed, and a file that does not validate never becomes
// a policy (watch.ts keeps the previous one in force).
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { isAlias, isMap, isPair, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node as YamlNode } from 'yaml';
import { DETECTORS } from '../redact/detectors.js';
import {
  compileGlobs, makeDecision, parseIpWords, Policy, PROTOCOLS, DEFAULT_RULE,
  type PolicyRule, type RuleMatch, type TargetMatcher,
} from './policy.js';
import type { Action, MaskSpec, ReviewSpec } from './types.js';

export class PolicyError extends Error {
  /** `detail` is the message without the FILE:LINE prefix; line 0 means the file as a whole. */
  constructor(readonly file: string, readonly line: number, readonly detail: string) {
    super(line > 0 ? `${file}:${line}: ${detail}` : `${file}: ${detail}`);
    this.name = 'PolicyError';
  }
}

export const ACTIONS: readonly Action[] = ['allow', 'deny', 'mask', 'review'];
/** Detector names a mask rule may use (agent/redact/detectors.ts). */
export const MASK_DETECTORS: readonly string[] = [...new Set(DETECTORS.map((d) => d.name))];
/** Longest review timeout: a held connection is not a queue, and timers cannot count past ~24 days. */
export const MAX_REVIEW_TIMEOUT_MS = 24 * 3600_000;

const TOP_KEYS = ['version', 'default', 'rules'] as const;
const RULE_KEYS = ['name', 'description', 'match', 'action', 'mask', 'review'] as const;
const MASK_KEYS = ['columns', 'detectors'] as const;
const REVIEW_KEYS = ['approvers', 'approvals', 'timeout'] as const;

/** Job identity globs: true when the system they come from compares names case-insensitively. */
const GLOB_FIELDS = {
  provider: true, repository: true, actor: true,
  workflow: false, job: false, branch: false, ref: false,
  database: false, user: false, tables: true,
} as const;
const MATCH_KEYS = [
  'protocol', 'target', 'repository', 'workflow', 'job', 'branch', 'ref', 'actor', 'provider',
  'database', 'user', 'statement', 'tables', 'pattern', 'where',
] as const;

/** Reads and compiles a policy file; throws PolicyError naming the line. */
export function loadPolicy(file: string): Policy {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new PolicyError(file, 0, `cannot read the policy file: ${(err as Error).message}`);
  }
  return parsePolicy(text, file);
}

/** Compiles policy text; `file` names it in errors and becomes Policy.source. */
export function parsePolicy(text: string, file = '<policy>'): Policy {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const r: Reader = new Reader(file, text, lines, doc);
  if (doc.errors.length) {
    const e = doc.errors[0]!;
    const line = lines.linePos(e.pos[0]).line;
    let msg = `invalid YAML: ${e.message.split('\n')[0]}`;
    if (e.code === 'DUPLICATE_KEY') msg = 'this key appears twice in the same mapping; each key may be given once';
    throw new PolicyError(file, line, msg + r.starHint(e.pos[0]));
  }
  const root = doc.contents as YamlNode | null;
  if (root === null || (isScalar(root) && root.value === null)) {
    throw new PolicyError(file, 1, 'the policy file is empty; expected version: 1, default: allow|deny and rules: [...]');
  }
  const top = r.mapping(root, 'the policy file', TOP_KEYS);

  const version = top.get('version');
  if (!version) r.fail(root, 'version is missing; start the file with version: 1');
  const v = r.deref(version.value);
  if (!isScalar(v) || v.value !== 1) r.fail(version.value ?? version.key, `version must be 1 (the only format this agent knows), got ${r.describe(v)}`);

  const def = top.get('default');
  if (!def) r.fail(root, 'default is missing; say default: allow or default: deny (what happens when no rule matches)');
  const defaultAction = r.string(def.value, 'default');
  if (defaultAction !== 'allow' && defaultAction !== 'deny') {
    r.fail(def.value, `default must be allow or deny, got "${defaultAction}"${suggest(defaultAction, ['allow', 'deny'])}`);
  }

  const rulesEntry = top.get('rules');
  if (!rulesEntry) r.fail(root, 'rules is missing; give the list of rules (rules: [] for none)');
  const list = r.deref(rulesEntry.value);
  if (!isSeq(list)) r.fail(rulesEntry.value ?? rulesEntry.key, `rules must be a list of rules (rules: [] for none), got ${r.describe(list)}`);

  const rules: PolicyRule[] = [];
  const names = new Map<string, number>();
  for (const item of list.items as YamlNode[]) {
    const rule = readRule(r, item);
    const name = rule.rule.name;
    const first = names.get(name);
    if (first !== undefined) {
      r.failAt(rule.nameLine, `rule name "${name}" is already used by the rule on line ${first}; rule names must be unique`);
    }
    names.set(name, rule.nameLine);
    rules.push(rule.rule);
  }
  const digest = createHash('sha256').update(text).digest('hex');
  return new Policy({ rules, defaultAction, source: file, digest });
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

function readRule(r: Reader, item: YamlNode): { rule: PolicyRule; nameLine: number } {
  const node = r.deref(item);
  if (!isMap(node)) r.fail(item, `each rule must be a mapping with name, match and action, got ${r.describe(node)}`);
  const line = r.line(node);
  const m = r.mapping(node, 'a rule', RULE_KEYS);

  const nameEntry = m.get('name');
  if (!nameEntry) r.fail(node, 'this rule has no name; every rule needs a unique name (it appears in events and in the error the job sees)');
  const name = r.string(nameEntry.value, 'name');
  if (!NAME_RE.test(name)) {
    r.fail(nameEntry.value, `rule name "${name}" must be 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit`);
  }
  if (name === DEFAULT_RULE) r.fail(nameEntry.value, `the rule name "${DEFAULT_RULE}" is reserved for decisions made by the policy default`);

  const descEntry = m.get('description');
  const description = descEntry ? r.string(descEntry.value, 'description') : undefined;

  const actionEntry = m.get('action');
  if (!actionEntry) r.fail(node, `rule "${name}" has no action; expected action: allow, deny, mask or review`);
  const action = r.string(actionEntry.value, 'action') as Action;
  if (!ACTIONS.includes(action)) {
    r.fail(actionEntry.value, `unknown action "${action}"; expected allow, deny, mask or review${suggest(action, ACTIONS)}`);
  }

  const matchEntry = m.get('match');
  const match = matchEntry ? readMatch(r, matchEntry.value, matchEntry.key) : {};

  let mask: MaskSpec | undefined;
  const maskEntry = m.get('mask');
  if (maskEntry) {
    if (action !== 'mask') r.fail(maskEntry.key, `mask: is only used with action: mask (this rule's action is ${action})`);
    mask = readMask(r, maskEntry.value, maskEntry.key);
  } else if (action === 'mask') {
    r.fail(actionEntry.value, `action mask needs a mask: section saying what to mask, e.g. mask: { columns: ["*email*"], detectors: [email] }`);
  }

  let review: ReviewSpec | undefined;
  const reviewEntry = m.get('review');
  if (reviewEntry) {
    if (action !== 'review') r.fail(reviewEntry.key, `review: is only used with action: review (this rule's action is ${action})`);
    review = readReview(r, reviewEntry.value, reviewEntry.key);
  } else if (action === 'review') {
    r.fail(actionEntry.value, 'action review needs a review: section with at least a timeout, e.g. review: { approvers: dba, approvals: 1, timeout: 10m }');
  }

  const reason = description ?? defaultReason(action, name);
  const decision = makeDecision(action, name, reason, mask, review);
  const rule: PolicyRule = Object.freeze({
    name, action, line, match: Object.freeze(match), decision,
    ...(description !== undefined ? { description } : {}),
  });
  return { rule, nameLine: r.line(nameEntry.value ?? nameEntry.key) };
}

function defaultReason(action: Action, name: string): string {
  switch (action) {
    case 'allow': return `allowed by policy rule "${name}"`;
    case 'deny': return `denied by policy rule "${name}"`;
    case 'mask': return `results masked by policy rule "${name}"`;
    case 'review': return `held for review by policy rule "${name}"`;
  }
}

function readMatch(r: Reader, value: YamlNode | null, key: YamlNode): RuleMatch {
  if (value === null || (isScalar(value) && value.value === null)) {
    r.fail(key, 'match is empty; give conditions (e.g. match: { statement: DROP TABLE }) or leave match out to match every operation');
  }
  const fields = r.mapping(value, 'match', MATCH_KEYS);
  const out: { -readonly [K in keyof RuleMatch]: RuleMatch[K] } = {};
  for (const [field, { value: v }] of fields) {
    switch (field) {
      case 'protocol': {
        const items = r.strings(v, 'protocol');
        for (const it of items) {
          if (!PROTOCOLS.includes(it.value as never)) {
            r.fail(it.node, `unknown protocol "${it.value}"; expected one of ${PROTOCOLS.join(', ')}${suggest(it.value, PROTOCOLS)}`);
          }
        }
        out.protocols = new Set(items.map((i) => i.value));
        break;
      }
      case 'target':
        out.targets = Object.freeze(r.strings(v, 'target').map((it) => {
          try {
            return parseTarget(it.value);
          } catch (err) {
            return r.fail(it.node, (err as Error).message);
          }
        }));
        break;
      case 'statement': {
        const items = r.strings(v, 'statement');
        const types = items.map((it) => {
          const t = it.value.trim().replace(/\s+/g, ' ').toUpperCase();
          if (!/^[A-Z*?][A-Z0-9 _*?-]*$/.test(t)) {
            r.fail(it.node, `statement "${it.value}" is not a statement type; expected words like SELECT, DROP TABLE or ALTER TABLE (globs: "DROP *")`);
          }
          return t;
        });
        out.statement = compileGlobs(types, true);
        break;
      }
      case 'pattern':
        out.pattern = compilePattern(r, v);
        break;
      case 'where': {
        const n = r.deref(v);
        if (!isScalar(n) || typeof n.value !== 'boolean') {
          r.fail(v ?? fields.get(field)!.key, `where must be true or false (false: DELETE/UPDATE without a WHERE clause), got ${r.describe(n)}`);
        }
        out.where = n.value as boolean;
        break;
      }
      default: {
        const ci = GLOB_FIELDS[field as keyof typeof GLOB_FIELDS];
        const globs = r.strings(v, field).map((it) => it.value);
        const re = compileGlobs(globs, ci);
        (out as Record<string, unknown>)[field] = re;
        if (field === 'branch') out.branchRef = compileGlobs(globs, ci, 'refs/heads/');
      }
    }
  }
  return out;
}

/** `(?i)` (also `(?s)`, `(?m)`, combined: `(?is)`) at the start sets RegExp flags. */
function compilePattern(r: Reader, v: YamlNode | null): RegExp {
  const src = r.string(v, 'pattern');
  const m = /^\(\?([ims]+)\)/.exec(src);
  const body = m ? src.slice(m[0].length) : src;
  if (body === '') r.fail(v, 'pattern is empty; give a regular expression over the operation text, e.g. "(?i)\\bpg_sleep\\b"');
  try {
    return new RegExp(body, m ? [...new Set(m[1])].join('') : '');
  } catch (err) {
    return r.fail(v, `pattern is not a valid regular expression: ${(err as Error).message.replace(/^Invalid regular expression: /, '')} (JavaScript syntax; "(?i)" at the start for case-insensitive)`);
  }
}

function readMask(r: Reader, value: YamlNode | null, key: YamlNode): MaskSpec {
  const fields = r.mapping(value, 'mask', MASK_KEYS);
  const columns: string[] = [];
  const detectors: string[] = [];
  const col = fields.get('columns');
  if (col) {
    for (const it of r.strings(col.value, 'columns')) {
      const dot = it.value.lastIndexOf('.');
      if (/\s/.test(it.value) || dot === 0 || dot === it.value.length - 1) {
        r.fail(it.node, `column selector "${it.value}" is not valid; expected a column name ("email"), table.column ("users.email") or a glob ("*token*")`);
      }
      columns.push(it.value);
    }
  }
  const det = fields.get('detectors');
  if (det) {
    for (const it of r.strings(det.value, 'detectors')) {
      if (!MASK_DETECTORS.includes(it.value)) {
        r.fail(it.node, `unknown detector "${it.value}"; expected one of ${MASK_DETECTORS.join(', ')}${suggest(it.value, MASK_DETECTORS)}`);
      }
      if (!detectors.includes(it.value)) detectors.push(it.value);
    }
  }
  if (!columns.length && !detectors.length) {
    r.fail(key, 'mask needs columns or detectors (or both), e.g. mask: { columns: ["*email*"], detectors: [email] }');
  }
  return { columns, detectors };
}

function readReview(r: Reader, value: YamlNode | null, key: YamlNode): ReviewSpec {
  const fields = r.mapping(value, 'review', REVIEW_KEYS);
  const t = fields.get('timeout');
  if (!t) r.fail(key, 'review needs a timeout (after it the operation is denied), e.g. review: { timeout: 10m }; durations look like 30s, 10m, 1h');
  const tn = r.deref(t.value);
  const timeoutMs = isScalar(tn) && typeof tn.value === 'string' ? parseDuration(tn.value) : undefined;
  if (timeoutMs === undefined) {
    const bare = isScalar(tn) && typeof tn.value === 'number' ? ' (a bare number has no unit)' : '';
    r.fail(t.value ?? t.key, `timeout must be a duration like 30s, 10m, 1h or 1h30m${bare}, got ${r.describe(tn)}`);
  }
  if (timeoutMs <= 0 || timeoutMs > MAX_REVIEW_TIMEOUT_MS) r.fail(t.value, 'timeout must be more than 0 and at most 24h');
  const spec: ReviewSpec = { approvals: 1, timeoutMs };
  const n = fields.get('approvals');
  if (n) {
    const nv = r.deref(n.value);
    if (!isScalar(nv) || typeof nv.value !== 'number' || !Number.isInteger(nv.value) || nv.value < 1) {
      r.fail(n.value ?? n.key, `approvals must be a whole number of approvers, 1 or more, got ${r.describe(nv)}`);
    }
    spec.approvals = nv.value as number;
  }
  const g = fields.get('approvers');
  if (g) {
    const group = r.string(g.value, 'approvers');
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(group)) r.fail(g.value, `approvers "${group}" must name one group (letters, digits, ".", "_", "-")`);
    spec.approvers = group;
  }
  return spec;
}

/** "30s", "10m", "1h", "1h30m", "500ms" to milliseconds; undefined if it is not such a duration. */
export function parseDuration(text: string): number | undefined {
  const re = /(\d+)(ms|h|m|s)/y;
  let ms = 0;
  let pos = 0;
  const s = text.trim();
  while (pos < s.length) {
    re.lastIndex = pos;
    const m = re.exec(s);
    if (!m) return undefined;
    ms += Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3600_000 }[m[2] as 'ms' | 's' | 'm' | 'h'];
    pos = re.lastIndex;
  }
  return pos === 0 ? undefined : ms;
}

const TARGET_HELP = 'expected CIDR, CIDR:PORT, [IPv6-CIDR]:PORT, HOST:PORT or *:PORT, e.g. 10.0.0.0/8, 10.1.2.3:5432, [fd00::]/8:5432, db.internal:5432, "*:5432"';

/**
 * A target selector: an address or CIDR (IPv6 with a port in brackets), or a host name glob, each
 * with an optional port; "*:5432" is any host on port 5432. Throws with a message saying why.
 */
export function parseTarget(text: string): TargetMatcher {
  const s = text.trim();
  const fail = (why: string): never => {
    throw new Error(`target "${text}": ${why}; ${TARGET_HELP}`);
  };
  let host: string;
  let portText: string | undefined;
  if (s.startsWith('[')) {
    const close = s.indexOf(']');
    if (close < 0) fail('missing ]');
    // [fd00::]/8:5432 (as in the agent config's intercept rules) or [fd00::/8]:5432
    const rest = /^(\/[^:]*)?(?::(.*))?$/.exec(s.slice(close + 1));
    if (!rest) return fail(`unexpected "${s.slice(close + 1)}" after ]`);
    host = s.slice(1, close) + (rest[1] ?? '');
    portText = rest[2];
  } else if ((s.match(/:/g) ?? []).length > 1) {
    host = s; // bare IPv6, no port
  } else {
    const colon = s.indexOf(':');
    host = colon < 0 ? s : s.slice(0, colon);
    portText = colon < 0 ? undefined : s.slice(colon + 1);
  }
  let port = 0;
  if (portText !== undefined && portText !== '*') {
    port = /^\d{1,5}$/.test(portText) ? Number(portText) : NaN;
    if (!(port >= 1 && port <= 65535)) fail(`port "${portText}" must be 1..65535`);
  }
  if (host === '') fail('no host or address');
  const slash = host.indexOf('/');
  const addr = slash < 0 ? host : host.slice(0, slash);
  const family = net.isIP(addr);
  if (family === 0) {
    if (slash >= 0 || host.includes(':') || /^[\d.]+$/.test(host)) fail(`"${addr}" is not a valid IP address or CIDR`);
    if (!/^[A-Za-z0-9.*?_-]+$/.test(host)) fail(`"${host}" is not a host name (letters, digits, ".", "-", globs * and ?)`);
    return Object.freeze({ kind: 'host', host: host === '*' ? null : compileGlobs([host], true), port, text: s });
  }
  const max = family === 4 ? 32 : 128;
  const prefixText = slash < 0 ? String(max) : host.slice(slash + 1);
  const prefix = /^\d{1,3}$/.test(prefixText) ? Number(prefixText) : NaN;
  if (!(prefix >= 0 && prefix <= max)) fail(`prefix "/${prefixText}" must be 0..${max}`);
  const words = new Uint16Array(8);
  if (!parseIpWords(addr, words)) fail(`"${addr}" is not a valid IP address`);
  return Object.freeze({ kind: 'cidr', words, prefix: family === 4 ? 96 + prefix : prefix, port, text: s });
}

/** ' (did you mean "x"?)' for a near miss (edit distance 2 or less), else ''. */
function suggest(word: string, known: readonly string[]): string {
  let best: string | undefined;
  let bestD = 3;
  for (const k of known) {
    const d = editDistance(word.toLowerCase(), k.toLowerCase());
    if (d < bestD) { bestD = d; best = k; }
  }
  return best !== undefined && best !== word ? ` (did you mean "${best}"?)` : '';
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length]!;
}

type Located = { value: string; node: YamlNode };

class Reader {
  constructor(readonly file: string, readonly text: string, readonly lines: LineCounter, readonly doc: Document) {}

  line(node: unknown): number {
    const n = node as { range?: [number, number, number]; key?: { range?: [number, number, number] } } | null | undefined;
    const offset = n?.range?.[0] ?? n?.key?.range?.[0];
    return offset === undefined ? 0 : this.lines.linePos(offset).line;
  }

  failAt(line: number, message: string): never {
    throw new PolicyError(this.file, line, message);
  }

  fail(node: unknown, message: string): never {
    throw new PolicyError(this.file, this.line(node), message);
  }

  /** A value that begins with an unquoted `*` is a YAML alias: the commonest mistake with globs. */
  starHint(offset: number | undefined): string {
    if (offset === undefined) return '';
    const lineStart = this.text.lastIndexOf('\n', offset - 1) + 1;
    const lineEnd = this.text.indexOf('\n', offset);
    const line = this.text.slice(lineStart, lineEnd < 0 ? undefined : lineEnd);
    return /(?:^|[\s:[,{-])\*/.test(line.replace(/"[^"]*"|'[^']*'/g, '""'))
      ? ' (a value that starts with * must be quoted, e.g. "*email*" or "*:5432": unquoted, YAML reads * as an alias)'
      : '';
  }

  deref(node: YamlNode | null | undefined): YamlNode | null | undefined {
    if (!isAlias(node)) return node;
    const target = node.resolve(this.doc) as YamlNode | undefined;
    if (target === undefined) this.fail(node, `unknown alias *${node.source}${this.starHint(node.range?.[0])}`);
    return target;
  }

  describe(node: unknown): string {
    if (node === null || node === undefined) return 'nothing';
    if (isMap(node)) return 'a mapping';
    if (isSeq(node)) return 'a list';
    if (isPair(node)) return 'a key: value pair';
    if (isScalar(node)) {
      const v = node.value;
      if (v === null) return 'nothing';
      if (typeof v === 'string') return `"${v}"`;
      return `${typeof v} ${String(v)}`;
    }
    return 'something else';
  }

  /** A mapping with string keys among `known`; unknown keys are errors. */
  mapping(node: YamlNode | null | undefined, what: string, known: readonly string[]): Map<string, { key: YamlNode; value: YamlNode | null }> {
    const n = this.deref(node);
    if (!isMap(n)) this.fail(node, `${what} must be a mapping of ${known.join(', ')}, got ${this.describe(n)}`);
    const out = new Map<string, { key: YamlNode; value: YamlNode | null }>();
    for (const pair of n.items) {
      const key = pair.key as YamlNode;
      const name = isScalar(key) ? String(key.value) : '';
      if (!known.includes(name)) {
        const shown = isScalar(key) ? `"${name}"` : this.describe(key);
        this.fail(key ?? n, `unknown key ${shown} in ${what}${suggest(name, known)}; expected ${known.join(', ')}${this.starHint(this.offset(key))}`);
      }
      out.set(name, { key, value: (pair.value ?? null) as YamlNode | null });
    }
    return out;
  }

  string(node: YamlNode | null | undefined, what: string): string {
    const n = this.deref(node);
    if (!isScalar(n) || typeof n.value !== 'string') {
      const quote = isScalar(n) && (typeof n.value === 'number' || typeof n.value === 'boolean') ? ' (quote it to make it text)' : '';
      this.fail(node, `${what} must be a string, got ${this.describe(n)}${quote}${this.starHint(this.offset(node))}`);
    }
    if (n.value.trim() === '') this.fail(node, `${what} is empty`);
    return n.value;
  }

  /** One string or a non-empty list of strings (any-of). */
  strings(node: YamlNode | null | undefined, what: string): Located[] {
    const n = this.deref(node);
    if (isSeq(n)) {
      if (n.items.length === 0) this.fail(n, `${what} is an empty list, which matches nothing; give at least one value or leave ${what} out`);
      return (n.items as YamlNode[]).map((item) => ({ value: this.string(item, `each ${what} value`), node: item }));
    }
    if (isScalar(n) && typeof n.value === 'string') return [{ value: this.string(n, what), node: n }];
    const quote = isScalar(n) && (typeof n.value === 'number' || typeof n.value === 'boolean') ? ' (quote it to make it text)' : '';
    return this.fail(node, `${what} must be a string or a list of strings, got ${this.describe(n)}${quote}${this.starHint(this.offset(node))}`);
  }

  offset(node: unknown): number | undefined {
    const n = node as { range?: [number, number, number]; key?: { range?: [number, number, number] } } | null | undefined;
    return n?.range?.[0] ?? n?.key?.range?.[0];
  }
}
