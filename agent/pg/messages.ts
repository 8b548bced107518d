// Decoders and encoders for the PostgreSQL protocol 3.x messages the handler reads or writes.
//
// Decoders take a frame body (Frame.body from frames.ts: the bytes after the length field) and return a
// value or a PgProtocolError; they never throw on bad input. Every read is bounds-checked, every C string
// must end with a NUL inside the body, counts are checked against the bytes that remain before anything
// is allocated for them, and trailing bytes are an error, as in the server's pq_getmsgend(): a proxy
// that read a message differently from the server would audit one statement and let another run.
// Byte values (DataRow columns, Bind parameters, SASL data) are subarrays of the body, never copies.
//
// Encoders build one exactly-sized Buffer per message (type byte, length, body). Strings that go into
// C-string fields of statements or names must not contain NUL: that is a bug in the caller and throws a
// TypeError; in error and notice texts (which may quote anything) NUL is replaced by U+FFFD instead.
//
// pg-protocol (the well-kept library) covers the client side only: it serializes frontend messages and
// parses backend ones, and neither validates strictly nor decodes frontend messages, which a proxy must.
import { PgProtocolError } from './frames.js';

// ---------------------------------------------------------------------------------------------------
// Reading helpers (no allocation; -1 / undefined signal failure to the caller, which builds the error)

/** Index of the NUL that ends the C string starting at pos, or -1 if there is none within the body. */
function cstrEnd(buf: Buffer, pos: number): number {
  return pos < buf.length ? buf.indexOf(0, pos) : -1;
}

function bad(what: string, detail: string): PgProtocolError {
  return new PgProtocolError('malformed', `malformed ${what} message: ${detail}`);
}

function trailing(what: string, buf: Buffer, pos: number): PgProtocolError | undefined {
  return pos === buf.length ? undefined : bad(what, `${buf.length - pos} unexpected byte(s) at the end`);
}

/** Reads a C string at pos; returns [string, next pos] or an error naming the field. */
function readCstr(buf: Buffer, pos: number, what: string, field: string): [string, number] | PgProtocolError {
  const end = cstrEnd(buf, pos);
  if (end < 0) return bad(what, `${field} is not NUL-terminated within the message`);
  return [buf.toString('utf8', pos, end), end + 1];
}

function need(buf: Buffer, pos: number, n: number): boolean {
  return pos + n <= buf.length;
}

// ---------------------------------------------------------------------------------------------------
// Frontend messages

export type StartupPacket =
  | { kind: 'startup'; code: number; major: number; minor: number; params: Map<string, string> }
  | { kind: 'ssl' }
  | { kind: 'gssenc' }
  | { kind: 'cancel'; pid: number; key: Buffer };

/**
 * A startup-phase packet: body = everything after the length (int32 code first). StartupMessage
 * parameters must be name/value C-string pairs ending with an empty name, names non-empty and unique
 * (the server would take the last of two "user" values; an auditor must not have to guess which).
 */
export function decodeStartupPacket(body: Buffer): StartupPacket | PgProtocolError {
  const what = 'startup';
  if (body.length < 4) return bad(what, 'shorter than its request code');
  const code = body.readInt32BE(0);
  if (code === 80877103) return body.length === 4 ? { kind: 'ssl' } : bad('SSLRequest', 'unexpected bytes after the code');
  if (code === 80877104) return body.length === 4 ? { kind: 'gssenc' } : bad('GSSENCRequest', 'unexpected bytes after the code');
  if (code === 80877102) {
    const keyLen = body.length - 8;
    if (keyLen < 0) return bad('CancelRequest', 'missing the process id');
    if (keyLen < 4 || keyLen > 256) return bad('CancelRequest', `secret key of ${keyLen} bytes (must be 4 to 256)`);
    return { kind: 'cancel', pid: body.readInt32BE(4), key: body.subarray(8) };
  }
  const major = code >>> 16;
  const minor = code & 0xffff;
  if (major !== 3) return bad(what, `unsupported protocol ${major}.${minor}`);
  const params = new Map<string, string>();
  let pos = 4;
  for (;;) {
    if (pos >= body.length) return bad(what, 'parameter list does not end with a NUL terminator');
    if (body[pos] === 0) {
      pos++;
      break;
    }
    const name = readCstr(body, pos, what, 'a parameter name');
    if (name instanceof PgProtocolError) return name;
    const value = readCstr(body, name[1], what, `the value of parameter "${name[0]}"`);
    if (value instanceof PgProtocolError) return value;
    if (params.has(name[0])) return bad(what, `parameter "${name[0]}" appears twice`);
    params.set(name[0], value[0]);
    pos = value[1];
  }
  const t = trailing(what, body, pos);
  return t ?? { kind: 'startup', code, major, minor, params };
}

/** A lone C string filling the whole body (Query, PasswordMessage, CopyFail). */
function soleCstr(body: Buffer, what: string, field: string): string | PgProtocolError {
  const end = cstrEnd(body, 0);
  if (end < 0) return bad(what, `${field} is not NUL-terminated within the message`);
  if (end !== body.length - 1) return bad(what, `${body.length - 1 - end} unexpected byte(s) after the ${field}'s NUL`);
  return body.toString('utf8', 0, end);
}

