// SQL statement classification with the real PostgreSQL parser (libpg-query), for policy and audit.
//
// classify(sql) parses a query string and describes each statement as a policy Operation: its type
// ("SELECT", "DROP TABLE", "ALTER TABLE" ...), every relation it touches, whether an UPDATE/DELETE has a
// WHERE clause, and the statement's own text. Because it reads the parse tree, "DROP" in a comment or a
// string literal is not a DROP, and a DELETE hidden in a data-modifying CTE is still a DELETE.
//
// Statements that run as part of another are listed too, right after it, with `nested: true` and the
// enclosing statement's text, so that a policy on DELETE also sees:
//   WITH d AS (DELETE FROM t RETURNING *) SELECT ...   -- data-modifying CTE
//   EXPLAIN (ANALYZE) DELETE FROM t                    -- EXPLAIN ANALYZE executes its statement
//   PREPARE p AS DELETE FROM t                         -- runs later through EXECUTE p
//   COPY (DELETE FROM t RETURNING *) TO STDOUT, CREATE RULE ... DO DELETE ..., CREATE SCHEMA s CREATE
//   TABLE ..., CREATE FUNCTION ... BEGIN ATOMIC ... END
// EXPLAIN without an ANALYZE option executes nothing, so its statement is not listed (its relations are
// in the EXPLAIN's objects). The ANALYZE option counts when present at all, whatever its value: the value
// is a literal, and classification must not depend on literal values (see the cache below).
//
// What the parse tree cannot show: functions called by a SELECT may modify data, DO blocks and function
// bodies in other languages are opaque strings, and EXECUTE runs whatever PREPARE classified earlier.
// Policies that care deny DO, CREATE FUNCTION and the like by type.
//
// Parse errors are returned as {error}. The handler forwards such statements to the server, which then
// reports the syntax error itself: classification never blocks a statement PostgreSQL would reject
// anyway. The parser is PostgreSQL 18's; a statement that PostgreSQL 15 accepts but 18 rejects (none
// known) would pass unclassified, which the handler records in the audit event.
//
// Performance: a libpg-query call costs ~100 µs, too much at 10-15k statements/s. Results are cached by
// statement *shape* (see shapeOf) and, for prepared statements, by exact text.
import { loadModule, parseSync } from 'libpg-query';
import type { Operation } from '../policy/types.js';

export interface ClassifiedStatement extends Operation {
  type: string;
  /** Relations touched ("schema.table" when the schema is written, else "table"); frozen. */
  objects: string[];
  /** The statement's text, from its first token to its last (no trailing ';'). */
  text: string;
  /** UPDATE and DELETE only. */
  hasWhere?: boolean;
  /** Set on statements embedded in the one listed before them (see the file comment). */
  nested?: boolean;
}

/**
 * The identity of a text's shape while the cache holds it: texts of one shape get the same object.
 * A shape keeps every identifier and keyword of its texts verbatim (only literals, comments and
 * spacing differ, see shapeOf), so whatever depends on a text's names alone may be remembered
 * under it (a WeakMap key: it goes when the cache drops the shape).
 */
export type ShapeId = object;

/** Results may be shared between calls (and some are frozen): treat them as read-only. */
export type Classification = { statements: ClassifiedStatement[]; shape?: ShapeId } | { error: string };

export interface ClassifyStats {
  /** Classifications answered from a cache (shapeHits + exactHits). */
  hits: number;
  shapeHits: number;
  exactHits: number;
  /** Parsed because the shape was not cached yet. */
  misses: number;
  /** Parsed because shapeOf could not vouch for the text. */
  uncacheable: number;
  /** Parser errors returned. */
  errors: number;
  shapeEntries: number;
  exactEntries: number;
}

let loaded: Promise<void> | undefined;
let ready = false;

/** Loads the parser (WASM). Call once at startup, before classify(). */
export function loadClassifier(): Promise<void> {
  loaded ??= loadModule().then(() => {
    ready = true;
  });
  return loaded;
}

// ---------------------------------------------------------------------------------------------------
// Bounded LRU keyed by string, limited in entries and in total key length (a few huge statements must
// not pin hundreds of megabytes).

class Lru<V> {
  // Two generations instead of a strict LRU: a hit in the young map costs one lookup (no re-insertion);
  // a hit in the old map promotes the entry. When the young map is full it becomes the old one and the
  // previous old one is dropped, so entries unused for a whole generation go, and at most maxEntries
  // entries (and about maxChars characters of keys) are held.
  private young = new Map<string, V>();
  private old = new Map<string, V>();
  private youngChars = 0;
  private readonly genEntries: number;
  private readonly genChars: number;
  constructor(maxEntries: number, maxChars: number) {
    this.genEntries = Math.max(1, Math.floor(maxEntries / 2));
    this.genChars = Math.max(1, Math.floor(maxChars / 2));
  }
  get size(): number {
    return this.young.size + this.old.size;
  }
  get(k: string): V | undefined {
    const v = this.young.get(k);
    if (v !== undefined) return v;
    const o = this.old.get(k);
    if (o !== undefined) {
      this.old.delete(k);
      this.set(k, o);
    }
    return o;
  }
  set(k: string, v: V): void {
    if (this.young.size >= this.genEntries || this.youngChars + k.length > this.genChars) {
      this.old = this.young;
      this.young = new Map();
      this.youngChars = 0;
    }
    this.old.delete(k);
    if (!this.young.has(k)) this.youngChars += k.length;
    this.young.set(k, v);
  }
  clear(): void {
    this.young.clear();
    this.old.clear();
    this.youngChars = 0;
  }
}

