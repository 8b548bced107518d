// `runguard verify`: recomputes everything from the leaves, trusting nothing the log says about
// itself. Every leaf is hashed and checked against the tree the log serves; the whole tree is
// rebuilt and its root compared with the signed checkpoint (and with a checkpoint saved earlier);
// every agent's events must run gap-free, each naming the hash of the one before, and be covered
// by a batch signature of the agent's key. The first bad index is named with the reason.
import type { KeyObject } from 'node:crypto';
import { AuditEventType } from '../proto/index.js';
import { eventHash, verifyBatchTip } from '../proto/batch.js';
import { hashEqual, leafHash, openCheckpoint, TreeBuilder, type Checkpoint, type NoteVerifier } from './merkle/index.js';
import { agentIdentityFromCert, ed25519FromRaw } from './pki/identity.js';

export interface AgentKeys {
  agentId: string;
  signingKey: Buffer;
  /** PEM the agent presented at first contact; checked against the CA with `caCert`. */
  certificate?: string;
  batches: { lastSeq: number; signature: Buffer }[];
}

/** Where the log comes from: a store on disk, or a collector's read API. */
export interface LogSource {
  describe: string;
  checkpointNote(): Promise<string>;
  /** Leaves in index order from `from`, in chunks; a missing index is simply absent. */
  leaves(from: number, to: number): AsyncIterable<{ index: number; bytes: Buffer }>;
  /** The leaf hash the log's tree holds at `index` (what proofs are built from). */
  treeLeafHash(index: number): Promise<Uint8Array | undefined>;
  agents(): Promise<AgentKeys[]>;
  gaps(): Promise<{ agentId: string; fromSeq: number; toSeq: number; atIndex: number }[]>;
}

export interface Problem {
  index: number;  // -1: about the log as a whole
  reason: string;
}

export interface VerifyReport {
  ok: boolean;
  size: number;
  leavesChecked: number;
  agents: number;
  signaturesChecked: number;
  checkpointSigned: boolean;
  agentCertsChecked: boolean;
  problems: Problem[];
  firstProblem?: Problem;
}

export interface VerifyOptions {
  verifier?: NoteVerifier;
  /** A checkpoint note saved earlier (by an agent or an auditor): the log must extend it. */
  savedCheckpoint?: string;
  onProgress?: (done: number, total: number) => void;
  /** Stop collecting after this many problems (the first is what matters). */
  maxProblems?: number;
  /** The fleet CA (ca.crt): every agent key in the log must come from a certificate it issued. */
  caCert?: string;
}

const ZERO = Buffer.alloc(32);

interface ChainState {
  key: KeyObject;
  lastSeq: number;
  lastHash: Buffer;
  tips: Map<number, Buffer>;         // seq -> signature
  tipHashes: Map<number, Buffer>;    // seq -> event hash, for tips seen
  gapsFrom: Map<number, number>;     // first seq after a recorded gap -> gap start
  lastIndexForSeq: Map<number, number>;
}

