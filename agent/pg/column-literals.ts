// Values a statement writes into masked columns are redacted from its audit text, as values read
// from those columns are masked in results: a policy that masks `*token*` must not let
//   INSERT INTO deploys (ref, api_token) VALUES ('main', 'tok_7f3a9c')
// put the token into the trail in plain text just because no detector recognises its format.
//
// Which literal goes to which column is read from the real parse tree (libpg-query): INSERT's
// column list against each VALUES row, UPDATE's and ON CONFLICT DO UPDATE's SET targets. Every
// constant inside the assigned expression counts ('x', 'x'::text, lower('x'), E'..', $$..$$, 42).
// A parse costs ~100 µs, so it only runs when a cheap scan finds an identifier the mask covers.
// Not covered: INSERT without a column list (which column a value lands in is the table's
// definition, unknown here), and values a job puts on a command line (psql -c '...'): argv is
// redacted by the detectors only.
// A literal that holds a secret a detector recognises ($DEPLOY_TOKEN's value) is still hidden whole,
// but under the detector's label: that a secret went into the database is what an auditor asks.
import { parseSync } from 'libpg-query';
import { maskCoversColumn } from '../policy/policy.js';
import type { MaskSpec } from '../policy/types.js';
import type { ShapeId } from './classify.js';

/** The selectors with table.column cut to the column: for a scan that does not know tables yet. */
const anyTable = new WeakMap<MaskSpec, MaskSpec>();
function columnsOnly(spec: MaskSpec): MaskSpec {
  let s = anyTable.get(spec);
  if (!s) anyTable.set(spec, (s = { columns: spec.columns.map((c) => c.slice(c.lastIndexOf('.') + 1)), detectors: [] }));
  return s;
}

/**
 * Per spec, name -> whether columnsOnly(spec) covers it. The scan below runs on every statement of a
 * masked session and a session names the same few identifiers again and again (select, from,
 * where, its tables and columns), so the glob RegExp runs once per distinct name. Bounded: a job
 * generating names cannot grow it past CACHE_MAX (it is cleared, then refills). Keyed by the spec
 * object, which a policy reload replaces, so a stale answer cannot survive a new policy.
 */
const CACHE_MAX = 4096;
const coveredCache = new WeakMap<MaskSpec, Map<string, boolean>>();

function coveredName(spec: MaskSpec, cache: Map<string, boolean>, name: string): boolean {
  let hit = cache.get(name);
  if (hit === undefined) {
    hit = maskCoversColumn(columnsOnly(spec), name);
    if (cache.size >= CACHE_MAX) cache.clear();
    cache.set(name, hit);
  }
  return hit;
}

const A = 0x41, Z = 0x5a, a = 0x61, z = 0x7a, UNDERSCORE = 0x5f, DIGIT0 = 0x30, DIGIT9 = 0x39, DOLLAR = 0x24;
const isIdentStart = (c: number) => (c >= a && c <= z) || (c >= A && c <= Z) || c === UNDERSCORE;
const isIdentPart = (c: number) => isIdentStart(c) || (c >= DIGIT0 && c <= DIGIT9) || c === DOLLAR;

/**
 * Could the statement name a masked column at all? (No parse; false negatives are impossible.)
 *
 * Every maximal run of [A-Za-z_][A-Za-z0-9_$]* (as a global regex finds them scanning left to
 * right: in "9abc" or "$abc" the name is "abc"), lower-cased, is tested against the column selectors, and
 * so is every double-quoted identifier. One charCodeAt pass, no match objects: this runs for every
 * statement of a session under a mask rule.
 */
export function mentionsMaskedColumn(sql: string, spec: MaskSpec): boolean {
  if (!spec.columns.length) return false;
  let cache = coveredCache.get(spec);
  if (!cache) coveredCache.set(spec, (cache = new Map()));
  const n = sql.length;
  let i = 0;
  while (i < n) {
    const c = sql.charCodeAt(i);
    if (!isIdentStart(c)) {
      i++;
      continue;
    }
    const start = i;
    let upper = c >= A && c <= Z;
    for (i++; i < n; i++) {
      const d = sql.charCodeAt(i);
      if (!isIdentPart(d)) break;
      if (d >= A && d <= Z) upper = true;
    }
    // The selectors match case-insensitively; lower-casing only makes "ID" and "id" one cache entry.
    const name = upper ? sql.slice(start, i).toLowerCase() : sql.slice(start, i);
    if (coveredName(spec, cache, name)) return true;
  }
  // Quoted identifiers: "Api_Token". Rare, so the regex (with its exact backtracking on runs of
  // quotes) only runs when there is a quote at all.
  if (sql.indexOf('"') >= 0) {
    for (const m of sql.matchAll(QUOTED)) if (coveredName(spec, cache, m[1]!.replace(/""/g, '"'))) return true;
  }
  return false;
}