export interface QueryMessage { sql: string }

export function decodeQuery(body: Buffer): QueryMessage | PgProtocolError {
  const sql = soleCstr(body, 'Query', 'query string');
  return typeof sql === 'string' ? { sql } : sql;
}

export interface ParseMessage { name: string; sql: string; paramTypes: number[] }

export function decodeParse(body: Buffer): ParseMessage | PgProtocolError {
  const what = 'Parse';
  const name = readCstr(body, 0, what, 'the statement name');
  if (name instanceof PgProtocolError) return name;
  const sql = readCstr(body, name[1], what, 'the query string');
  if (sql instanceof PgProtocolError) return sql;
  let pos = sql[1];
  if (!need(body, pos, 2)) return bad(what, 'missing the parameter type count');
  const n = body.readUInt16BE(pos);
  pos += 2;
  if (!need(body, pos, 4 * n)) return bad(what, `declares ${n} parameter types but only ${body.length - pos} bytes remain`);
  const paramTypes = new Array<number>(n);
  for (let i = 0; i < n; i++, pos += 4) paramTypes[i] = body.readUInt32BE(pos);
  return trailing(what, body, pos) ?? { name: name[0], sql: sql[0], paramTypes };
}

export interface BindMessage {
  portal: string;
  statement: string;
  /** 0 = text, 1 = binary; empty = all text; one entry = applies to all. */
  paramFormats: number[];
  params: (Buffer | null)[];
  resultFormats: number[];
}

function readFormats(body: Buffer, pos: number, what: string, field: string): [number[], number] | PgProtocolError {
  if (!need(body, pos, 2)) return bad(what, `missing the ${field} count`);
  const n = body.readUInt16BE(pos);
  pos += 2;
  if (!need(body, pos, 2 * n)) return bad(what, `declares ${n} ${field} but only ${body.length - pos} bytes remain`);
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++, pos += 2) {
    const f = body.readInt16BE(pos);
    if (f !== 0 && f !== 1) return bad(what, `${field} ${i + 1} is ${f} (must be 0 for text or 1 for binary)`);
    out[i] = f;
  }
  return [out, pos];
}

export function decodeBind(body: Buffer): BindMessage | PgProtocolError {
  const what = 'Bind';
  const portal = readCstr(body, 0, what, 'the portal name');
  if (portal instanceof PgProtocolError) return portal;
  const statement = readCstr(body, portal[1], what, 'the statement name');
  if (statement instanceof PgProtocolError) return statement;
  const pf = readFormats(body, statement[1], what, 'parameter format codes');
  if (pf instanceof PgProtocolError) return pf;
  let pos = pf[1];
  if (!need(body, pos, 2)) return bad(what, 'missing the parameter count');
  const n = body.readUInt16BE(pos);
  pos += 2;
  if (pf[0].length > 1 && pf[0].length !== n) return bad(what, `${pf[0].length} parameter format codes for ${n} parameters`);
  // Each parameter needs at least its 4-byte length: check before allocating n slots.
  if (!need(body, pos, 4 * n)) return bad(what, `declares ${n} parameters but only ${body.length - pos} bytes remain`);
  const params = new Array<Buffer | null>(n);
  for (let i = 0; i < n; i++) {
    if (!need(body, pos, 4)) return bad(what, `parameter ${i + 1} is cut off`);
    const len = body.readInt32BE(pos);
    pos += 4;
    if (len === -1) {
      params[i] = null;
      continue;
    }
    if (len < 0) return bad(what, `parameter ${i + 1} declares length ${len}`);
    if (!need(body, pos, len)) return bad(what, `parameter ${i + 1} declares ${len} bytes but only ${body.length - pos} remain`);
    params[i] = body.subarray(pos, pos + len);
    pos += len;
  }
  const rf = readFormats(body, pos, what, 'result format codes');
  if (rf instanceof PgProtocolError) return rf;
  return trailing(what, body, rf[1]) ?? { portal: portal[0], statement: statement[0], paramFormats: pf[0], params, resultFormats: rf[0] };
}

export interface ExecuteMessage { portal: string; maxRows: number }

export function decodeExecute(body: Buffer): ExecuteMessage | PgProtocolError {
  const what = 'Execute';
  const portal = readCstr(body, 0, what, 'the portal name');
  if (portal instanceof PgProtocolError) return portal;
  if (!need(body, portal[1], 4)) return bad(what, 'missing the row limit');
  return trailing(what, body, portal[1] + 4) ?? { portal: portal[0], maxRows: body.readInt32BE(portal[1]) };
}

/** Close and Describe: 'S' a prepared statement, 'P' a portal. */
export interface TargetMessage { kind: 'S' | 'P'; name: string }