export async function verifyLog(source: LogSource, opts: VerifyOptions = {}): Promise<VerifyReport> {
  const problems: Problem[] = [];
  const max = opts.maxProblems ?? 100;
  const report = (index: number, reason: string) => {
    if (problems.length < max) problems.push({ index, reason });
  };

  // The checkpoint: signed by the collector's key, and the size every other check runs to.
  const note = await source.checkpointNote();
  let cp: Checkpoint;
  let checkpointSigned = false;
  if (opts.verifier) {
    const opened = openCheckpoint(note, [opts.verifier]);
    if (!opened.ok) {
      return finish({ size: 0, leavesChecked: 0, agents: 0, signaturesChecked: 0, checkpointSigned: false, agentCertsChecked: false, problems: [{ index: -1, reason: `checkpoint: ${opened.reason}` }] });
    }
    cp = opened.value.checkpoint;
    checkpointSigned = true;
  } else {
    const body = note.split('\n\n')[0]!.split('\n');
    cp = { origin: body[0] ?? '', size: Number(body[1]), root: Buffer.from(body[2] ?? '', 'base64') };
  }
  let saved: Checkpoint | undefined;
  if (opts.savedCheckpoint) {
    const opened = opts.verifier ? openCheckpoint(opts.savedCheckpoint, [opts.verifier]) : undefined;
    if (opened && !opened.ok) report(-1, `the saved checkpoint does not verify: ${opened.reason}`);
    else if (opened) saved = opened.value.checkpoint;
    else report(-1, 'a saved checkpoint needs --key to be checked');
    if (saved && saved.size > cp.size) report(saved.size, `the log shrank: a checkpoint of size ${saved.size} was seen before, the log now signs size ${cp.size}`);
  }

  const chains = new Map<string, ChainState>();
  const agents = await source.agents();
  if (opts.caCert) {
    // Without this, a collector could invent an agent whose chain and signatures all hold.
    for (const a of agents) {
      const id = a.certificate ? agentIdentityFromCert(a.certificate, { ca: opts.caCert }) : { ok: false as const, reason: 'no certificate stored' };
      if (!id.ok) report(-1, `agent ${a.agentId}: its certificate does not come from the fleet CA: ${id.reason}`);
      else if (id.value.agentId !== a.agentId || !id.value.signingKeyRaw.equals(a.signingKey)) {
        report(-1, `agent ${a.agentId}: the key in the log is not the one its certificate binds`);
      }
    }
  }
  for (const a of agents) {
    chains.set(a.agentId, {
      key: ed25519FromRaw(a.signingKey), lastSeq: 0, lastHash: ZERO,
      tips: new Map(a.batches.map((b) => [b.lastSeq, b.signature])), tipHashes: new Map(), gapsFrom: new Map(), lastIndexForSeq: new Map(),
    });
  }
  for (const g of await source.gaps()) chains.get(g.agentId)?.gapsFrom.set(g.toSeq + 1, g.fromSeq);

  const tree = new TreeBuilder();
  let expected = 0;
  for await (const leaf of source.leaves(0, cp.size)) {
    if (leaf.index !== expected) {
      report(expected, leaf.index > expected ? `leaf missing: the log has no entry at index ${expected} (next present: ${leaf.index})` : `leaf ${leaf.index} out of order`);
      if (leaf.index < expected) continue;
      // Keep index positions aligned so later indices are named correctly; the root will not match.
      while (expected < leaf.index) {
        tree.append(ZERO);
        expected++;
      }
    }
    const lh = leafHash(leaf.bytes);
    const stored = await source.treeLeafHash(leaf.index);
    if (stored && !hashEqual(stored, lh)) report(leaf.index, 'leaf modified: its bytes do not hash to the leaf hash in the tree');
    tree.append(lh);
    if (saved && tree.size === saved.size && !hashEqual(tree.root(), saved.root)) {
      report(leaf.index, `inconsistent with the checkpoint saved earlier: the first ${saved.size} leaves no longer hash to its root`);
    }
    checkEvent(leaf.index, leaf.bytes, chains, report);
    expected++;
    if (opts.onProgress && expected % 65536 === 0) opts.onProgress(expected, cp.size);
  }
  if (expected < cp.size) report(expected, `log truncated: the checkpoint covers ${cp.size} leaves, the log has ${expected}`);
  if (tree.size === cp.size && !hashEqual(tree.root(), cp.root)) report(-1, `the tree of ${cp.size} leaves does not hash to the root in the signed checkpoint`);
  if (saved && saved.size === 0 && cp.size === 0 && !hashEqual(saved.root, cp.root)) report(-1, 'two empty-tree checkpoints disagree');

  // Batch signatures: each signed tip must match the event it names, and cover every event.
  let signaturesChecked = 0;
  for (const [agentId, c] of chains) {
    for (const [seq, sig] of c.tips) {
      const h = c.tipHashes.get(seq);
      if (!h) {
        if (seq <= c.lastSeq) report(c.lastIndexForSeq.get(seq) ?? -1, `agent ${agentId}: a batch signature names seq ${seq}, which is not in the log`);
        continue;
      }
      signaturesChecked++;
      if (!verifyBatchTip(c.key, agentId, seq, h, sig)) {
        report(c.lastIndexForSeq.get(seq) ?? -1, `agent ${agentId} seq ${seq}: the batch signature does not verify with the agent's key (forged or altered event)`);
      }
    }
    const covered = Math.max(0, ...[...c.tips.keys()].filter((s) => c.tipHashes.has(s)));
    // A log cut inside a signed batch leaves that batch's first events without their tip: the
    // truncation is the problem (reported at its index above), not a missing signature.
    const cutInsideBatch = expected < cp.size && [...c.tips.keys()].some((s) => s > c.lastSeq);
    if (c.lastSeq > covered && !cutInsideBatch) {
      report(c.lastIndexForSeq.get(covered + 1) ?? -1, `agent ${agentId}: events after seq ${covered} are not covered by any agent signature`);
    }
  }
  opts.onProgress?.(expected, cp.size);
  return finish({ size: cp.size, leavesChecked: expected, agents: chains.size, signaturesChecked, checkpointSigned, agentCertsChecked: !!opts.caCert, problems });

  function finish(r: Omit<VerifyReport, 'ok' | 'firstProblem'>): VerifyReport {
    const sorted = [...r.problems].sort((a, b) => (a.index < 0 ? Infinity : a.index) - (b.index < 0 ? Infinity : b.index));
    return { ...r, problems: sorted, ok: sorted.length === 0, firstProblem: sorted[0] };
  }
}

function checkEvent(index: number, bytes: Buffer, chains: Map<string, ChainState>, report: (i: number, r: string) => void): void {
  let ev: { agentId?: string; seq?: number | { toNumber(): number }; prevHash?: Uint8Array };
  try {
    ev = AuditEventType.decode(bytes) as typeof ev;
  } catch (err) {
    report(index, `not an AuditEvent: ${(err as Error).message}`);
    return;
  }
  const agentId = ev.agentId ?? '';
  const seq = typeof ev.seq === 'number' ? ev.seq : ev.seq?.toNumber() ?? 0;
  const c = chains.get(agentId);
  if (!c) {
    report(index, `event from unknown agent "${agentId}" (no enrolled key): injected`);
    return;
  }
  const hash = eventHash(bytes);
  const gapStart = c.gapsFrom.get(seq);
  if (seq !== c.lastSeq + 1) {
    if (gapStart !== undefined && gapStart === c.lastSeq + 1) {
      report(index, `agent ${agentId}: events seq ${gapStart}..${seq - 1} never reached the log (a recorded gap)`);
    } else {
      report(index, `agent ${agentId}: seq ${seq} follows seq ${c.lastSeq} (${seq <= c.lastSeq ? 'reordered or duplicated' : 'events missing'})`);
    }
  } else if (!Buffer.from(ev.prevHash ?? []).equals(c.lastSeq === 0 ? ZERO : c.lastHash)) {
    report(index, `agent ${agentId} seq ${seq}: prev_hash is not the hash of seq ${c.lastSeq} (chain broken: an event was altered, removed or inserted)`);
  }
  if (seq > c.lastSeq) {
    c.lastSeq = seq;
    c.lastHash = hash;
  }
  // Indexes only where a report may need them: signed tips and the first event after each.
  if (seq === 1 || c.tips.has(seq) || c.tips.has(seq - 1)) c.lastIndexForSeq.set(seq, index);
  if (c.tips.has(seq)) c.tipHashes.set(seq, hash);
}
