// Certificate issuance with @peculiar/x509 over Node's WebCrypto. Keys live as node:crypto KeyObjects
// (PKCS#8 PEM on disk, which Node's TLS reads directly) and are imported into WebCrypto only to sign.
import './reflect-shim.js';
import * as x509 from '@peculiar/x509';
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, webcrypto, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';

export { x509 };

const crypto = webcrypto as unknown as Crypto;
x509.cryptoProvider.set(crypto);

const ECDSA_P256 = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGNING_ALGORITHM = { name: 'ECDSA', hash: 'SHA-256' } as const;

/** A new ECDSA P-256 key pair (the TLS keys: CA, server, agents). */
export function generateP256(): { privateKey: KeyObject; publicKey: KeyObject } {
  return generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
}

/** Checks that `key` is an ECDSA P-256 private key (a CA key read from disk). */
export function isP256PrivateKey(key: KeyObject): boolean {
  return key.type === 'private' && key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1';
}

async function signingKey(key: KeyObject): Promise<CryptoKey> {
  const der = key.export({ format: 'der', type: 'pkcs8' });
  return crypto.subtle.importKey('pkcs8', der, ECDSA_P256, false, ['sign']);
}

async function publicCryptoKey(key: KeyObject): Promise<CryptoKey> {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  return crypto.subtle.importKey('spki', pub.export({ format: 'der', type: 'spki' }), ECDSA_P256, true, ['verify']);
}

/** A positive 128-bit serial number, hex (RFC 5280 allows up to 20 octets; the top bit must be 0). */
function serialNumber(): string {
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x7f) | 0x40;
  return b.toString('hex');
}

/** `years` after `from`, in UTC. */
export function addYears(from: Date, years: number): Date {
  const d = new Date(from.getTime());
  d.setUTCFullYear(d.getUTCFullYear() + years);
  return d;
}

/** Certificates are valid from a little before now, so that a peer whose clock lags accepts them. */
const BACKDATE_MS = 5 * 60 * 1000;

export interface IssuedCert {
  cert: x509.X509Certificate;
  pem: string;
  der: Buffer;
}

function issued(cert: x509.X509Certificate): IssuedCert {
  return { cert, pem: cert.toString('pem') + '\n', der: Buffer.from(cert.rawData) };
}

/** A self-signed CA certificate: CA:true (path length 0), keyCertSign + cRLSign. */
export async function createCaCert(opts: { commonName: string; key: KeyObject; now: Date; years: number }): Promise<IssuedCert> {
  const publicKey = await publicCryptoKey(opts.key);
  const privateKey = await signingKey(opts.key);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serialNumber(),
    name: [{ CN: [opts.commonName] }, { O: ['runguard'] }],
    notBefore: new Date(opts.now.getTime() - BACKDATE_MS),
    notAfter: addYears(opts.now, opts.years),
    keys: { publicKey, privateKey },
    signingAlgorithm: SIGNING_ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(publicKey, false, crypto),
    ],
  }, crypto);
  return issued(cert);
}

export interface Issuer {
  cert: x509.X509Certificate;
  key: KeyObject;
}

/** An end-entity certificate signed by `issuer`; its validity never outlasts the issuer's. */
export async function issueLeafCert(issuer: Issuer, opts: {
  commonName: string;
  publicKey: KeyObject;
  now: Date;
  years: number;
  usage: 'serverAuth' | 'clientAuth';
  sans: x509.JsonGeneralNames;
}): Promise<IssuedCert> {
  const publicKey = await publicCryptoKey(opts.publicKey);
  const notAfter = addYears(opts.now, opts.years);
  const ski = issuer.cert.getExtension(x509.SubjectKeyIdentifierExtension);
  const aki = ski
    ? new x509.AuthorityKeyIdentifierExtension(ski.keyId, false)
    : await x509.AuthorityKeyIdentifierExtension.create(issuer.cert.publicKey, false, crypto);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serialNumber(),
    subject: [{ CN: [opts.commonName] }, { O: ['runguard'] }],
    issuer: issuer.cert.subjectName,
    notBefore: new Date(opts.now.getTime() - BACKDATE_MS),
    notAfter: notAfter < issuer.cert.notAfter ? notAfter : issuer.cert.notAfter,
    publicKey,
    signingKey: await signingKey(issuer.key),
    signingAlgorithm: SIGNING_ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([opts.usage === 'serverAuth' ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth], false),
      new x509.SubjectAlternativeNameExtension(opts.sans, false),
      await x509.SubjectKeyIdentifierExtension.create(publicKey, false, crypto),
      aki,
    ],
  }, crypto);
  return issued(cert);
}

/** Parses a PEM or DER certificate. */
export function parseCert(data: string | Uint8Array): x509.X509Certificate {
  return new x509.X509Certificate(typeof data === 'string' ? data : Buffer.from(data));
}

/** A SAN entry for a host: an IP address or a DNS name (checked; throws RangeError otherwise). */
export function hostSan(host: string): x509.JsonGeneralName {
  const h = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  if (isIP(h)) return { type: 'ip', value: h };
  const dns = h.endsWith('.') ? h.slice(0, -1) : h;
  const label = '[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?';
  if (dns.length > 253 || !new RegExp(`^(?:\\*\\.)?${label}(?:\\.${label})*$`).test(dns)) {
    throw new RangeError(`${JSON.stringify(host)} is neither an IP address nor a DNS name`);
  }
  return { type: 'dns', value: dns.toLowerCase() };
}

/** Reads a PKCS#8 (or SEC1) PEM private key. */
export function privateKeyFromPem(pem: string | Buffer): KeyObject {
  return createPrivateKey(pem);
}
