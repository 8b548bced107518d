// The collector's small PKI: `runguard ca init` and `runguard enroll`.
//
// CA dir (0700), also the collector's --tls dir:
//   ca.key (0600) + ca.crt          self-signed ECDSA P-256 CA, CA:true pathlen 0, keyCertSign, 10 years
//   server.key (0600) + server.crt  the collector: serverAuth, SAN localhost 127.0.0.1 ::1 + --host, 2 years
//   checkpoint.key (0600)           Ed25519 signed-note signer key, PRIVATE+KEY+<name>+<keyid>+<base64>
//   checkpoint.pub                  its verifier key, <name>+<keyid>+<base64>, given to auditors and agents
// Agent dir (0700), the agent's --tls dir:
//   agent.key (0600) + agent.crt    clientAuth, CN=<id>, SAN URIs spiffe://runguard/agent/<id> and
//                                   urn:runguard:signing-key:ed25519:<base64url pubkey>, 1 year
//   signing.key (0600)              the agent's Ed25519 event-signing key (PKCS#8 PEM); kept on re-enrolment
//   ca.crt, checkpoint.pub          copies: to verify the collector and its checkpoints
import { createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdirSync, realpathSync, statSync, unlinkSync } from 'node:fs';
import path from 'node:path';
import { generateNoteKey, isValidKeyName, parseVerifierKey } from '../merkle/checkpoint.js';
import {
  AGENT_FILES, CA_FILES, agentIdentityFromCert, agentIdProblem, agentUri, ed25519Raw, loadSigningKey, signingKeyUri,
} from './identity.js';
import {
  createFileExclusive, DIR_MODE, exists, PkiError, PRIVATE_MODE, PUBLIC_MODE, readPrivate, readRequired, replaceFile, syncDir,
} from './files.js';
import { createCaCert, generateP256, hostSan, isP256PrivateKey, issueLeafCert, parseCert, privateKeyFromPem, type Issuer } from './x509.js';

export const DEFAULT_CA_NAME = 'runguard-collector';
export const CA_YEARS = 10;
export const SERVER_YEARS = 2;
export const AGENT_YEARS = 1;
/** Always in the collector certificate, so that agents on the same machine can connect. */
export const DEFAULT_SERVER_HOSTS = ['localhost', '127.0.0.1', '::1'] as const;

export interface CaInitOptions {
  /** Key name and log origin of the checkpoint key; also names the CA. Default "runguard-collector". */
  name?: string;
  /** More DNS names or IP addresses for the collector certificate (agents connect by one of them). */
  hosts?: string[];
  /** Issue time (tests). */
  now?: Date;
}

export interface CaInitResult {
  dir: string;
  name: string;
  /** The checkpoint verifier key, as saved in checkpoint.pub. */
  verifierKey: string;
  /** The hosts in the collector certificate. */
  hosts: string[];
  files: string[];
}

function mkdirPrivate(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: DIR_MODE });
  if (!statSync(dir).isDirectory()) throw new PkiError(`${dir} is not a directory`);
}

const pkcs8Pem = (key: KeyObject): string => key.export({ format: 'pem', type: 'pkcs8' }).toString();

/**
 * Creates a CA in `dir`: the CA, the collector's TLS certificate and the checkpoint signing key.
 * Refuses to touch a directory that already holds any of these files.
 */
export async function caInit(dir: string, opts: CaInitOptions = {}): Promise<CaInitResult> {
  const name = opts.name ?? DEFAULT_CA_NAME;
  if (!isValidKeyName(name)) throw new PkiError(`--name ${JSON.stringify(name)}: a key name must be non-empty, without spaces or "+"`);
  const sans = [...DEFAULT_SERVER_HOSTS, ...(opts.hosts ?? [])].map((h) => {
    try {
      return hostSan(h);
    } catch (err) {
      throw new PkiError(`--host: ${(err as Error).message}`);
    }
  });
  const unique = sans.filter((s, i) => sans.findIndex((t) => t.type === s.type && t.value === s.value) === i);

  for (const f of Object.values(CA_FILES)) {
    const p = path.join(dir, f);
    if (exists(p)) {
      throw new PkiError(`${dir} already holds a CA (${p} exists); refusing to overwrite it. ` +
        'Agents enrolled by it would be locked out and its checkpoints unverifiable; use another --dir.');
    }
  }

  // Everything is generated before the first file is written.
  const now = opts.now ?? new Date();
  const caKey = generateP256();
  const ca = await createCaCert({ commonName: `${name} CA`, key: caKey.privateKey, now, years: CA_YEARS });
  const serverKey = generateP256();
  const server = await issueLeafCert({ cert: ca.cert, key: caKey.privateKey }, {
    commonName: name, publicKey: serverKey.publicKey, now, years: SERVER_YEARS, usage: 'serverAuth', sans: unique,
  });
  const note = generateNoteKey(name);

  mkdirPrivate(dir);
  const outputs: [string, string, number][] = [
    [CA_FILES.caKey, pkcs8Pem(caKey.privateKey), PRIVATE_MODE],
    [CA_FILES.caCert, ca.pem, PUBLIC_MODE],
    [CA_FILES.serverKey, pkcs8Pem(serverKey.privateKey), PRIVATE_MODE],
    [CA_FILES.serverCert, server.pem, PUBLIC_MODE],
    [CA_FILES.checkpointKey, note.signerKey + '\n', PRIVATE_MODE],
    [CA_FILES.checkpointPub, note.verifierKey + '\n', PUBLIC_MODE],
  ];
  const written: string[] = [];
  try {
    for (const [f, data, mode] of outputs) {
      const p = path.join(dir, f);
      createFileExclusive(p, data, mode);
      written.push(p);
    }
  } catch (err) {
    // All or nothing: a half-made CA would only be refused by the next `ca init`.
    for (const p of written) try { unlinkSync(p); } catch { /* gone */ }
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new PkiError(`${dir}: another \`ca init\` is writing here; refusing to overwrite`);
    throw err;
  }
  syncDir(dir);
  return { dir, name, verifierKey: note.verifierKey, hosts: unique.map((s) => s.value), files: written };
}