function decodeTarget(body: Buffer, what: string): TargetMessage | PgProtocolError {
  if (body.length < 1) return bad(what, 'empty');
  const k = body[0];
  if (k !== 0x53 && k !== 0x50) return bad(what, `target kind ${k} is neither 'S' nor 'P'`);
  const name = readCstr(body, 1, what, 'the name');
  if (name instanceof PgProtocolError) return name;
  return trailing(what, body, name[1]) ?? { kind: k === 0x53 ? 'S' : 'P', name: name[0] };
}

export function decodeClose(body: Buffer): TargetMessage | PgProtocolError {
  return decodeTarget(body, 'Close');
}

export function decodeDescribe(body: Buffer): TargetMessage | PgProtocolError {
  return decodeTarget(body, 'Describe');
}

/** 'p' during cleartext or md5 authentication. */
export function decodePasswordMessage(body: Buffer): { password: string } | PgProtocolError {
  const password = soleCstr(body, 'PasswordMessage', 'password');
  return typeof password === 'string' ? { password } : password;
}

/** 'p' as the first message of a SASL exchange. data is null when the client sent length -1. */
export function decodeSASLInitialResponse(body: Buffer): { mechanism: string; data: Buffer | null } | PgProtocolError {
  const what = 'SASLInitialResponse';
  const mech = readCstr(body, 0, what, 'the mechanism name');
  if (mech instanceof PgProtocolError) return mech;
  let pos = mech[1];
  if (!need(body, pos, 4)) return bad(what, 'missing the data length');
  const len = body.readInt32BE(pos);
  pos += 4;
  if (len === -1) return trailing(what, body, pos) ?? { mechanism: mech[0], data: null };
  if (len < 0 || !need(body, pos, len)) return bad(what, `data declares ${len} bytes but ${body.length - pos} remain`);
  return trailing(what, body, pos + len) ?? { mechanism: mech[0], data: body.subarray(pos, pos + len) };
}

/** 'p' later in a SASL exchange: the whole body is the mechanism's data. */
export function decodeSASLResponse(body: Buffer): { data: Buffer } {
  return { data: body };
}

export function decodeCopyFail(body: Buffer): { message: string } | PgProtocolError {
  const message = soleCstr(body, 'CopyFail', 'error message');
  return typeof message === 'string' ? { message } : message;
}

export interface FunctionCallMessage {
  functionOid: number;
  argFormats: number[];
  args: (Buffer | null)[];
  resultFormat: number;
}

/** 'F': the legacy fast-path call of a function by OID (it bypasses SQL, so it must be audited too). */
export function decodeFunctionCall(body: Buffer): FunctionCallMessage | PgProtocolError {
  const what = 'FunctionCall';
  if (!need(body, 0, 4)) return bad(what, 'missing the function OID');
  const functionOid = body.readUInt32BE(0);
  const af = readFormats(body, 4, what, 'argument format codes');
  if (af instanceof PgProtocolError) return af;
  let pos = af[1];
  if (!need(body, pos, 2)) return bad(what, 'missing the argument count');
  const n = body.readUInt16BE(pos);
  pos += 2;
  if (!need(body, pos, 4 * n)) return bad(what, `declares ${n} arguments but only ${body.length - pos} bytes remain`);
  const args = new Array<Buffer | null>(n);
  for (let i = 0; i < n; i++) {
    if (!need(body, pos, 4)) return bad(what, `argument ${i + 1} is cut off`);
    const len = body.readInt32BE(pos);
    pos += 4;
    if (len === -1) {
      args[i] = null;
      continue;
    }
    if (len < 0 || !need(body, pos, len)) return bad(what, `argument ${i + 1} declares length ${len} but ${body.length - pos} bytes remain`);
    args[i] = body.subarray(pos, pos + len);
    pos += len;
  }
  if (!need(body, pos, 2)) return bad(what, 'missing the result format code');
  const resultFormat = body.readInt16BE(pos);
  if (resultFormat !== 0 && resultFormat !== 1) return bad(what, `result format code ${resultFormat}`);
  return trailing(what, body, pos + 2) ?? { functionOid, argFormats: af[0], args, resultFormat };
}

// ---------------------------------------------------------------------------------------------------
// Backend messages

export type Authentication =
  | { kind: 'ok'; subtype: 0 }
  | { kind: 'cleartext'; subtype: 3 }
  | { kind: 'md5'; subtype: 5; salt: Buffer }
  | { kind: 'sasl'; subtype: 10; mechanisms: string[] }
  | { kind: 'sasl-continue'; subtype: 11; data: Buffer }
  | { kind: 'sasl-final'; subtype: 12; data: Buffer }
  /** Kerberos (2), SCM (6), GSS (7), GSS continue (8), SSPI (9) and anything newer: data as sent. */
  | { kind: 'other'; subtype: number; data: Buffer };