const QUOTED = /"((?:[^"]|"")+)"/g;

const shapeMentions = new WeakMap<MaskSpec, WeakMap<ShapeId, boolean>>();

/**
 * mentionsMaskedColumn of a whole query string, remembered per shape (`shape` must be that of
 * `sql`, from classify). A shape holds its texts' identifiers verbatim; texts of one shape differ
 * only in literals and comments, where the scan can only find names by accident. So "no" for one
 * text is "no" for all of its shape (the names outside literals are the same and none is masked),
 * and a "yes" only sends later texts to the scan again.
 */
export function mentionsMaskedColumnCached(sql: string, spec: MaskSpec, shape: ShapeId | undefined): boolean {
  if (shape === undefined) return mentionsMaskedColumn(sql, spec);
  let known = shapeMentions.get(spec);
  if (!known) shapeMentions.set(spec, (known = new WeakMap()));
  const hit = known.get(shape);
  if (hit === false) return false;
  const mentions = mentionsMaskedColumn(sql, spec);
  if (hit === undefined) known.set(shape, mentions);
  return mentions;
}

type Node = Record<string, unknown>;

export interface MaskedWrites {
  /** The statement text with every literal assigned to a masked column redacted. */
  text: string;
  /** Bound parameters ($n, 1-based) assigned to a masked column, with the column. */
  params: ReadonlyMap<number, string>;
}

/** Shared by every statement that assigns no parameter to a masked column: most, on the hot path. */
export const NO_MASKED_PARAMS: ReadonlyMap<number, string> = new Map();

const marker = (column: string) => `[REDACTED:column:${column.replace(/[^A-Za-z0-9_.$-]/g, '_')}]`;

/**
 * The statement text with every literal assigned to a masked column replaced by
 * '[REDACTED:column:<name>]' (unchanged when there is none or it does not parse), and which bound
 * parameters are so assigned (their values are redacted the same way).
 */
export function maskedWrites(sql: string, spec: MaskSpec, tables: readonly string[] = [], secretLabel?: SecretLabel): MaskedWrites {
  const none = { text: sql, params: NO_MASKED_PARAMS };
  if (!mentionsMaskedColumn(sql, spec)) return none;
  let tree: { stmts?: { stmt: Node }[] };
  try {
    tree = parseSync(sql) as typeof tree;
  } catch {
    return none; // the server will reject it; the detectors still run on the text
  }
  const covered = (column: string, table: string | undefined) =>
    maskCoversColumn(spec, column) || (table !== undefined && maskCoversColumn(spec, column, table)) || tables.some((t) => maskCoversColumn(spec, column, t));
  const hits: { at: number; column: string }[] = [];
  const params = new Map<number, string>();
  const assign = (column: string, table: string | undefined, value: unknown) => {
    if (!covered(column, table)) return;
    const found = constants(value);
    for (const at of found.literals) hits.push({ at, column });
    for (const n of found.params) params.set(n, column);
  };
  for (const { stmt } of tree.stmts ?? []) visit(stmt, assign);
  return { text: hits.length ? rewrite(sql, hits, secretLabel) : sql, params: params.size ? params : NO_MASKED_PARAMS };
}

/** The detectors' label(s) for a secret inside a literal ('env:DEPLOY_TOKEN'), or undefined. */
export type SecretLabel = (literal: string) => string | undefined;

export function redactColumnLiterals(sql: string, spec: MaskSpec, tables: readonly string[] = [], secretLabel?: SecretLabel): string {
  return maskedWrites(sql, spec, tables, secretLabel).text;
}

/** A bound value for a masked column, as the audit event shows it. */
export function redactedParam(column: string): string {
  return marker(column);
}

function rewrite(sql: string, hits: { at: number; column: string }[], secretLabel?: SecretLabel): string {
  const bytes = Buffer.from(sql, 'utf8');
  const parts: Buffer[] = [];
  let pos = 0;
  for (const h of hits.sort((a, b) => a.at - b.at)) {
    if (h.at < pos) continue;
    const end = literalEnd(bytes, h.at);
    if (end <= h.at) continue;
    const label = secretLabel?.(bytes.subarray(h.at, end).toString('utf8'));
    parts.push(bytes.subarray(pos, h.at), Buffer.from(`'${label ? `[REDACTED:${label}]` : marker(h.column)}'`));
    pos = end;
  }
  parts.push(bytes.subarray(pos));
  return Buffer.concat(parts).toString('utf8');
}

