// The policy engine: an ordered list of compiled rules, first match wins, a default for the rest.
// evaluate() runs for every statement, command and request, so everything is compiled when the policy
// is loaded (load.ts): globs and patterns are anchored RegExps, CIDRs are 16-bit words, and each rule
// carries its frozen Decision. evaluate() allocates nothing; it returns one of those Decisions.
import type { Action, Decision, MaskSpec, OperationContext, Protocol, ReviewSpec } from './types.js';

export const PROTOCOLS: readonly Protocol[] = ['postgres', 'mysql', 'ssh', 'http', 'k8s', 'tls', 'tcp'];

/** An address range, optionally limited to one port; IPv4 is held IPv4-mapped (prefix + 96). */
export interface CidrTarget {
  readonly kind: 'cidr';
  readonly words: Uint16Array;
  readonly prefix: number;
  /** 0: any port. */
  readonly port: number;
  readonly text: string;
}

/** A host name glob (case-insensitive; null: any host) with an optional port. */
export interface HostTarget {
  readonly kind: 'host';
  readonly host: RegExp | null;
  readonly port: number;
  readonly text: string;
}

export type TargetMatcher = CidrTarget | HostTarget;

/** A rule's conditions, compiled. An absent field matches anything; every present field must match. */
export interface RuleMatch {
  readonly protocols?: ReadonlySet<string>;
  readonly targets?: readonly TargetMatcher[];
  readonly provider?: RegExp;
  readonly repository?: RegExp;
  readonly workflow?: RegExp;
  readonly job?: RegExp;
  readonly actor?: RegExp;
  /** Tested against a bare branch name (GitLab, Buildkite, ... put the branch in ref). */
  readonly branch?: RegExp;
  /** The same glob behind "refs/heads/" (GitHub's GITHUB_REF). */
  readonly branchRef?: RegExp;
  readonly ref?: RegExp;
  readonly database?: RegExp;
  readonly user?: RegExp;
  readonly statement?: RegExp;
  readonly tables?: RegExp;
  readonly pattern?: RegExp;
  readonly where?: boolean;
}

export interface PolicyRule {
  readonly name: string;
  readonly description?: string;
  readonly action: Action;
  /** Line of the rule in the policy file (1-based; 0 for rules not read from a file). */
  readonly line: number;
  readonly match: RuleMatch;
  /** What evaluate() returns when this rule matches (frozen, the same object every time). */
  readonly decision: Decision;
}

export interface PolicyInit {
  rules: readonly PolicyRule[];
  defaultAction: 'allow' | 'deny';
  /** The file the policy came from, or a label like "<built-in>". */
  source: string;
  /** sha256 (hex) of the policy text; tells a reload whether anything changed. */
  digest: string;
}

export const DEFAULT_RULE = 'default';

export class Policy {
  readonly rules: readonly PolicyRule[];
  readonly source: string;
  readonly digest: string;
  readonly defaultAction: 'allow' | 'deny';
  /** Returned when no rule matches; its rule is "default". */
  readonly defaultDecision: Decision;

  constructor(init: PolicyInit) {
    this.rules = Object.freeze([...init.rules]);
    this.source = init.source;
    this.digest = init.digest;
    this.defaultAction = init.defaultAction;
    this.defaultDecision = makeDecision(
      init.defaultAction,
      DEFAULT_RULE,
      `no policy rule matched; the policy default is ${init.defaultAction}`,
    );
    Object.freeze(this);
  }

  /** The first rule whose every condition holds decides; otherwise the default does. */
  evaluate(ctx: OperationContext): Decision {
    const rules = this.rules;
    for (let i = 0; i < rules.length; i++) {
      const rule = rules[i]!;
      if (matches(rule.match, ctx)) return rule.decision;
    }
    return this.defaultDecision;
  }

  /** The rule with this name (for tooling and tests), or undefined. */
  rule(name: string): PolicyRule | undefined {
    return this.rules.find((r) => r.name === name);
  }
}

/** Allows everything, deciding as rule "default": for an agent started without --policy. */
export function defaultPolicy(): Policy {
  return new Policy({ rules: [], defaultAction: 'allow', source: '<built-in>', digest: '' });
}

/** A frozen decision (deeply: its mask and review specs too). */
export function makeDecision(action: Action, rule: string, reason: string, mask?: MaskSpec, review?: ReviewSpec): Decision {
  const d: Decision = { action, rule, reason };
  if (mask) d.mask = Object.freeze({ columns: Object.freeze([...mask.columns]) as string[], detectors: Object.freeze([...mask.detectors]) as string[] });
  if (review) d.review = Object.freeze({ ...review });
  return Object.freeze(d);
}