export function decodeAuthentication(body: Buffer): Authentication | PgProtocolError {
  const what = 'Authentication';
  if (body.length < 4) return bad(what, 'missing the request code');
  const subtype = body.readInt32BE(0);
  switch (subtype) {
    case 0:
      return trailing(what, body, 4) ?? { kind: 'ok', subtype };
    case 3:
      return trailing(what, body, 4) ?? { kind: 'cleartext', subtype };
    case 5:
      if (body.length !== 8) return bad('AuthenticationMD5Password', `salt of ${body.length - 4} bytes (must be 4)`);
      return { kind: 'md5', subtype, salt: body.subarray(4, 8) };
    case 10: {
      const mechanisms: string[] = [];
      let pos = 4;
      for (;;) {
        if (pos >= body.length) return bad('AuthenticationSASL', 'mechanism list does not end with an empty name');
        if (body[pos] === 0) {
          pos++;
          break;
        }
        const m = readCstr(body, pos, 'AuthenticationSASL', 'a mechanism name');
        if (m instanceof PgProtocolError) return m;
        mechanisms.push(m[0]);
        pos = m[1];
      }
      return trailing('AuthenticationSASL', body, pos) ?? { kind: 'sasl', subtype, mechanisms };
    }
    case 11:
      return { kind: 'sasl-continue', subtype, data: body.subarray(4) };
    case 12:
      return { kind: 'sasl-final', subtype, data: body.subarray(4) };
    default:
      return { kind: 'other', subtype, data: body.subarray(4) };
  }
}

export interface FieldDescription {
  name: string;
  tableOid: number;
  columnAttr: number;
  typeOid: number;
  typeSize: number;
  typeMod: number;
  /** 0 text, 1 binary. */
  format: number;
}

export function decodeRowDescription(body: Buffer): { fields: FieldDescription[] } | PgProtocolError {
  const what = 'RowDescription';
  if (!need(body, 0, 2)) return bad(what, 'missing the field count');
  const n = body.readUInt16BE(0);
  let pos = 2;
  // Each field takes at least 19 bytes (empty name + 18 bytes of attributes).
  if (!need(body, pos, 19 * n)) return bad(what, `declares ${n} fields but only ${body.length - pos} bytes remain`);
  const fields = new Array<FieldDescription>(n);
  for (let i = 0; i < n; i++) {
    const name = readCstr(body, pos, what, `the name of field ${i + 1}`);
    if (name instanceof PgProtocolError) return name;
    pos = name[1];
    if (!need(body, pos, 18)) return bad(what, `field ${i + 1} ("${name[0]}") is cut off`);
    fields[i] = {
      name: name[0],
      tableOid: body.readUInt32BE(pos),
      columnAttr: body.readInt16BE(pos + 4),
      typeOid: body.readUInt32BE(pos + 6),
      typeSize: body.readInt16BE(pos + 10),
      typeMod: body.readInt32BE(pos + 12),
      format: body.readInt16BE(pos + 16),
    };
    pos += 18;
  }
  return trailing(what, body, pos) ?? { fields };
}

/** DataRow: values are views into the body (no copy); null for SQL NULL. */
/**
 * Walks a DataRow body, checking every column length against the body; `onValue` sees each value
 * as a view (null for NULL). The one place DataRow lengths are trusted or not.
 */
function walkDataRow(body: Buffer, onValue?: (i: number, value: Buffer | null) => void): number | PgProtocolError {
  const what = 'DataRow';
  if (!need(body, 0, 2)) return bad(what, 'missing the column count');
  const n = body.readUInt16BE(0);
  let pos = 2;
  if (!need(body, pos, 4 * n)) return bad(what, `declares ${n} columns but only ${body.length - pos} bytes remain`);
  for (let i = 0; i < n; i++) {
    if (!need(body, pos, 4)) return bad(what, `column ${i + 1} is cut off`);
    const len = body.readInt32BE(pos);
    pos += 4;
    if (len === -1) {
      onValue?.(i, null);
      continue;
    }
    if (len < 0 || !need(body, pos, len)) return bad(what, `column ${i + 1} declares length ${len} but ${body.length - pos} bytes remain`);
    onValue?.(i, body.subarray(pos, pos + len));
    pos += len;
  }
  return trailing(what, body, pos) ?? n;
}

export function decodeDataRow(body: Buffer): { values: (Buffer | null)[] } | PgProtocolError {
  const values: (Buffer | null)[] = [];
  const r = walkDataRow(body, (i, v) => (values[i] = v));
  return typeof r === 'number' ? { values } : r;
}

/** Checks a DataRow's structure without copying or collecting anything (the relay's hot path). */
export function checkDataRow(body: Buffer): PgProtocolError | undefined {
  const r = walkDataRow(body);
  return typeof r === 'number' ? undefined : r;
}

export interface CommandComplete {
  tag: string;
  /** The tag without its counts: "INSERT", "SELECT", "CREATE TABLE". */
  command: string;
  /** Rows affected or returned, for the tags that carry a count. */
  rows: number | undefined;
}

const COUNTED = /^(SELECT|UPDATE|DELETE|MERGE|MOVE|FETCH|COPY) (\d+)$/;
const INSERT_TAG = /^INSERT \d+ (\d+)$/;

export function decodeCommandComplete(body: Buffer): CommandComplete | PgProtocolError {
  const tag = soleCstr(body, 'CommandComplete', 'command tag');
  if (typeof tag !== 'string') return tag;
  const ins = INSERT_TAG.exec(tag);
  if (ins) return { tag, command: 'INSERT', rows: Number(ins[1]) };
  const m = COUNTED.exec(tag);
  if (m) return { tag, command: m[1]!, rows: Number(m[2]) };
  return { tag, command: tag, rows: undefined };
}