/** Finds INSERT/UPDATE assignments anywhere (CTEs, nested statements) and reports them. */
function visit(node: unknown, assign: (column: string, table: string | undefined, value: unknown) => void): void {
  if (Array.isArray(node)) {
    for (const n of node) visit(n, assign);
    return;
  }
  if (!node || typeof node !== 'object') return;
  const n = node as Node;
  const ins = n.InsertStmt as Node | undefined;
  if (ins) {
    const table = (ins.relation as Node | undefined)?.relname as string | undefined;
    const cols = ((ins.cols as Node[] | undefined) ?? []).map((c) => ((c.ResTarget as Node).name as string) ?? '');
    const rows = (((ins.selectStmt as Node | undefined)?.SelectStmt as Node | undefined)?.valuesLists as Node[] | undefined) ?? [];
    for (const row of rows) {
      const items = ((row.List as Node | undefined)?.items as unknown[]) ?? [];
      items.forEach((v, i) => cols[i] && assign(cols[i]!, table, v));
    }
    const conflict = ins.onConflictClause as Node | undefined;
    for (const t of (conflict?.targetList as Node[] | undefined) ?? []) targets(t, table, assign);
  }
  const upd = n.UpdateStmt as Node | undefined;
  if (upd) {
    const table = (upd.relation as Node | undefined)?.relname as string | undefined;
    for (const t of (upd.targetList as Node[] | undefined) ?? []) targets(t, table, assign);
  }
  for (const v of Object.values(n)) visit(v, assign);
}

function targets(t: Node, table: string | undefined, assign: (column: string, table: string | undefined, value: unknown) => void): void {
  const rt = t.ResTarget as Node | undefined;
  if (rt?.name) assign(rt.name as string, table, rt.val);
}

/** Byte offsets of every constant in an expression, and the numbers of its $n parameters. */
function constants(node: unknown, out = { literals: [] as number[], params: [] as number[] }): typeof out {
  if (Array.isArray(node)) for (const n of node) constants(n, out);
  else if (node && typeof node === 'object') {
    const c = (node as Node).A_Const as Node | undefined;
    if (c && typeof c.location === 'number' && !c.isnull) out.literals.push(c.location);
    const p = (node as Node).ParamRef as Node | undefined;
    if (p && typeof p.number === 'number') out.params.push(p.number);
    for (const v of Object.values(node as Node)) constants(v, out);
  }
  return out;
}

/**
 * End (exclusive byte offset) of the literal starting at `at`: '...' with '' (and with E'' also
 * backslash) escapes, E/N/B/X/U& prefixes, $tag$...$tag$, or a number. 0 if it is none of these.
 */
function literalEnd(b: Buffer, at: number): number {
  let i = at;
  const ch = (k: number) => (k < b.length ? String.fromCharCode(b[k]!) : '');
  let backslash = false;
  if (ch(i) === '-') i++;
  if (/[0-9.]/.test(ch(i))) {
    while (/[0-9A-Za-z._]/.test(ch(i)) || ((ch(i) === '+' || ch(i) === '-') && /[eE]/.test(ch(i - 1)))) i++;
    return i;
  }
  if (/[eE]/.test(ch(i)) && ch(i + 1) === "'") { backslash = true; i++; }
  else if (/[nNbBxX]/.test(ch(i)) && ch(i + 1) === "'") i++;
  else if (/[uU]/.test(ch(i)) && ch(i + 1) === '&' && ch(i + 2) === "'") i += 2;
  if (ch(i) === "'") {
    for (i++; i < b.length; i++) {
      if (backslash && ch(i) === '\\') { i++; continue; }
      if (ch(i) === "'") {
        if (ch(i + 1) === "'") { i++; continue; }
        return i + 1;
      }
    }
    return 0;
  }
  if (ch(i) === '$') {
    const m = /^\$([A-Za-z_][A-Za-z0-9_]*)?\$/.exec(b.toString('latin1', i, Math.min(b.length, i + 70)));
    if (!m) return 0;
    const close = b.indexOf(m[0], i + m[0].length, 'latin1');
    return close < 0 ? 0 : close + m[0].length;
  }
  return 0;
}