/** Texts longer than this are parsed every time rather than cached. */
const MAX_CACHED_TEXT = 16 * 1024;

interface CachedOp {
  type: string;
  objects: string[];
  hasWhere: boolean | undefined;
  nested: boolean;
  /** Token indexes (in the shape scanner's token list) of the statement's first and last token. */
  firstTok: number;
  lastTok: number;
  /**
   * The statement runs from the text's first token to its last token that is not a ';'. It holds
   * for every text of the shape (same tokens, only literals differ), and it is the span the native
   * scanner reports (src/shape.cc PgSpan): see statementSpansText.
   */
  whole: boolean;
}

interface ShapeEntry {
  tokens: number;
  ops: CachedOp[];
}

const shapeCache = new Lru<ShapeEntry>(10_000, 16 * 1024 * 1024);
const exactCache = new Lru<Classification>(10_000, 16 * 1024 * 1024);
const stats = { shapeHits: 0, exactHits: 0, misses: 0, uncacheable: 0, errors: 0 };

export function classifyStats(): ClassifyStats {
  return {
    hits: stats.shapeHits + stats.exactHits,
    shapeHits: stats.shapeHits,
    exactHits: stats.exactHits,
    misses: stats.misses,
    uncacheable: stats.uncacheable,
    errors: stats.errors,
    shapeEntries: shapeCache.size,
    exactEntries: exactCache.size,
  };
}

/** Empties both caches and zeroes the counters (tests, policy reloads that change nothing here). */
export function resetClassifyCache(): void {
  shapeCache.clear();
  exactCache.clear();
  stats.shapeHits = stats.exactHits = stats.misses = stats.uncacheable = stats.errors = 0;
}

export interface ClassifyOptions {
  /**
   * Also remember the result under the exact text: for Parse messages, whose text (with $n parameters)
   * repeats verbatim. Texts that shapeOf cannot vouch for are always remembered by exact text.
   */
  exact?: boolean;
}

/**
 * Classifies every statement of a query string. Never throws on any input; throws only when called
 * before loadClassifier() has finished (a programming error: nothing may pass unclassified).
 */
export function classify(sql: string, opts: ClassifyOptions = {}): Classification {
  if (!ready) throw new Error('classify() called before loadClassifier() finished');
  const cacheable = sql.length <= MAX_CACHED_TEXT;
  if (cacheable) {
    const e = exactCache.get(sql);
    if (e !== undefined) {
      stats.exactHits++;
      return e;
    }
  }
  const scan = cacheable ? scanShape(sql) : undefined;
  if (scan === undefined) {
    stats.uncacheable++;
    const { result } = classifyFresh(sql, undefined);
    if ('error' in result) stats.errors++;
    if (cacheable) exactCache.set(sql, result);
    return result;
  }

  const hit = shapeCache.get(scan.shape);
  if (hit !== undefined && hit.tokens === scan.count) {
    stats.shapeHits++;
    const statements = new Array<ClassifiedStatement>(hit.ops.length);
    for (let k = 0; k < hit.ops.length; k++) {
      const op = hit.ops[k]!;
      statements[k] = toStatement(op, sql.slice(tokStart[op.firstTok], tokEnd[op.lastTok]));
    }
    if (opts.exact === true) exactCache.set(sql, freezeResult({ statements }));
    return { statements, shape: hit };
  }

  stats.misses++;
  const fresh = classifyFresh(sql, scan);
  if ('error' in fresh.result) {
    // Never cached by shape: a few grammar rules reject literal values (float(0) is an error, float(10)
    // is not), so a text of the same shape may parse, and an error lets a statement pass unclassified.
    stats.errors++;
  } else if (fresh.entry !== undefined) {
    shapeCache.set(scan.shape, fresh.entry);
  }
  if (opts.exact === true) exactCache.set(sql, fresh.result);
  // The shape goes with the first text of it too, not only with the texts that hit it later.
  return fresh.entry !== undefined && !('error' in fresh.result) ? { statements: fresh.result.statements, shape: fresh.entry } : fresh.result;
}

/** Parses and classifies, touching no cache: for tests and diagnostics. */
export function classifyUncached(sql: string): Classification {
  if (!ready) throw new Error('classifyUncached() called before loadClassifier() finished');
  return classifyFresh(sql, sql.length <= MAX_CACHED_TEXT ? scanShape(sql) : undefined).result;
}