export interface NoticeFields {
  /** Every field by its code letter: S severity (localized), V severity, C SQLSTATE, M message, D, H, P ... */
  fields: Record<string, string>;
  severity: string;
  code: string;
  message: string;
}

/** ErrorResponse ('E') and NoticeResponse ('N'). */
export function decodeErrorResponse(body: Buffer): NoticeFields | PgProtocolError {
  const what = 'ErrorResponse/NoticeResponse';
  const fields: Record<string, string> = Object.create(null) as Record<string, string>;
  let pos = 0;
  for (;;) {
    if (pos >= body.length) return bad(what, 'field list does not end with a zero byte');
    const code = body[pos]!;
    pos++;
    if (code === 0) break;
    const v = readCstr(body, pos, what, `field ${String.fromCharCode(code)}`);
    if (v instanceof PgProtocolError) return v;
    fields[String.fromCharCode(code)] = v[0];
    pos = v[1];
  }
  const t = trailing(what, body, pos);
  if (t) return t;
  return { fields, severity: fields.V ?? fields.S ?? '', code: fields.C ?? '', message: fields.M ?? '' };
}

export function decodeParameterStatus(body: Buffer): { name: string; value: string } | PgProtocolError {
  const what = 'ParameterStatus';
  const name = readCstr(body, 0, what, 'the name');
  if (name instanceof PgProtocolError) return name;
  const value = readCstr(body, name[1], what, 'the value');
  if (value instanceof PgProtocolError) return value;
  return trailing(what, body, value[1]) ?? { name: name[0], value: value[0] };
}

/** key: 4 bytes in protocol 3.0, 4 to 256 in 3.2. Use key.toString('hex') to index cancel targets. */
export function decodeBackendKeyData(body: Buffer): { pid: number; key: Buffer } | PgProtocolError {
  if (body.length < 8 || body.length > 4 + 256) return bad('BackendKeyData', `${body.length} bytes (must be 8 to 260)`);
  return { pid: body.readInt32BE(0), key: body.subarray(4) };
}

export type TransactionStatus = 'I' | 'T' | 'E';

export function decodeReadyForQuery(body: Buffer): { status: TransactionStatus } | PgProtocolError {
  if (body.length !== 1) return bad('ReadyForQuery', `${body.length} bytes (must be 1)`);
  const s = body[0];
  if (s === 0x49) return { status: 'I' };
  if (s === 0x54) return { status: 'T' };
  if (s === 0x45) return { status: 'E' };
  return bad('ReadyForQuery', `transaction status ${s} is not 'I', 'T' or 'E'`);
}

export function decodeParameterDescription(body: Buffer): { types: number[] } | PgProtocolError {
  const what = 'ParameterDescription';
  if (!need(body, 0, 2)) return bad(what, 'missing the parameter count');
  const n = body.readUInt16BE(0);
  if (body.length !== 2 + 4 * n) return bad(what, `declares ${n} parameters in ${body.length - 2} bytes`);
  const types = new Array<number>(n);
  for (let i = 0; i < n; i++) types[i] = body.readUInt32BE(2 + 4 * i);
  return { types };
}

export function decodeNotificationResponse(body: Buffer): { pid: number; channel: string; payload: string } | PgProtocolError {
  const what = 'NotificationResponse';
  if (!need(body, 0, 4)) return bad(what, 'missing the process id');
  const channel = readCstr(body, 4, what, 'the channel');
  if (channel instanceof PgProtocolError) return channel;
  const payload = readCstr(body, channel[1], what, 'the payload');
  if (payload instanceof PgProtocolError) return payload;
  return trailing(what, body, payload[1]) ?? { pid: body.readInt32BE(0), channel: channel[0], payload: payload[0] };
}

/** CopyInResponse ('G'), CopyOutResponse ('H'), CopyBothResponse ('W'). */
export function decodeCopyResponse(body: Buffer): { format: number; columnFormats: number[] } | PgProtocolError {
  const what = 'CopyResponse';
  if (!need(body, 0, 1)) return bad(what, 'missing the format');
  const format = body[0]!;
  if (format > 1) return bad(what, `overall format ${format}`);
  const cf = readFormats(body, 1, what, 'column format codes');
  if (cf instanceof PgProtocolError) return cf;
  return trailing(what, body, cf[1]) ?? { format, columnFormats: cf[0] };
}

export function decodeNegotiateProtocolVersion(body: Buffer): { newestMinor: number; unrecognized: string[] } | PgProtocolError {
  const what = 'NegotiateProtocolVersion';
  if (!need(body, 0, 8)) return bad(what, 'shorter than 8 bytes');
  const newestMinor = body.readInt32BE(0);
  const n = body.readInt32BE(4);
  if (n < 0 || !need(body, 8, n)) return bad(what, `declares ${n} options in ${body.length - 8} bytes`);
  const unrecognized: string[] = [];
  let pos = 8;
  for (let i = 0; i < n; i++) {
    const o = readCstr(body, pos, what, `option ${i + 1}`);
    if (o instanceof PgProtocolError) return o;
    unrecognized.push(o[0]);
    pos = o[1];
  }
  return trailing(what, body, pos) ?? { newestMinor, unrecognized };
}