/** The CA's key and certificate from a CA dir, checked to belong together and to be a usable CA. */
export function loadIssuer(caDir: string, now = new Date()): Issuer {
  const keyFile = path.join(caDir, CA_FILES.caKey);
  const certFile = path.join(caDir, CA_FILES.caCert);
  const key = privateKeyFromPem(readPrivate(keyFile, 'the CA key from `runguard ca init`'));
  if (!isP256PrivateKey(key)) throw new PkiError(`${keyFile}: not an ECDSA P-256 private key`);
  let cert;
  try {
    cert = parseCert(readRequired(certFile, 'the CA certificate from `runguard ca init`').toString('utf8'));
  } catch (err) {
    throw new PkiError(`${certFile}: not a certificate: ${(err as Error).message}`);
  }
  const certPub = Buffer.from(cert.publicKey.rawData);
  const keyPub = createPublicKey(key).export({ format: 'der', type: 'spki' });
  if (!certPub.equals(keyPub)) throw new PkiError(`${keyFile} is not the key of ${certFile}`);
  if (now > cert.notAfter) throw new PkiError(`the CA in ${caDir} expired on ${cert.notAfter.toISOString()}`);
  return { cert, key };
}

export interface EnrollOptions {
  caDir: string;
  agentId: string;
  outDir: string;
  now?: Date;
}

export interface EnrollResult {
  agentId: string;
  outDir: string;
  /** urn:runguard:signing-key:ed25519:<base64url> as bound in the certificate. */
  signingKeyUri: string;
  /** Raw 32-byte Ed25519 public key. */
  signingPublicKey: Buffer;
  /** Whether an existing signing.key was kept (re-enrolment). */
  keptSigningKey: boolean;
  notAfter: Date;
  files: string[];
}

/**
 * Issues an agent certificate bound to the agent's Ed25519 signing key into `outDir`. An existing
 * signing.key is kept and bound again (re-enrolment renews the certificate, never the key); an
 * existing certificate for a different agent id is refused.
 */
export async function enroll(opts: EnrollOptions): Promise<EnrollResult> {
  const { caDir, agentId, outDir } = opts;
  const problem = agentIdProblem(agentId);
  if (problem) throw new PkiError(problem);
  const now = opts.now ?? new Date();
  const issuer = loadIssuer(caDir, now);
  const caPem = readRequired(path.join(caDir, CA_FILES.caCert), 'the CA certificate');
  const pubFile = path.join(caDir, CA_FILES.checkpointPub);
  const checkpointPub = readRequired(pubFile, 'the checkpoint verifier key from `runguard ca init`');
  const vk = parseVerifierKey(checkpointPub.toString('utf8'));
  if (!vk.ok) throw new PkiError(`${pubFile}: ${vk.reason}`);

  mkdirPrivate(outDir);
  if (realpathSync(outDir) === realpathSync(caDir)) throw new PkiError('--out must not be the CA directory');

  const certFile = path.join(outDir, AGENT_FILES.cert);
  if (exists(certFile)) {
    const old = agentIdentityFromCert(readRequired(certFile, 'agent certificate').toString('utf8'));
    if (old.ok && old.value.agentId !== agentId) {
      throw new PkiError(`${outDir} is enrolled as agent "${old.value.agentId}"; refusing to re-enrol it as "${agentId}" (use another --out)`);
    }
  }

  const signingFile = path.join(outDir, AGENT_FILES.signingKey);
  let signingKey: KeyObject;
  let kept = false;
  if (exists(signingFile)) {
    signingKey = loadSigningKey(outDir);
    kept = true;
  } else {
    signingKey = generateKeyPairSync('ed25519').privateKey;
  }

  const tlsKey = generateP256();
  const cert = await issueLeafCert(issuer, {
    commonName: agentId,
    publicKey: tlsKey.publicKey,
    now,
    years: AGENT_YEARS,
    usage: 'clientAuth',
    sans: [{ type: 'url', value: agentUri(agentId) }, { type: 'url', value: signingKeyUri(signingKey) }],
  });

  const files: string[] = [];
  if (!kept) {
    try {
      createFileExclusive(signingFile, pkcs8Pem(signingKey), PRIVATE_MODE);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new PkiError(`${signingFile} appeared while enrolling; run enroll again`);
      throw err;
    }
    files.push(signingFile);
  }
  const outputs: [string, string | Buffer, number][] = [
    [AGENT_FILES.key, pkcs8Pem(tlsKey.privateKey), PRIVATE_MODE],
    [AGENT_FILES.cert, cert.pem, PUBLIC_MODE],
    [AGENT_FILES.caCert, caPem, PUBLIC_MODE],
    [AGENT_FILES.checkpointPub, checkpointPub, PUBLIC_MODE],
  ];
  for (const [f, data, mode] of outputs) {
    const p = path.join(outDir, f);
    replaceFile(p, data, mode);
    files.push(p);
  }
  syncDir(outDir);
  return {
    agentId,
    outDir,
    signingKeyUri: signingKeyUri(signingKey),
    signingPublicKey: ed25519Raw(signingKey),
    keptSigningKey: kept,
    notAfter: cert.cert.notAfter,
    files,
  };
}