function classifyFresh(sql: string, scan: { shape: string; count: number } | undefined): { result: Classification; entry?: ShapeEntry } {
  const r = parseAndClassify(sql);
  if (r instanceof ParseFailure) return { result: Object.freeze({ error: r.message }) };
  const entry = scan === undefined ? undefined : toShapeEntry(sql, scan.count, r);
  if (entry === undefined) {
    return { result: freezeResult({ statements: r.map((op) => toStatement(op, sliceBytes(sql, op.startByte, op.endByte))) }) };
  }
  return { result: freezeResult({ statements: entry.ops.map((op) => toStatement(op, sql.slice(tokStart[op.firstTok], tokEnd[op.lastTok]))) }), entry };
}

function toStatement(op: { type: string; objects: string[]; hasWhere: boolean | undefined; nested: boolean }, text: string): ClassifiedStatement {
  const s: ClassifiedStatement = { type: op.type, objects: op.objects, text };
  if (op.hasWhere !== undefined) s.hasWhere = op.hasWhere;
  if (op.nested) s.nested = true;
  return s;
}

function freezeResult(r: { statements: ClassifiedStatement[] }): Classification {
  for (const s of r.statements) Object.freeze(s);
  Object.freeze(r.statements);
  return Object.freeze(r);
}

function sliceBytes(sql: string, start: number, end: number): string {
  if (Buffer.byteLength(sql, 'utf8') === sql.length) return sql.slice(start, end).trim();
  return Buffer.from(sql, 'utf8').toString('utf8', start, end).trim();
}

/**
 * Whether the texts of this shape hold exactly one statement (nested ones aside) that spans the
 * text from its first token to its last one that is not a ';': then that span of any text of the
 * shape is the statement's text, with no parse.
 */
export function statementSpansText(shape: ShapeId): boolean {
  const ops = (shape as ShapeEntry).ops;
  if (!Array.isArray(ops) || ops[0]?.whole !== true) return false;
  for (let k = 1; k < ops.length; k++) if (!ops[k]!.nested) return false;
  return true;
}

/** Maps parser byte offsets to the scanner's token indexes; undefined if they do not line up. */
function toShapeEntry(sql: string, count: number, ops: RawOp[]): ShapeEntry | undefined {
  const ascii = Buffer.byteLength(sql, 'utf8') === sql.length;
  const bytes = ascii ? undefined : Buffer.from(sql, 'utf8');
  const toChar = (b: number): number => (bytes === undefined ? b : bytes.toString('utf8', 0, b).length);
  const out: CachedOp[] = [];
  let lastCode = count - 1;
  while (lastCode >= 0 && tokEnd[lastCode]! - tokStart[lastCode]! === 1 && sql.charCodeAt(tokStart[lastCode]!) === 0x3b) lastCode--;
  for (const op of ops) {
    const s = toChar(op.startByte);
    const e = toChar(op.endByte);
    let first = -1;
    let last = -1;
    for (let i = 0; i < count; i++) {
      if (first < 0 && tokStart[i]! >= s) first = i;
      if (tokEnd[i]! <= e && tokStart[i]! >= s) last = i;
      if (tokStart[i]! >= e) break;
    }
    if (first < 0 || last < first) return undefined;
    out.push({ type: op.type, objects: op.objects, hasWhere: op.hasWhere, nested: op.nested, firstTok: first, lastTok: last, whole: first === 0 && last === lastCode });
  }
  return { tokens: count, ops: out };
}

// ---------------------------------------------------------------------------------------------------
// Parsing and tree walking

class ParseFailure {
  constructor(readonly message: string) {}
}

interface RawOp {
  type: string;
  objects: string[];
  hasWhere: boolean | undefined;
  nested: boolean;
  startByte: number;
  endByte: number;
}

type Json = Record<string, unknown>;