// ---------------------------------------------------------------------------------------------------
// Encoders

/** An exactly-sized message under construction. */
class Out {
  readonly buf: Buffer;
  pos: number;
  constructor(type: number, bodyLength: number) {
    if (type === 0) {
      this.buf = Buffer.allocUnsafe(4 + bodyLength);
      this.buf.writeInt32BE(4 + bodyLength, 0);
      this.pos = 4;
    } else {
      this.buf = Buffer.allocUnsafe(5 + bodyLength);
      this.buf[0] = type;
      this.buf.writeInt32BE(4 + bodyLength, 1);
      this.pos = 5;
    }
  }
  cstr(s: string): this {
    this.pos += this.buf.write(s, this.pos, 'utf8');
    this.buf[this.pos++] = 0;
    return this;
  }
  i8(v: number): this {
    this.buf[this.pos++] = v;
    return this;
  }
  i16(v: number): this {
    this.pos = this.buf.writeInt16BE(v, this.pos);
    return this;
  }
  u16(v: number): this {
    this.pos = this.buf.writeUInt16BE(v, this.pos);
    return this;
  }
  i32(v: number): this {
    this.pos = this.buf.writeInt32BE(v, this.pos);
    return this;
  }
  u32(v: number): this {
    this.pos = this.buf.writeUInt32BE(v, this.pos);
    return this;
  }
  bytes(b: Buffer): this {
    this.pos += b.copy(this.buf, this.pos);
    return this;
  }
  done(): Buffer {
    if (this.pos !== this.buf.length) throw new Error(`internal: encoded ${this.pos} of ${this.buf.length} bytes`);
    return this.buf;
  }
}

/** Byte length of s as a C string; throws on an embedded NUL (a caller bug: it would split the field). */
function cl(s: string, field: string): number {
  if (s.includes('\0')) throw new TypeError(`${field} must not contain a NUL character`);
  return Buffer.byteLength(s, 'utf8') + 1;
}

function textSafe(s: string): string {
  return s.includes('\0') ? s.replaceAll('\0', '\uFFFD') : s;
}

function checkCount(n: number, what: string): void {
  if (n > 0xffff) throw new RangeError(`${what}: ${n} is more than the protocol's 65535`);
}

const ch = (c: string): number => c.charCodeAt(0);

export type Severity = 'ERROR' | 'FATAL' | 'PANIC' | 'WARNING' | 'NOTICE' | 'DEBUG' | 'INFO' | 'LOG';

export interface ErrorFields {
  severity: Severity;
  /** SQLSTATE, five characters: "42501". */
  code: string;
  message: string;
  detail?: string;
  hint?: string;
}

function noticeLike(type: number, f: ErrorFields): Buffer {
  const parts: [number, string][] = [
    [ch('S'), f.severity], [ch('V'), f.severity], [ch('C'), f.code], [ch('M'), f.message],
  ];
  if (f.detail !== undefined) parts.push([ch('D'), f.detail]);
  if (f.hint !== undefined) parts.push([ch('H'), f.hint]);
  let len = 1;
  for (const p of parts) {
    p[1] = textSafe(p[1]);
    len += 1 + Buffer.byteLength(p[1], 'utf8') + 1;
  }
  const o = new Out(type, len);
  for (const [code, value] of parts) o.i8(code).cstr(value);
  return o.i8(0).done();
}

export function errorResponse(f: ErrorFields): Buffer {
  return noticeLike(ch('E'), f);
}

export function noticeResponse(f: ErrorFields): Buffer {
  return noticeLike(ch('N'), f);
}

export function readyForQuery(status: TransactionStatus): Buffer {
  return new Out(ch('Z'), 1).i8(ch(status)).done();
}

export function authenticationOk(): Buffer {
  return new Out(ch('R'), 4).i32(0).done();
}

export function authenticationCleartextPassword(): Buffer {
  return new Out(ch('R'), 4).i32(3).done();
}

export function authenticationMD5Password(salt: Buffer): Buffer {
  if (salt.length !== 4) throw new RangeError('an MD5 salt has 4 bytes');
  return new Out(ch('R'), 8).i32(5).bytes(salt).done();
}

export function authenticationSASL(mechanisms: string[]): Buffer {
  let len = 4 + 1;
  for (const m of mechanisms) len += cl(m, 'SASL mechanism');
  const o = new Out(ch('R'), len).i32(10);
  for (const m of mechanisms) o.cstr(m);
  return o.i8(0).done();
}

export function authenticationSASLContinue(data: Buffer): Buffer {
  return new Out(ch('R'), 4 + data.length).i32(11).bytes(data).done();
}

export function authenticationSASLFinal(data: Buffer): Buffer {
  return new Out(ch('R'), 4 + data.length).i32(12).bytes(data).done();
}

