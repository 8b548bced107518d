// Who is on the other end of a mutual-TLS connection, and the files each side loads to make one.
//
// An agent's certificate (issued by `runguard enroll`) names the agent twice and binds its event
// signing key:
//   subject CN                 = <agentId>
//   SAN URI                    = spiffe://runguard/agent/<agentId>
//   SAN URI                    = urn:runguard:signing-key:ed25519:<base64url of the 32-byte public key>
//   extended key usage         = clientAuth
// The collector takes the agent id and the key from the verified client certificate, never from
// what the agent says in a message, so an agent cannot send events under another id or key.
//
// In @grpc/grpc-js (1.14) a server handler reads the verified client certificate with
// `call.getAuthContext().sslPeerCertificate` (a tls.PeerCertificate whose `.raw` is the DER); it is
// set only when the TLS socket is `authorized`, i.e. the chain verified against the CA. See
// peerAgentIdentity().
import { createPrivateKey, createPublicKey, X509Certificate as NodeX509, type KeyObject } from 'node:crypto';
import { statSync } from 'node:fs';
import type { PeerCertificate } from 'node:tls';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { fail, okValue, type Result } from '../merkle/result.js';
import { parseSignerKey, parseVerifierKey, type NoteSigner, type NoteVerifier } from '../merkle/checkpoint.js';
import { PkiError, readPrivate, readRequired } from './files.js';
import { parseCert, x509 } from './x509.js';

/** Agent ids: what may follow spiffe://runguard/agent/ (and name a directory). */
export const AGENT_ID_RE = /^[A-Za-z0-9._-]{1,128}$/;
export const SPIFFE_AGENT_PREFIX = 'spiffe://runguard/agent/';
export const SIGNING_KEY_URI_PREFIX = 'urn:runguard:signing-key:ed25519:';
const SIGNING_KEY_URI_FAMILY = 'urn:runguard:signing-key:';
const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

/** The files of a CA directory (`runguard ca init --dir`), which is also the collector's --tls dir. */
export const CA_FILES = {
  caKey: 'ca.key',
  caCert: 'ca.crt',
  serverKey: 'server.key',
  serverCert: 'server.crt',
  checkpointKey: 'checkpoint.key',
  checkpointPub: 'checkpoint.pub',
} as const;

/** The files of an agent's directory (`runguard enroll --out`), the agent's --tls dir. */
export const AGENT_FILES = {
  key: 'agent.key',
  cert: 'agent.crt',
  signingKey: 'signing.key',
  caCert: 'ca.crt',
  checkpointPub: 'checkpoint.pub',
} as const;

/** Checks an agent id; returns why it is not one, or null. */
export function agentIdProblem(agentId: string): string | null {
  if (!AGENT_ID_RE.test(agentId)) {
    return `agent id ${JSON.stringify(agentId)} must be 1-128 characters of A-Z a-z 0-9 . _ -`;
  }
  if (agentId === '.' || agentId === '..') return `agent id ${JSON.stringify(agentId)} is not allowed`;
  return null;
}

/** spiffe://runguard/agent/<agentId> */
export function agentUri(agentId: string): string {
  return SPIFFE_AGENT_PREFIX + agentId;
}

/** The raw 32-byte public key of an Ed25519 key (public or private). */
export function ed25519Raw(key: KeyObject): Buffer {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  if (pub.asymmetricKeyType !== 'ed25519') throw new RangeError('not an Ed25519 key');
  const der = pub.export({ format: 'der', type: 'spki' });
  return der.subarray(der.length - 32);
}

const SPKI_ED25519_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

/** An Ed25519 public KeyObject from its 32 raw bytes. */
export function ed25519FromRaw(raw: Uint8Array): KeyObject {
  if (raw.length !== 32) throw new RangeError(`Ed25519 public key has ${raw.length} bytes, expected 32`);
  return createPublicKey({ key: Buffer.concat([SPKI_ED25519_PREFIX, raw]), format: 'der', type: 'spki' });
}