function isObj(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function parseAndClassify(sql: string): RawOp[] | ParseFailure {
  // The parser reads a C string: it would stop at a NUL and never see what follows. The protocol
  // cannot carry a NUL inside a query, so such a text did not come from a well-formed message.
  if (sql.includes('\0')) return new ParseFailure('statement text contains a NUL character');
  if (sql === '') return []; // libpg-query refuses "", which PostgreSQL answers with EmptyQueryResponse
  let tree: unknown;
  try {
    tree = parseSync(sql);
  } catch (e) {
    return new ParseFailure(e instanceof Error ? e.message : String(e));
  }
  const stmts = isObj(tree) && Array.isArray(tree.stmts) ? tree.stmts : [];
  const total = Buffer.byteLength(sql, 'utf8');
  const ops: RawOp[] = [];
  for (const raw of stmts) {
    if (!isObj(raw) || !isObj(raw.stmt)) continue;
    const [name, node] = Object.entries(raw.stmt)[0] ?? [];
    if (name === undefined || !isObj(node)) continue;
    const start = typeof raw.stmt_location === 'number' ? raw.stmt_location : 0;
    const len = typeof raw.stmt_len === 'number' && raw.stmt_len > 0 ? raw.stmt_len : total - start;
    const nested: Described[] = [];
    const top = describe(name, node, nested, false);
    for (const d of [top, ...nested]) {
      ops.push({ ...d, startByte: start, endByte: start + len });
    }
  }
  return ops;
}

interface Described {
  type: string;
  objects: string[];
  hasWhere: boolean | undefined;
  nested: boolean;
}

/** Describes one statement node; statements embedded in it are appended to `nestedOut`. */
function describe(name: string, node: Json, nestedOut: Described[], isNested: boolean): Described {
  const objects = new Set<string>();
  for (const o of directObjects(name, node)) objects.add(o);
  const suppress = name === 'ExplainStmt' && !hasOption(node.options, 'analyze');
  const mine: Described[] = [];
  walk(node, objects, suppress ? undefined : mine);
  const d: Described = {
    type: statementType(name, node),
    objects: Object.freeze([...objects]) as string[],
    hasWhere: name === 'UpdateStmt' || name === 'DeleteStmt' ? node.whereClause !== undefined && node.whereClause !== null : undefined,
    nested: isNested,
  };
  nestedOut.push(...mine);
  return d;
}

const STMT_KEY = /^[A-Z][A-Za-z]*Stmt$/;

/** Collects relation names below v; embedded statements (other than SELECT) go to `nested`. */
function walk(v: unknown, objects: Set<string>, nested: Described[] | undefined): void {
  if (Array.isArray(v)) {
    for (const x of v) walk(x, objects, nested);
    return;
  }
  if (!isObj(v)) return;
  if (typeof v.relname === 'string' && 'relpersistence' in v) objects.add(rangeVarName(v));
  for (const k in v) {
    const child = v[k];
    if (typeof child !== 'object' || child === null) continue;
    if (nested !== undefined && k !== 'SelectStmt' && STMT_KEY.test(k) && isObj(child)) {
      const inner: Described[] = [];
      const d = describe(k, child, inner, true);
      for (const o of d.objects) objects.add(o);
      for (const n of inner) for (const o of n.objects) objects.add(o);
      nested.push(d, ...inner);
      continue;
    }
    walk(child, objects, nested);
  }
}

function rangeVarName(rv: Json): string {
  const parts: string[] = [];
  if (typeof rv.catalogname === 'string' && rv.catalogname !== '') parts.push(rv.catalogname);
  if (typeof rv.schemaname === 'string' && rv.schemaname !== '') parts.push(rv.schemaname);
  parts.push(rv.relname as string);
  return parts.join('.');
}

function hasOption(options: unknown, name: string): boolean {
  if (!Array.isArray(options)) return false;
  return options.some((o) => isObj(o) && isObj(o.DefElem) && o.DefElem.defname === name);
}

/** Strings of a List / String / TypeName / ObjectWithArgs name node. */
function nameParts(n: unknown): string[] | undefined {
  if (!isObj(n)) return undefined;
  if (isObj(n.String) && typeof n.String.sval === 'string') return [n.String.sval];
  const list = isObj(n.List) ? n.List.items : isObj(n.TypeName) ? n.TypeName.names : isObj(n.ObjectWithArgs) ? n.ObjectWithArgs.objname : undefined;
  if (!Array.isArray(list)) return undefined;
  const out: string[] = [];
  for (const it of list) {
    if (isObj(it) && isObj(it.String) && typeof it.String.sval === 'string') out.push(it.String.sval);
  }
  return out.length > 0 ? out : undefined;
}

const ON_TABLE = new Set(['OBJECT_TRIGGER', 'OBJECT_RULE', 'OBJECT_POLICY']);

/** Objects a statement names without RangeVar nodes: DROP targets, databases, roles. */
function directObjects(name: string, node: Json): string[] {
  switch (name) {
    case 'DropStmt': {
      if (!Array.isArray(node.objects)) return [];
      const onTable = ON_TABLE.has(node.removeType as string);
      const out: string[] = [];
      for (const o of node.objects) {
        const parts = nameParts(o);
        if (parts === undefined) continue;
        // DROP TRIGGER t ON s.tab: the list is [s, tab, t]; the relation is what policy cares about.
        out.push((onTable && parts.length > 1 ? parts.slice(0, -1) : parts).join('.'));
      }
      return out;
    }
    case 'DropdbStmt':
    case 'CreatedbStmt':
    case 'AlterDatabaseStmt':
    case 'AlterDatabaseSetStmt':
      return typeof node.dbname === 'string' ? [node.dbname] : [];
    case 'DropRoleStmt':
      return Array.isArray(node.roles)
        ? node.roles.flatMap((r) => (isObj(r) && isObj(r.RoleSpec) && typeof r.RoleSpec.rolename === 'string' ? [r.RoleSpec.rolename] : []))
        : [];
    default:
      return [];
  }
}

const OBJECT_WORDS: Record<string, string> = {
  MATVIEW: 'MATERIALIZED VIEW',
  FOREIGN_TABLE: 'FOREIGN TABLE',
  FOREIGN_SERVER: 'SERVER',
  FDW: 'FOREIGN DATA WRAPPER',
  TSCONFIGURATION: 'TEXT SEARCH CONFIGURATION',
  TSDICTIONARY: 'TEXT SEARCH DICTIONARY',
  TSPARSER: 'TEXT SEARCH PARSER',
  TSTEMPLATE: 'TEXT SEARCH TEMPLATE',
  OPCLASS: 'OPERATOR CLASS',
  OPFAMILY: 'OPERATOR FAMILY',
  TABCONSTRAINT: 'CONSTRAINT',
  DOMCONSTRAINT: 'CONSTRAINT',
  LARGEOBJECT: 'LARGE OBJECT',
  STATISTIC_EXT: 'STATISTICS',
  DEFACL: 'DEFAULT PRIVILEGES',
  AMOP: 'OPERATOR',
  AMPROC: 'FUNCTION',
};

/** OBJECT_FOREIGN_TABLE -> "FOREIGN TABLE". */
function objectWords(objtype: unknown, fallback: string): string {
  if (typeof objtype !== 'string' || !objtype.startsWith('OBJECT_')) return fallback;
  const k = objtype.slice(7);
  return OBJECT_WORDS[k] ?? k.replaceAll('_', ' ');
}

const TRANSACTION_WORDS: Record<string, string> = {
  TRANS_STMT_BEGIN: 'BEGIN',
  TRANS_STMT_START: 'START TRANSACTION',
  TRANS_STMT_COMMIT: 'COMMIT',
  TRANS_STMT_ROLLBACK: 'ROLLBACK',
  TRANS_STMT_SAVEPOINT: 'SAVEPOINT',
  TRANS_STMT_RELEASE: 'RELEASE',
  TRANS_STMT_ROLLBACK_TO: 'ROLLBACK',
  TRANS_STMT_PREPARE: 'PREPARE TRANSACTION',
  TRANS_STMT_COMMIT_PREPARED: 'COMMIT PREPARED',
  TRANS_STMT_ROLLBACK_PREPARED: 'ROLLBACK PREPARED',
};

// Node names whose default (camel case split) would read badly; the words follow PostgreSQL's own
// command tags where there is one.
const FIXED_TYPES: Record<string, string> = {
  InsertStmt: 'INSERT', UpdateStmt: 'UPDATE', DeleteStmt: 'DELETE', MergeStmt: 'MERGE',
  TruncateStmt: 'TRUNCATE', CopyStmt: 'COPY', ExplainStmt: 'EXPLAIN', DoStmt: 'DO', CallStmt: 'CALL',
  CreateStmt: 'CREATE TABLE', IndexStmt: 'CREATE INDEX', CreateRoleStmt: 'CREATE ROLE',
  AlterRoleStmt: 'ALTER ROLE', AlterRoleSetStmt: 'ALTER ROLE', DropRoleStmt: 'DROP ROLE',
  DropdbStmt: 'DROP DATABASE', CreatedbStmt: 'CREATE DATABASE', AlterDatabaseStmt: 'ALTER DATABASE',
  AlterDatabaseSetStmt: 'ALTER DATABASE', AlterDatabaseRefreshCollStmt: 'ALTER DATABASE',
  ViewStmt: 'CREATE VIEW', CreateSeqStmt: 'CREATE SEQUENCE', AlterSeqStmt: 'ALTER SEQUENCE',
  CreateSchemaStmt: 'CREATE SCHEMA', CreateExtensionStmt: 'CREATE EXTENSION',
  AlterExtensionStmt: 'ALTER EXTENSION', AlterExtensionContentsStmt: 'ALTER EXTENSION',
  CreateTrigStmt: 'CREATE TRIGGER', CreateEventTrigStmt: 'CREATE EVENT TRIGGER',
  AlterEventTrigStmt: 'ALTER EVENT TRIGGER', RuleStmt: 'CREATE RULE', CreatePolicyStmt: 'CREATE POLICY',
  AlterPolicyStmt: 'ALTER POLICY', LockStmt: 'LOCK TABLE', PrepareStmt: 'PREPARE', ExecuteStmt: 'EXECUTE',
  DeallocateStmt: 'DEALLOCATE', DeclareCursorStmt: 'DECLARE CURSOR', ClosePortalStmt: 'CLOSE',
  ListenStmt: 'LISTEN', UnlistenStmt: 'UNLISTEN', NotifyStmt: 'NOTIFY', CheckPointStmt: 'CHECKPOINT',
  ReindexStmt: 'REINDEX', ClusterStmt: 'CLUSTER', DiscardStmt: 'DISCARD', CommentStmt: 'COMMENT',
  CreateDomainStmt: 'CREATE DOMAIN', AlterDomainStmt: 'ALTER DOMAIN', CompositeTypeStmt: 'CREATE TYPE',
  CreateEnumStmt: 'CREATE TYPE', CreateRangeStmt: 'CREATE TYPE', AlterEnumStmt: 'ALTER TYPE',
  AlterTypeStmt: 'ALTER TYPE', CreateForeignTableStmt: 'CREATE FOREIGN TABLE',
  CreateTableSpaceStmt: 'CREATE TABLESPACE', DropTableSpaceStmt: 'DROP TABLESPACE',
  RefreshMatViewStmt: 'REFRESH MATERIALIZED VIEW', AlterSystemStmt: 'ALTER SYSTEM',
  ReassignOwnedStmt: 'REASSIGN OWNED', DropOwnedStmt: 'DROP OWNED',
  AlterDefaultPrivilegesStmt: 'ALTER DEFAULT PRIVILEGES', SecLabelStmt: 'SECURITY LABEL',
  CreateCastStmt: 'CREATE CAST', ConstraintsSetStmt: 'SET CONSTRAINTS', LoadStmt: 'LOAD',
  ImportForeignSchemaStmt: 'IMPORT FOREIGN SCHEMA', CreateStatsStmt: 'CREATE STATISTICS',
  AlterStatsStmt: 'ALTER STATISTICS', CreateUserMappingStmt: 'CREATE USER MAPPING',
  AlterUserMappingStmt: 'ALTER USER MAPPING', DropUserMappingStmt: 'DROP USER MAPPING',
  CreateFdwStmt: 'CREATE FOREIGN DATA WRAPPER', AlterFdwStmt: 'ALTER FOREIGN DATA WRAPPER',
  CreateForeignServerStmt: 'CREATE SERVER', AlterForeignServerStmt: 'ALTER SERVER',
  CreatePLangStmt: 'CREATE LANGUAGE', CreateAmStmt: 'CREATE ACCESS METHOD',
  CreateOpClassStmt: 'CREATE OPERATOR CLASS', CreateOpFamilyStmt: 'CREATE OPERATOR FAMILY',
  AlterOpFamilyStmt: 'ALTER OPERATOR FAMILY', CreateConversionStmt: 'CREATE CONVERSION',
  CreateTransformStmt: 'CREATE TRANSFORM', AlterTSDictionaryStmt: 'ALTER TEXT SEARCH DICTIONARY',
  AlterTSConfigurationStmt: 'ALTER TEXT SEARCH CONFIGURATION', VariableShowStmt: 'SHOW',
  CreatePublicationStmt: 'CREATE PUBLICATION', AlterPublicationStmt: 'ALTER PUBLICATION',
  CreateSubscriptionStmt: 'CREATE SUBSCRIPTION', AlterSubscriptionStmt: 'ALTER SUBSCRIPTION',
  DropSubscriptionStmt: 'DROP SUBSCRIPTION', AlterTableSpaceOptionsStmt: 'ALTER TABLESPACE',
  AlterTableMoveAllStmt: 'ALTER TABLE', AlterCollationStmt: 'ALTER COLLATION',
  AlterOperatorStmt: 'ALTER OPERATOR',
};

function statementType(name: string, node: Json): string {
  const fixed = FIXED_TYPES[name];
  if (fixed) return fixed;
  switch (name) {
    case 'SelectStmt':
      return node.intoClause !== undefined ? 'SELECT INTO' : 'SELECT';
    case 'DropStmt':
      return `DROP ${objectWords(node.removeType, 'OBJECT')}`;
    case 'AlterTableStmt':
      return `ALTER ${objectWords(node.objtype, 'TABLE')}`;
    case 'RenameStmt': {
      const t = node.renameType;
      const viaRelation = t === 'OBJECT_COLUMN' || t === 'OBJECT_TABCONSTRAINT' || t === 'OBJECT_ATTRIBUTE';
      return `ALTER ${objectWords(viaRelation ? node.relationType : t, 'TABLE')}`;
    }
    case 'AlterObjectSchemaStmt':
    case 'AlterOwnerStmt':
    case 'AlterObjectDependsStmt':
      return `ALTER ${objectWords(node.objectType, 'OBJECT')}`;
    case 'AlterFunctionStmt':
      return `ALTER ${objectWords(node.objtype, 'FUNCTION')}`;
    case 'CreateFunctionStmt':
      return node.is_procedure === true ? 'CREATE PROCEDURE' : 'CREATE FUNCTION';
    case 'DefineStmt':
      return `CREATE ${objectWords(node.kind, 'OBJECT')}`;
    case 'CreateTableAsStmt':
      return node.objtype === 'OBJECT_MATVIEW' ? 'CREATE MATERIALIZED VIEW' : 'CREATE TABLE AS';
    case 'GrantStmt':
    case 'GrantRoleStmt':
      return node.is_grant === true ? 'GRANT' : 'REVOKE';
    case 'TransactionStmt':
      return TRANSACTION_WORDS[typeof node.kind === 'string' ? node.kind : 'TRANS_STMT_BEGIN'] ?? 'TRANSACTION';
    case 'VariableSetStmt':
      return node.kind === 'VAR_RESET' || node.kind === 'VAR_RESET_ALL' ? 'RESET' : 'SET';
    case 'VacuumStmt':
      return node.is_vacuumcmd === true ? 'VACUUM' : 'ANALYZE';
    case 'FetchStmt':
      return node.ismove === true ? 'MOVE' : 'FETCH';
    default:
      // FooBarStmt -> "FOO BAR"
      return name.replace(/Stmt$/, '').replace(/([a-z])([A-Z])/g, '$1 $2').toUpperCase();
  }
}

// ---------------------------------------------------------------------------------------------------
// Statement shapes
//
// shapeOf(sql) maps a query string to its shape: the same text with every numeric literal and every
// simple string literal replaced by a placeholder naming its token kind, comments dropped and each run of
// whitespace/comments turned into one space. It understands a deliberately small subset of PostgreSQL's
// lexer and gives up (undefined: do not cache, always parse) on anything outside it.
//
// Why equal shapes give equal classifications. The scanner splits the text into tokens exactly where
// PostgreSQL's lexer would (or finer, for operator characters, which it copies one by one and so keeps
// verbatim together with the spaces between them): identifiers and keywords, quoted identifiers, $n
// parameters and punctuation are copied verbatim; each literal becomes a placeholder for its token kind
// (ICONST for integers that fit in 32 bits, FCONST for other numbers, SCONST for strings); a non-empty
// separator becomes exactly one space, and PostgreSQL's lexer only needs to know that *some* separator is
// there. The one place where the separator's content matters, a string continued on the next line
// ('a'<newline>'b' is one literal), makes the scanner give up. Two texts with the same shape therefore
// produce the same token sequence, token kinds included, and differ only in the values of literal
// tokens; the grammar decides the tree's structure from the token kinds alone, so both texts have the
// same statements, node types and relations. Literal values do appear in the tree, but nothing here
// reads them (type, objects, hasWhere and nesting depend on node types, names and clause presence only).
// Statement boundaries are stored as token indexes, so the cached entry gives the right text for a
// text of the same shape whose literals have other lengths. Parse errors are never cached by shape.
//
// It gives up on: E'', U&'', B'', X'', N'' and any literal glued to an identifier (typed literals such as
// date'2024-01-01'); $tag$ dollar quotes and $$; backslashes outside comments; numbers followed by a
// letter, digit separator, '.', or '$' (1e5, 0x1F, 0o7, 0b1, 1_000, 1.2.3, 1.), numbers after '.';
// control characters other than whitespace; unterminated strings, quoted identifiers and /* comments.
// Nested /* /* */ */ comments are handled as PostgreSQL does. Non-ASCII characters are allowed where
// PostgreSQL treats them as identifier characters (unquoted and quoted identifiers) and inside string
// literals and comments, whose ends are ASCII characters that cannot occur inside a UTF-16 code unit of a
// non-ASCII character.

// Token positions of the last scan, reused across calls (classify is synchronous).
let tokStart = new Int32Array(256);
let tokEnd = new Int32Array(256);

function growTokens(): void {
  const s = new Int32Array(tokStart.length * 2);
  s.set(tokStart);
  tokStart = s;
  const e = new Int32Array(tokEnd.length * 2);
  e.set(tokEnd);
  tokEnd = e;
}

const PH_INT = '\u0000i';
const PH_NUM = '\u0000f';
const PH_STR = '\u0000s';

function isIdentStart(c: number): boolean {
  return (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || c === 95 || c >= 128;
}

function isIdentChar(c: number): boolean {
  return isIdentStart(c) || (c >= 48 && c <= 57) || c === 36;
}

function isDigit(c: number): boolean {
  return c >= 48 && c <= 57;
}

function isSpace(c: number): boolean {
  return c === 32 || c === 9 || c === 10 || c === 13 || c === 12 || c === 11;
}

/** ICONST when the digits fit in a signed 32-bit integer (as PostgreSQL's lexer decides), else FCONST. */
function integerKind(sql: string, start: number, end: number): string {
  let s = start;
  while (s < end - 1 && sql.charCodeAt(s) === 48) s++;
  const n = end - s;
  if (n < 10) return PH_INT;
  if (n > 10) return PH_NUM;
  return sql.slice(s, end) <= '2147483647' ? PH_INT : PH_NUM;
}

const KIND_OTHER = 0;
const KIND_STRING = 1;

/**
 * The index just past a quoted token that opens at `open` ('...' or "..."), where a doubled quote
 * stands for itself; undefined (not cacheable) when it is unterminated, holds a control character,
 * or (for strings) a backslash, whose meaning depends on standard_conforming_strings.
 */
function skipQuoted(sql: string, open: number, quote: number, noBackslash: boolean): number | undefined {
  for (let i = open + 1; i < sql.length; ) {
    const d = sql.charCodeAt(i);
    if (d === quote) {
      if (sql.charCodeAt(i + 1) !== quote) return i + 1;
      i += 2;
      continue;
    }
    if ((noBackslash && d === 92 /* \ */) || (d < 32 && !isSpace(d))) return undefined;
    i++;
  }
  return undefined;
}

/** The shape of sql, or undefined when it is not safe to share a classification with other texts. */
export function shapeOf(sql: string): string | undefined {
  return scanShape(sql)?.shape;
}

function scanShape(sql: string): { shape: string; count: number } | undefined {
  const n = sql.length;
  let out = '';
  let count = 0;
  let pendingSpace = false;
  let lastKind = KIND_OTHER;
  let i = 0;
  while (i < n) {
    const c = sql.charCodeAt(i);
    if (isSpace(c)) {
      pendingSpace = true;
      i++;
      continue;
    }
    // Each branch below either continues (separators), gives up, or sets the token and falls through.
    let text: string;
    let kind = KIND_OTHER;
    const start = i;
    if (c === 45 /* - */ && sql.charCodeAt(i + 1) === 45) {
      // -- comment to the end of the line (or of the text)
      i += 2;
      while (i < n && sql.charCodeAt(i) !== 10 && sql.charCodeAt(i) !== 13) i++;
      pendingSpace = true;
      continue;
    } else if (c === 47 /* / */ && sql.charCodeAt(i + 1) === 42 /* * */) {
      let depth = 1;
      i += 2;
      while (i < n && depth > 0) {
        const d = sql.charCodeAt(i);
        if (d === 47 && sql.charCodeAt(i + 1) === 42) {
          depth++;
          i += 2;
        } else if (d === 42 && sql.charCodeAt(i + 1) === 47) {
          depth--;
          i += 2;
        } else i++;
      }
      if (depth > 0) return undefined; // unterminated
      pendingSpace = true;
      continue;
    } else if (c === 39 /* ' */) {
      if (lastKind === KIND_STRING) return undefined; // possible 'a'<newline>'b' continuation
      const prev = i > 0 ? sql.charCodeAt(i - 1) : 32;
      if (isIdentChar(prev) || prev === 38 /* & */) return undefined; // E'' B'' X'' N'' U&'' typed'..'
      const end = skipQuoted(sql, i, 39, true);
      if (end === undefined) return undefined;
      i = end;
      text = PH_STR;
      kind = KIND_STRING;
    } else if (c === 34 /* " */) {
      if (i > 0 && sql.charCodeAt(i - 1) === 38 /* U&" */) return undefined;
      const end = skipQuoted(sql, i, 34, false);
      if (end === undefined) return undefined;
      i = end;
      text = sql.slice(start, i);
    } else if (isIdentStart(c)) {
      i++;
      while (i < n && isIdentChar(sql.charCodeAt(i))) i++;
      const next = sql.charCodeAt(i);
      if (next === 39 /* ' */) return undefined; // E'..', B'..', typed literal
      if (next === 38 /* & */ && (sql.charCodeAt(i + 1) === 39 || sql.charCodeAt(i + 1) === 34)) return undefined;
      text = sql.slice(start, i);
    } else if (isDigit(c)) {
      if (i > 0 && sql.charCodeAt(i - 1) === 46 /* . */) return undefined; // .5 / a.1
      while (i < n && isDigit(sql.charCodeAt(i))) i++;
      if (sql.charCodeAt(i) === 46 /* . */) {
        if (!isDigit(sql.charCodeAt(i + 1))) return undefined; // 1. / 1..2
        i++;
        while (i < n && isDigit(sql.charCodeAt(i))) i++;
        text = PH_NUM;
      } else {
        text = integerKind(sql, start, i);
      }
      if (i < n) {
        const d = sql.charCodeAt(i);
        if (isIdentChar(d) || d === 46 || d === 39 || d === 34) return undefined; // 1e5 0x1 1_0 1.2.3 1'x'
      }
    } else if (c === 36 /* $ */) {
      i++;
      if (!isDigit(sql.charCodeAt(i))) return undefined; // $tag$ / $$
      while (i < n && isDigit(sql.charCodeAt(i))) i++;
      if (i < n && (isIdentChar(sql.charCodeAt(i)) || sql.charCodeAt(i) === 46)) return undefined;
      text = sql.slice(start, i);
    } else if (c === 92 /* \ */ || c < 32 || c === 127) {
      return undefined;
    } else if (c === 38 /* & */ && (sql.charCodeAt(i + 1) === 39 || sql.charCodeAt(i + 1) === 34)) {
      return undefined;
    } else {
      // Any other printable ASCII: an operator or punctuation character, one token each.
      i++;
      text = sql[start]!;
    }
    // The separator goes only between tokens.
    if (pendingSpace && count > 0) out += ' ';
    pendingSpace = false;
    out += text;
    if (count >= tokStart.length) growTokens();
    tokStart[count] = start;
    tokEnd[count] = i;
    count++;
    lastKind = kind;
  }
  return { shape: out, count };
}
