// The contract between protocol handlers and the policy engine. A handler describes one operation
// (a statement, a command, a request) in these terms; the engine answers with a decision naming the
// rule that made it. Every handler asks the same engine, so one policy file governs every protocol.
import type { JobInfo } from '../../proto/index.js';

export type Action = 'allow' | 'deny' | 'mask' | 'review';

export type Protocol = 'postgres' | 'mysql' | 'ssh' | 'http' | 'k8s' | 'tls' | 'tcp';

export interface Operation {
  /** Upper-case statement or command type: "SELECT", "DELETE", "DROP TABLE", "ALTER TABLE", "GET"... */
  type: string;
  /** Objects touched, as the protocol names them: tables ("public.users" and "users"), paths, resources. */
  objects?: string[];
  /** The operation's text for pattern rules (SQL statement, command line, method + path). */
  text?: string;
  /** DELETE/UPDATE: whether a WHERE clause is present (false = every row). */
  hasWhere?: boolean;
}

export interface OperationContext {
  protocol: Protocol;
  target: { address: string; port: number; hostname?: string };
  job: JobInfo;
  /** Database and user for SQL protocols. */
  database?: string;
  user?: string;
  operation: Operation;
}

export interface MaskSpec {
  /** Column selectors: "email" (name), "users.email" (table.column), globs like "*token*". */
  columns: string[];
  /** Detector names from agent/redact/detectors.ts whose hits in a value mask it (e.g. "email"). */
  detectors: string[];
}

export interface ReviewSpec {
  approvers?: string;       // a named group
  approvals: number;        // how many distinct approvers
  timeoutMs: number;        // then the operation is denied
}

export interface Decision {
  action: Action;
  /** Name of the rule that decided, or "default". */
  rule: string;
  /** Human text: why, e.g. the rule's description. */
  reason: string;
  mask?: MaskSpec;
  review?: ReviewSpec;
}