export function parameterStatus(name: string, value: string): Buffer {
  return new Out(ch('S'), cl(name, 'parameter name') + cl(value, 'parameter value')).cstr(name).cstr(value).done();
}

/** key: a 32-bit integer (protocol 3.0) or the key bytes. */
export function backendKeyData(pid: number, key: number | Buffer): Buffer {
  if (typeof key === 'number') return new Out(ch('K'), 8).i32(pid).i32(key | 0).done();
  return new Out(ch('K'), 4 + key.length).i32(pid).bytes(key).done();
}

export function commandComplete(tag: string): Buffer {
  return new Out(ch('C'), cl(tag, 'command tag')).cstr(tag).done();
}

export function emptyQueryResponse(): Buffer {
  return new Out(ch('I'), 0).done();
}

export function parseComplete(): Buffer {
  return new Out(ch('1'), 0).done();
}

export function bindComplete(): Buffer {
  return new Out(ch('2'), 0).done();
}

export function closeComplete(): Buffer {
  return new Out(ch('3'), 0).done();
}

export function noData(): Buffer {
  return new Out(ch('n'), 0).done();
}

export function rowDescription(fields: FieldDescription[]): Buffer {
  checkCount(fields.length, 'RowDescription fields');
  let len = 2;
  for (const f of fields) len += cl(f.name, 'field name') + 18;
  const o = new Out(ch('T'), len).u16(fields.length);
  for (const f of fields) {
    o.cstr(f.name).u32(f.tableOid).i16(f.columnAttr).u32(f.typeOid).i16(f.typeSize).i32(f.typeMod).i16(f.format);
  }
  return o.done();
}

/** DataRow from column values (strings are UTF-8 encoded; null is SQL NULL). */
export function dataRow(values: (Buffer | string | null)[]): Buffer {
  checkCount(values.length, 'DataRow columns');
  let len = 2;
  for (const v of values) len += 4 + (v === null ? 0 : typeof v === 'string' ? Buffer.byteLength(v, 'utf8') : v.length);
  const o = new Out(ch('D'), len).u16(values.length);
  for (const v of values) {
    if (v === null) o.i32(-1);
    else if (typeof v === 'string') {
      o.i32(Buffer.byteLength(v, 'utf8'));
      o.pos += o.buf.write(v, o.pos, 'utf8');
    } else o.i32(v.length).bytes(v);
  }
  return o.done();
}

export function query(sql: string): Buffer {
  return new Out(ch('Q'), cl(sql, 'query string')).cstr(sql).done();
}

export function parse(name: string, sql: string, paramTypes: number[] = []): Buffer {
  checkCount(paramTypes.length, 'Parse parameter types');
  const o = new Out(ch('P'), cl(name, 'statement name') + cl(sql, 'query string') + 2 + 4 * paramTypes.length);
  o.cstr(name).cstr(sql).u16(paramTypes.length);
  for (const t of paramTypes) o.u32(t);
  return o.done();
}

export interface BindOptions {
  portal?: string;
  statement?: string;
  params?: (Buffer | string | null)[];
  /** 0 text / 1 binary per parameter, or one code for all, or empty for all text. */
  paramFormats?: number[];
  resultFormats?: number[];
}

export function bind(opts: BindOptions = {}): Buffer {
  const portal = opts.portal ?? '';
  const statement = opts.statement ?? '';
  const params = opts.params ?? [];
  const pf = opts.paramFormats ?? [];
  const rf = opts.resultFormats ?? [];
  checkCount(params.length, 'Bind parameters');
  checkCount(pf.length, 'Bind parameter formats');
  checkCount(rf.length, 'Bind result formats');
  const bufs = params.map((p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : p));
  let len = cl(portal, 'portal name') + cl(statement, 'statement name') + 2 + 2 * pf.length + 2 + 2 + 2 * rf.length;
  for (const b of bufs) len += 4 + (b === null ? 0 : b.length);
  const o = new Out(ch('B'), len).cstr(portal).cstr(statement).u16(pf.length);
  for (const f of pf) o.i16(f);
  o.u16(bufs.length);
  for (const b of bufs) {
    if (b === null) o.i32(-1);
    else o.i32(b.length).bytes(b);
  }
  o.u16(rf.length);
  for (const f of rf) o.i16(f);
  return o.done();
}

export function describe(kind: 'S' | 'P', name = ''): Buffer {
  return new Out(ch('D'), 1 + cl(name, 'name')).i8(ch(kind)).cstr(name).done();
}

export function close(kind: 'S' | 'P', name = ''): Buffer {
  return new Out(ch('C'), 1 + cl(name, 'name')).i8(ch(kind)).cstr(name).done();
}

export function execute(portal = '', maxRows = 0): Buffer {
  return new Out(ch('E'), cl(portal, 'portal name') + 4).cstr(portal).i32(maxRows).done();
}

export function sync(): Buffer {
  return new Out(ch('S'), 0).done();
}

export function flush(): Buffer {
  return new Out(ch('H'), 0).done();
}

export function terminate(): Buffer {
  return new Out(ch('X'), 0).done();
}

