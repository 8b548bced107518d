// The agent's own CA, for terminating jobs' TLS: created once under the state directory, it signs a
// short-lived certificate for each destination the proxy impersonates. A job that trusts this CA
// (PGSSLROOTCERT, the system store of a runner image) can keep sslmode=verify-full; one that does not
// verify (sslmode=require) works unchanged.
import { mkdirSync, readFileSync } from 'node:fs';
import { createPrivateKey, type KeyObject } from 'node:crypto';
import path from 'node:path';
import tls from 'node:tls';
import { createCaCert, generateP256, hostSan, issueLeafCert, parseCert, type Issuer } from '../../collector/pki/x509.js';
import { createFileExclusive, exists, PRIVATE_MODE, PUBLIC_MODE } from '../../collector/pki/files.js';

const CA_YEARS = 5;
const LEAF_YEARS = 1;
/** Distinct destination names kept with a ready certificate. */
const MAX_CONTEXTS = 1024;

export class AgentCa {
  private readonly contexts = new Map<string, Promise<tls.SecureContext>>();

  private constructor(private readonly issuer: Issuer, readonly caPem: string, readonly caFile: string) {}

  /** Loads DIR/ca.crt + ca.key, creating them (0600 key) on first use. */
  static async open(dir: string, agentId: string): Promise<AgentCa> {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const certFile = path.join(dir, 'ca.crt');
    const keyFile = path.join(dir, 'ca.key');
    if (!exists(certFile)) {
      const { privateKey } = generateP256();
      const ca = await createCaCert({ commonName: `runguard agent ${agentId} TLS interception CA`, key: privateKey, now: new Date(), years: CA_YEARS });
      createFileExclusive(keyFile, privateKey.export({ format: 'pem', type: 'pkcs8' }) as string, PRIVATE_MODE);
      createFileExclusive(certFile, ca.pem, PUBLIC_MODE);
    }
    const pem = readFileSync(certFile, 'utf8');
    const key: KeyObject = createPrivateKey(readFileSync(keyFile));
    return new AgentCa({ cert: parseCert(pem), key }, pem, certFile);
  }

  /**
   * A TLS server context presenting a certificate for `names` (the destination address, and the
   * SNI name when the client sent one), issued on first use and kept.
   */
  contextFor(names: string[]): Promise<tls.SecureContext> {
    const key = names.join(',');
    let ctx = this.contexts.get(key);
    if (!ctx) {
      ctx = this.issue(names);
      if (this.contexts.size >= MAX_CONTEXTS) this.contexts.delete(this.contexts.keys().next().value!);
      this.contexts.set(key, ctx);
      ctx.catch(() => this.contexts.delete(key));
    }
    return ctx;
  }

  private async issue(names: string[]): Promise<tls.SecureContext> {
    const { privateKey, publicKey } = generateP256();
    const leaf = await issueLeafCert(this.issuer, {
      commonName: names[0]!, publicKey, now: new Date(), years: LEAF_YEARS, usage: 'serverAuth', sans: names.map(hostSan),
    });
    return tls.createSecureContext({ cert: leaf.pem + this.caPem, key: privateKey.export({ format: 'pem', type: 'pkcs8' }) as string });
  }
}