/** urn:runguard:signing-key:ed25519:<base64url(raw public key)> */
export function signingKeyUri(key: KeyObject): string {
  return SIGNING_KEY_URI_PREFIX + ed25519Raw(key).toString('base64url');
}

/** What an agent certificate proves. */
export interface AgentIdentity {
  agentId: string;
  /** The agent's Ed25519 event-signing public key. */
  signingKey: KeyObject;
  /** The same key, raw 32 bytes. */
  signingKeyRaw: Buffer;
  /** SHA-256 fingerprint of the certificate, "AB:CD:...". */
  fingerprint256: string;
  serialNumber: string;
  notBefore: Date;
  notAfter: Date;
}

/** A certificate in any of the forms the callers have. */
export type CertInput = Uint8Array | string | PeerCertificate | NodeX509 | x509.X509Certificate;

function derOf(cert: CertInput): Buffer | null {
  if (typeof cert === 'string') return Buffer.from(new NodeX509(cert).raw);
  if (cert instanceof Uint8Array) return Buffer.from(cert);
  if (cert instanceof NodeX509) return cert.raw;
  if (cert instanceof x509.X509Certificate) return Buffer.from(cert.rawData);
  // tls.PeerCertificate: an empty object when the peer sent no certificate.
  const raw = (cert as Partial<PeerCertificate>).raw;
  return raw && raw.length > 0 ? Buffer.from(raw) : null;
}

function decodeBase64UrlStrict(s: string): Buffer | null {
  if (!/^[A-Za-z0-9_-]*$/.test(s)) return null;
  const b = Buffer.from(s, 'base64url');
  return b.toString('base64url') === s ? b : null;
}

export interface IdentityOptions {
  /** Also check that `ca` issued the certificate and that it is valid at `now`. (TLS already does both.) */
  ca?: CertInput;
  now?: Date;
}

/**
 * The agent id and signing key an agent certificate binds. Fails (with a reason) unless the
 * certificate has exactly one spiffe://runguard/agent/<id> URI with a valid id, exactly one
 * urn:runguard:signing-key: URI holding an Ed25519 key, a subject CN (if any) equal to the id, and
 * the clientAuth extended key usage (if it has an EKU extension).
 */