function matches(m: RuleMatch, ctx: OperationContext): boolean {
  if (m.protocols !== undefined && !m.protocols.has(ctx.protocol)) return false;
  const op = ctx.operation;
  if (m.statement !== undefined && !m.statement.test(op.type)) return false;
  if (m.where !== undefined && op.hasWhere !== m.where) return false;
  const job = ctx.job;
  if (m.repository !== undefined && !testOpt(m.repository, job.repository)) return false;
  if (m.branch !== undefined && !testBranch(m.branch, m.branchRef!, job.ref)) return false;
  if (m.ref !== undefined && !testOpt(m.ref, job.ref)) return false;
  if (m.workflow !== undefined && !testOpt(m.workflow, job.workflow)) return false;
  if (m.job !== undefined && !testOpt(m.job, job.job)) return false;
  if (m.actor !== undefined && !testOpt(m.actor, job.actor)) return false;
  if (m.provider !== undefined && !testOpt(m.provider, job.provider)) return false;
  if (m.database !== undefined && !testOpt(m.database, ctx.database)) return false;
  if (m.user !== undefined && !testOpt(m.user, ctx.user)) return false;
  if (m.targets !== undefined && !testTargets(m.targets, ctx.target)) return false;
  if (m.tables !== undefined && !testAny(m.tables, op.objects)) return false;
  if (m.pattern !== undefined && (op.text === undefined || !m.pattern.test(op.text))) return false;
  return true;
}

/** A field the context does not have never matches, not even "*". */
function testOpt(re: RegExp, value: string | undefined): boolean {
  return value !== undefined && re.test(value);
}

function testAny(re: RegExp, values: readonly string[] | undefined): boolean {
  if (values === undefined) return false;
  for (let i = 0; i < values.length; i++) if (re.test(values[i]!)) return true;
  return false;
}

/** refs/heads/X is branch X; any other refs/... (tags, pull requests) has no branch; a bare name is one. */
function testBranch(bare: RegExp, full: RegExp, ref: string | undefined): boolean {
  if (ref === undefined) return false;
  if (ref.startsWith('refs/')) return ref.startsWith('refs/heads/') && full.test(ref);
  return bare.test(ref);
}

function testTargets(targets: readonly TargetMatcher[], target: OperationContext['target']): boolean {
  for (let i = 0; i < targets.length; i++) {
    const t = targets[i]!;
    if (t.port !== 0 && t.port !== target.port) continue;
    if (t.kind === 'host') {
      if (t.host === null) return true;
      if (target.hostname !== undefined && t.host.test(target.hostname)) return true;
    } else if (addressWords(target.address) && inCidr(SCRATCH, t.words, t.prefix)) {
      return true;
    }
  }
  return false;
}

// The last address parsed, so several CIDR rules cost one parse. JavaScript is single-threaded and
// addressWords() is only called right before SCRATCH is read.
const SCRATCH = new Uint16Array(8);
let lastAddress: string | undefined;
let lastOk = false;

function addressWords(address: string): boolean {
  if (address !== lastAddress) {
    lastOk = parseIpWords(address, SCRATCH);
    lastAddress = address;
  }
  return lastOk;
}

function inCidr(addr: Uint16Array, net: Uint16Array, prefix: number): boolean {
  let i = 0;
  for (; prefix >= 16; prefix -= 16, i++) if (addr[i] !== net[i]) return false;
  if (prefix === 0) return true;
  const mask = (0xffff << (16 - prefix)) & 0xffff;
  return ((addr[i]! ^ net[i]!) & mask) === 0;
}

/**
 * Parses an IPv4 or IPv6 address (a "%zone" suffix is ignored) into eight 16-bit words, IPv4 as
 * IPv4-mapped (::ffff:a.b.c.d). Allocates nothing. False if it is not an address.
 */