export function copyData(data: Buffer): Buffer {
  return new Out(ch('d'), data.length).bytes(data).done();
}

export function copyDone(): Buffer {
  return new Out(ch('c'), 0).done();
}

export function copyFail(message: string): Buffer {
  const m = textSafe(message);
  return new Out(ch('f'), cl(m, 'message')).cstr(m).done();
}

/** StartupMessage; `user` is required by the server. Protocol 3.0 unless given. */
export function startupMessage(params: Record<string, string> | Map<string, string>, code = 196608): Buffer {
  const entries = params instanceof Map ? [...params] : Object.entries(params);
  let len = 4 + 1;
  for (const [k, v] of entries) {
    if (k === '') throw new TypeError('startup parameter names must not be empty');
    len += cl(k, 'startup parameter name') + cl(v, `startup parameter ${k}`);
  }
  const o = new Out(0, len).i32(code);
  for (const [k, v] of entries) o.cstr(k).cstr(v);
  return o.i8(0).done();
}

export function sslRequest(): Buffer {
  return new Out(0, 4).i32(80877103).done();
}

export function gssencRequest(): Buffer {
  return new Out(0, 4).i32(80877104).done();
}

export function cancelRequest(pid: number, key: number | Buffer): Buffer {
  if (typeof key === 'number') return new Out(0, 12).i32(80877102).i32(pid).i32(key | 0).done();
  return new Out(0, 8 + key.length).i32(80877102).i32(pid).bytes(key).done();
}

export function passwordMessage(password: string): Buffer {
  return new Out(ch('p'), cl(password, 'password')).cstr(password).done();
}

export function saslInitialResponse(mechanism: string, data: Buffer | string): Buffer {
  const d = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  return new Out(ch('p'), cl(mechanism, 'mechanism') + 4 + d.length).cstr(mechanism).i32(d.length).bytes(d).done();
}

export function saslResponse(data: Buffer | string): Buffer {
  const d = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  return new Out(ch('p'), d.length).bytes(d).done();
}

// ---------------------------------------------------------------------------------------------------
// DataRow masking

/** Copies src[from, to) to dst at w; returns the new w. Short runs by hand: Buffer.copy's call costs more. */
function copyBytes(src: Buffer, from: number, to: number, dst: Buffer, w: number): number {
  if (to - from > 48) return w + src.copy(dst, w, from, to);
  for (let i = from; i < to; i++) dst[w++] = src[i]!;
  return w;
}

/**
 * Rewrites a DataRow body (Frame.body of a 'D' message) into a complete new DataRow message in which
 * every selected, non-NULL column is replaced by maskFn(value, column). NULLs stay NULL; unselected
 * columns are copied unchanged in bulk runs; lengths are recomputed. The format (text or binary) is the
 * mask function's business: for a binary column it must return a valid binary value of the column's
 * type. One allocation for the result, plus one small array when some column is masked.
 */
export function rewriteDataRow(
  body: Buffer,
  columnsToMask: Set<number> | boolean[],
  maskFn: (value: Buffer, column: number) => Buffer,
): Buffer | PgProtocolError {
  const what = 'DataRow';
  if (body.length < 2) return bad(what, 'missing the column count');
  const n = body.readUInt16BE(0);
  const isSet = columnsToMask instanceof Set;
  let replacements: (Buffer | undefined)[] | undefined;
  let delta = 0;
  let pos = 2;
  for (let i = 0; i < n; i++) {
    if (!need(body, pos, 4)) return bad(what, `column ${i + 1} is cut off`);
    const len = body.readInt32BE(pos);
    pos += 4;
    if (len === -1) continue;
    if (len < 0 || !need(body, pos, len)) return bad(what, `column ${i + 1} declares length ${len} but ${body.length - pos} bytes remain`);
    if (isSet ? columnsToMask.has(i) : columnsToMask[i] === true) {
      const r = maskFn(body.subarray(pos, pos + len), i);
      (replacements ??= new Array<Buffer | undefined>(n))[i] = r;
      delta += r.length - len;
    }
    pos += len;
  }
  const t = trailing(what, body, pos);
  if (t) return t;
  const out = Buffer.allocUnsafe(5 + body.length + delta);
  out[0] = 0x44;
  out.writeInt32BE(4 + body.length + delta, 1);
  if (replacements === undefined) {
    body.copy(out, 5);
    return out;
  }
  // Copy runs of untouched bytes; write each replacement with its new length.
  let w = 5;
  let runStart = 0;
  pos = 2;
  for (let i = 0; i < n; i++) {
    const len = body.readInt32BE(pos);
    const r = replacements[i];
    if (r !== undefined) {
      w = copyBytes(body, runStart, pos, out, w);
      w = out.writeInt32BE(r.length, w);
      w = copyBytes(r, 0, r.length, out, w);
      pos += 4 + len;
      runStart = pos;
    } else {
      pos += 4 + (len === -1 ? 0 : len);
    }
  }
  w = copyBytes(body, runStart, body.length, out, w);
  if (w !== out.length) throw new Error(`internal: rewrote ${w} of ${out.length} bytes`);
  return out;
}