export function agentIdentityFromCert(cert: CertInput, opts: IdentityOptions = {}): Result<AgentIdentity> {
  let der: Buffer | null;
  let node: NodeX509;
  let parsed: x509.X509Certificate;
  try {
    der = derOf(cert);
    if (!der) return fail('no client certificate');
    node = new NodeX509(der);
    parsed = parseCert(der);
  } catch (err) {
    return fail(`unreadable certificate: ${(err as Error).message}`);
  }

  if (opts.ca !== undefined) {
    let ca: NodeX509;
    try {
      const caDer = derOf(opts.ca);
      if (!caDer) return fail('no CA certificate given');
      ca = new NodeX509(caDer);
    } catch (err) {
      return fail(`unreadable CA certificate: ${(err as Error).message}`);
    }
    if (!node.checkIssued(ca) || !node.verify(ca.publicKey)) return fail(`certificate was not issued by the CA "${ca.subject.replace(/\n/g, ', ')}"`);
    const now = opts.now ?? new Date();
    if (now < new Date(node.validFrom) || now > new Date(node.validTo)) {
      return fail(`certificate is not valid at ${now.toISOString()} (valid ${node.validFrom} to ${node.validTo})`);
    }
  }

  const san = parsed.getExtension(x509.SubjectAlternativeNameExtension);
  const uris = san ? san.names.items.filter((n) => n.type === 'url').map((n) => n.value) : [];
  const spiffe = uris.filter((u) => u.toLowerCase().startsWith('spiffe://'));
  const agentUris = spiffe.filter((u) => u.startsWith(SPIFFE_AGENT_PREFIX));
  if (agentUris.length === 0) return fail(`certificate has no ${SPIFFE_AGENT_PREFIX}<id> URI (it is not an agent certificate)`);
  if (spiffe.length > 1) return fail(`certificate has ${spiffe.length} SPIFFE URIs; an agent certificate has exactly one`);
  const agentId = agentUris[0]!.slice(SPIFFE_AGENT_PREFIX.length);
  const idProblem = agentIdProblem(agentId);
  if (idProblem) return fail(`certificate URI ${JSON.stringify(agentUris[0])}: ${idProblem}`);

  const cns = parsed.subjectName.getField('CN');
  if (cns.length > 1 || (cns.length === 1 && cns[0] !== agentId)) {
    return fail(`certificate subject CN ${JSON.stringify(cns.join(', '))} does not match its agent URI id ${JSON.stringify(agentId)}`);
  }

  const keyUris = uris.filter((u) => u.startsWith(SIGNING_KEY_URI_FAMILY));
  if (keyUris.length === 0) return fail(`certificate for agent "${agentId}" binds no signing key (no ${SIGNING_KEY_URI_PREFIX} URI)`);
  if (keyUris.length > 1) return fail(`certificate for agent "${agentId}" binds ${keyUris.length} signing keys; expected one`);
  if (!keyUris[0]!.startsWith(SIGNING_KEY_URI_PREFIX)) return fail(`certificate for agent "${agentId}": unsupported signing key ${JSON.stringify(keyUris[0])} (only ed25519)`);
  const raw = decodeBase64UrlStrict(keyUris[0]!.slice(SIGNING_KEY_URI_PREFIX.length));
  if (!raw || raw.length !== 32) return fail(`certificate for agent "${agentId}": signing key URI does not hold a base64url 32-byte Ed25519 key`);

  const eku = node.keyUsage; // node: the extended key usage OIDs, undefined when there is no EKU extension
  if (eku !== undefined && !eku.includes(CLIENT_AUTH)) return fail(`certificate for agent "${agentId}" is not for client authentication (no clientAuth extended key usage)`);

  let signingKey: KeyObject;
  try {
    signingKey = ed25519FromRaw(raw);
  } catch (err) {
    return fail(`certificate for agent "${agentId}": bad signing key: ${(err as Error).message}`);
  }
  return okValue({
    agentId,
    signingKey,
    signingKeyRaw: raw,
    fingerprint256: node.fingerprint256,
    serialNumber: node.serialNumber,
    notBefore: new Date(node.validFrom),
    notAfter: new Date(node.validTo),
  });
}

/** The part of a grpc-js server call that carries the TLS peer (grpc-js does not export AuthContext). */
export interface CallWithAuthContext {
  getAuthContext(): { transportSecurityType?: string; sslPeerCertificate?: PeerCertificate } | null;
}

/**
 * The agent on the other end of a gRPC call, from its verified client certificate. When the call
 * also claims an agent id (in a message or metadata), pass it: a claim that differs from the
 * certificate fails, which is how the collector refuses events sent under another agent's id.
 */
export function peerAgentIdentity(call: CallWithAuthContext, claimedAgentId?: string): Result<AgentIdentity> {
  const auth = call.getAuthContext();
  if (!auth || auth.transportSecurityType !== 'ssl') return fail('connection is not TLS');
  if (!auth.sslPeerCertificate) return fail('no verified client certificate');
  const id = agentIdentityFromCert(auth.sslPeerCertificate);
  if (!id.ok) return id;
  if (claimedAgentId !== undefined && claimedAgentId !== id.value.agentId) {
    return fail(`agent id ${JSON.stringify(claimedAgentId)} does not match the client certificate, which is for agent ${JSON.stringify(id.value.agentId)}`);
  }
  return id;
}

// ---------------------------------------------------------------------------------------------
// Loading the files
// ---------------------------------------------------------------------------------------------