export function parseIpWords(s: string, out: Uint16Array): boolean {
  let end = s.indexOf('%');
  if (end < 0) end = s.length;
  if (end === 0) return false;
  if (s.indexOf(':') < 0 || s.indexOf(':') >= end) {
    const v4 = parseV4(s, 0, end);
    if (v4 < 0) return false;
    out[0] = 0; out[1] = 0; out[2] = 0; out[3] = 0; out[4] = 0; out[5] = 0xffff;
    out[6] = Math.floor(v4 / 65536);
    out[7] = v4 % 65536;
    return true;
  }
  let n = 0;
  let gap = -1;
  let i = 0;
  if (s.charCodeAt(0) === 58) {
    if (s.charCodeAt(1) !== 58) return false;
    gap = 0;
    i = 2;
  }
  while (i < end) {
    const groupStart = i;
    let v = 0;
    let digits = 0;
    for (; i < end; i++) {
      const h = hexValue(s.charCodeAt(i));
      if (h < 0) break;
      v = v * 16 + h;
      digits++;
    }
    if (i < end && s.charCodeAt(i) === 46) {
      // Embedded IPv4 in the last 32 bits: ::ffff:10.0.0.1
      if (n > 6) return false;
      const v4 = parseV4(s, groupStart, end);
      if (v4 < 0) return false;
      out[n++] = Math.floor(v4 / 65536);
      out[n++] = v4 % 65536;
      i = end;
      break;
    }
    if (digits === 0 || digits > 4 || n >= 8) return false;
    out[n++] = v;
    if (i === end) break;
    if (s.charCodeAt(i) !== 58) return false;
    i++;
    if (i < end && s.charCodeAt(i) === 58) {
      if (gap >= 0) return false;
      gap = n;
      i++;
    } else if (i === end) {
      return false;
    }
  }
  if (gap < 0) return n === 8;
  if (n >= 8) return false;
  const shift = 8 - n;
  for (let k = n - 1; k >= gap; k--) out[k + shift] = out[k]!;
  for (let k = gap; k < gap + shift; k++) out[k] = 0;
  return true;
}

function hexValue(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 97 && c <= 102) return c - 87;
  if (c >= 65 && c <= 70) return c - 55;
  return -1;
}

/** Dotted quad in s[start, end) as an unsigned number, or -1. */
function parseV4(s: string, start: number, end: number): number {
  let value = 0;
  let part = 0;
  let digits = 0;
  let parts = 0;
  for (let i = start; i <= end; i++) {
    const c = i < end ? s.charCodeAt(i) : 46;
    if (c === 46) {
      if (digits === 0 || part > 255) return -1;
      value = value * 256 + part;
      parts++;
      part = 0;
      digits = 0;
    } else if (c >= 48 && c <= 57) {
      part = part * 10 + (c - 48);
      if (++digits > 3) return -1;
    } else {
      return -1;
    }
  }
  return parts === 4 ? value : -1;
}

// ---------------------------------------------------------------------------------------------
// Globs: `*` any run of characters, `?` one character, everything else literal; anchored.

export function globSource(glob: string): string {
  let out = '';
  for (const ch of glob) {
    if (ch === '*') out += '.*';
    else if (ch === '?') out += '.';
    else out += ch.replace(/[\\^$.|+()[\]{}/-]/g, '\\$&');
  }
  return out;
}

/** One anchored RegExp matching any of the globs. */
export function compileGlobs(globs: readonly string[], caseInsensitive: boolean, prefix = ''): RegExp {
  return new RegExp(`^${prefix}(?:${globs.map(globSource).join('|')})$`, caseInsensitive ? 'is' : 's');
}

// ---------------------------------------------------------------------------------------------
// Masking: which result columns a mask decision covers. Handlers call this once per result
// description (RowDescription), not per row.

interface CompiledMask {
  /** Selectors without a dot: column name globs. */
  readonly names: RegExp | null;
  /** "table.column" selectors: the table glob matches a table name with or without its schema. */
  readonly qualified: readonly { table: RegExp; column: RegExp }[];
}

const maskCache = new WeakMap<MaskSpec, CompiledMask>();

function compileMask(spec: MaskSpec): CompiledMask {
  let c = maskCache.get(spec);
  if (c) return c;
  const names: string[] = [];
  const qualified: { table: RegExp; column: RegExp }[] = [];
  for (const sel of spec.columns) {
    const dot = sel.lastIndexOf('.');
    if (dot < 0) names.push(sel);
    else {
      qualified.push({
        table: compileGlobs([sel.slice(0, dot)], true, '(?:[^.]*\\.)?'),
        column: compileGlobs([sel.slice(dot + 1)], true),
      });
    }
  }
  c = { names: names.length ? compileGlobs(names, true) : null, qualified };
  maskCache.set(spec, c);
  return c;
}

/**
 * Whether a mask decision covers a result column. `column` is the column's name; `table` the table
 * it comes from ("public.users" or "users") when the handler knows it. Column names and selectors
 * compare case-insensitively: masking more is the safe side.
 */
/** Whether the spec selects columns by name alone (no table.column selector): tables never matter. */
export function maskByNameOnly(spec: MaskSpec): boolean {
  return compileMask(spec).qualified.length === 0;
}

export function maskCoversColumn(spec: MaskSpec, column: string, table?: string): boolean {
  const c = compileMask(spec);
  if (c.names !== null && c.names.test(column)) return true;
  if (table === undefined) return false;
  for (const q of c.qualified) if (q.column.test(column) && q.table.test(table)) return true;
  return false;
}