/** The collector's gRPC server credentials from a CA dir: mutual TLS, client certificates required. */
export function tlsServerCredentials(tlsDir: string): grpc.ServerCredentials {
  const ca = readRequired(path.join(tlsDir, CA_FILES.caCert), 'the CA certificate from `runguard ca init`');
  const cert = readRequired(path.join(tlsDir, CA_FILES.serverCert), 'the collector certificate from `runguard ca init`');
  const key = readPrivate(path.join(tlsDir, CA_FILES.serverKey), 'the collector TLS key');
  return grpc.ServerCredentials.createSsl(ca, [{ cert_chain: cert, private_key: key }], true);
}

/** An agent's gRPC channel credentials from its enrolment dir: trusts only the collector's CA. */
export function tlsClientCredentials(tlsDir: string): grpc.ChannelCredentials {
  const ca = readRequired(path.join(tlsDir, AGENT_FILES.caCert), 'the collector CA certificate from `runguard enroll`');
  const cert = readRequired(path.join(tlsDir, AGENT_FILES.cert), 'the agent certificate from `runguard enroll`');
  const key = readPrivate(path.join(tlsDir, AGENT_FILES.key), 'the agent TLS key');
  return grpc.credentials.createSsl(ca, key, cert);
}

/** The agent's Ed25519 event-signing private key, DIR/signing.key (PKCS#8 PEM, mode 0600). */
export function loadSigningKey(dir: string): KeyObject {
  const file = path.join(dir, AGENT_FILES.signingKey);
  const pem = readPrivate(file, 'the agent signing key');
  let key: KeyObject;
  try {
    key = createPrivateKey(pem);
  } catch (err) {
    throw new PkiError(`${file}: not a PEM private key: ${(err as Error).message}`);
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new PkiError(`${file}: not an Ed25519 key (${key.asymmetricKeyType})`);
  return key;
}

/**
 * An agent's identity from its enrolment dir: the certificate's agent id and the signing key,
 * checked to be the key the certificate binds (a mismatch would get every batch rejected).
 */
export function loadAgentIdentity(dir: string): { agentId: string; signingKey: KeyObject; publicKey: KeyObject; cert: AgentIdentity } {
  const certFile = path.join(dir, AGENT_FILES.cert);
  const id = agentIdentityFromCert(readRequired(certFile, 'the agent certificate from `runguard enroll`').toString('utf8'));
  if (!id.ok) throw new PkiError(`${certFile}: ${id.reason}`);
  const signingKey = loadSigningKey(dir);
  if (!ed25519Raw(signingKey).equals(id.value.signingKeyRaw)) {
    throw new PkiError(`${path.join(dir, AGENT_FILES.signingKey)} is not the signing key ${certFile} binds; run \`runguard enroll\` again for this directory`);
  }
  return { agentId: id.value.agentId, signingKey, publicKey: id.value.signingKey, cert: id.value };
}

/** The collector's checkpoint signer, CA_DIR/checkpoint.key. */
export function loadCheckpointSigner(caDir: string): NoteSigner {
  const file = path.join(caDir, CA_FILES.checkpointKey);
  const s = parseSignerKey(readPrivate(file, 'the checkpoint signing key').toString('utf8'));
  if (!s.ok) throw new PkiError(`${file}: ${s.reason}`);
  return s.value;
}

/** A checkpoint verifier key from a file (checkpoint.pub) or a directory holding one. */
export function loadCheckpointVerifier(fileOrDir: string): NoteVerifier {
  const file = isDirectory(fileOrDir) ? path.join(fileOrDir, CA_FILES.checkpointPub) : fileOrDir;
  const v = parseVerifierKey(readRequired(file, 'a checkpoint verifier key (name+keyid+key)').toString('utf8'));
  if (!v.ok) throw new PkiError(`${file}: ${v.reason}`);
  return v.value;
}

function isDirectory(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}
