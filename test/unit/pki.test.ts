// The collector's PKI with real keys, real certificates, real TLS and a real gRPC server: `ca init`
// and `enroll` write what they promise with the right modes, the agent id and signing key are bound
// into the agent certificate, and a mutual-TLS gRPC server admits only agents of its own CA and
// names them by their certificate, whatever they claim.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, createPublicKey, generateKeyPairSync, sign, verify, X509Certificate } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { openNote, parseSignerKey, parseVerifierKey, signNote } from '../../collector/merkle/checkpoint.js';
import { caInit, enroll, loadIssuer } from '../../collector/pki/ca.js';
import {
  agentIdentityFromCert, ed25519Raw, loadAgentIdentity, loadCheckpointSigner, loadCheckpointVerifier, loadSigningKey,
  peerAgentIdentity, SIGNING_KEY_URI_PREFIX, tlsClientCredentials, tlsServerCredentials,
} from '../../collector/pki/identity.js';
import { generateP256, issueLeafCert } from '../../collector/pki/x509.js';

const run = promisify(execFile);
const root = mkdtempSync(path.join(tmpdir(), 'runguard-pki-'));
after(() => rmSync(root, { recursive: true, force: true }));

const mode = (p: string): number => statSync(p).mode & 0o777;
const CLI = fileURLToPath(new URL('../../collector/pki/cli.js', import.meta.url));

/** Runs caCommand/enrollCommand in a child process, as main() would (exit 2 on usage, 1 on error). */
async function cli(cmd: 'caCommand' | 'enrollCommand', args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const script = `import { ${cmd} } from ${JSON.stringify(CLI)};
    try { process.exitCode = await ${cmd}(process.argv.slice(1)); }
    catch (e) { process.stderr.write(e.message + '\\n'); process.exitCode = e.name === 'UsageError' ? 2 : 1; }`;
  try {
    const { stdout, stderr } = await run(process.execPath, ['--input-type=module', '-e', script, '--', ...args]);
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

const caDir = path.join(root, 'ca');
const agentDir = path.join(root, 'alice');
let printedKey = '';

test('ca init creates the CA, collector certificate and checkpoint key with private modes, and prints the verifier key', async () => {
  const r = await cli('caCommand', ['init', '--dir', caDir, '--host', 'collector.example', '--host', '10.9.8.7']);
  assert.equal(r.code, 0, r.stderr);
  printedKey = r.stdout.trim();
  assert.equal(r.stdout.split('\n').filter(Boolean).length, 1, 'stdout is just the verifier key');

  assert.equal(mode(caDir), 0o700);
  for (const f of ['ca.key', 'server.key', 'checkpoint.key']) assert.equal(mode(path.join(caDir, f)), 0o600, f);
  for (const f of ['ca.crt', 'server.crt', 'checkpoint.pub']) assert.equal(mode(path.join(caDir, f)), 0o644, f);

  // The printed key is the saved one and parses as a signed-note verifier key with the right key hash.
  assert.equal(readFileSync(path.join(caDir, 'checkpoint.pub'), 'utf8'), printedKey + '\n');
  const v = parseVerifierKey(printedKey);
  assert.ok(v.ok, v.ok ? '' : v.reason);
  assert.equal(v.value.name, 'runguard-collector');
  // name+hash+base64: the base64 may itself contain "+", so split at the first two only.
  const m = /^([^+]+)\+([0-9a-f]{8})\+(.+)$/.exec(printedKey);
  assert.ok(m, printedKey);
  const [, name, hash, b64] = m as unknown as [string, string, string, string];
  const raw = Buffer.from(b64, 'base64');
  assert.equal(raw.length, 33);
  assert.equal(raw[0], 0x01);
  const want = createHash('sha256').update(name).update('\n').update(Buffer.from([1])).update(raw.subarray(1)).digest().subarray(0, 4);
  assert.equal(hash, want.toString('hex'));

  // The signer key matches it: a note it signs opens with the printed key.
  const skey = readFileSync(path.join(caDir, 'checkpoint.key'), 'utf8').trim();
  assert.match(skey, /^PRIVATE\+KEY\+runguard-collector\+[0-9a-f]{8}\+/);
  const s = parseSignerKey(skey);
  assert.ok(s.ok);
  assert.equal(s.value.verifier().toString(), printedKey);
  const opened = openNote(signNote('runguard-collector\n1\nAAAA\n', loadCheckpointSigner(caDir)), [loadCheckpointVerifier(caDir)]);
  assert.ok(opened.ok, opened.ok ? '' : opened.reason);

  // The CA and the collector certificate.
  const ca = new X509Certificate(readFileSync(path.join(caDir, 'ca.crt')));
  assert.equal(ca.ca, true);
  assert.ok(ca.checkIssued(ca) && ca.verify(ca.publicKey));
  assert.equal(ca.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  const caYears = (Date.parse(ca.validTo) - Date.now()) / (365.25 * 86400e3);
  assert.ok(caYears > 9.9 && caYears < 10.1, `CA valid ${caYears} years`);
  const server = new X509Certificate(readFileSync(path.join(caDir, 'server.crt')));
  assert.equal(server.ca, false);
  assert.ok(server.checkIssued(ca) && server.verify(ca.publicKey));
  assert.deepEqual(server.keyUsage, ['1.3.6.1.5.5.7.3.1']);
  for (const san of ['DNS:localhost', 'IP Address:127.0.0.1', 'IP Address:0:0:0:0:0:0:0:1', 'DNS:collector.example', 'IP Address:10.9.8.7']) {
    assert.ok(server.subjectAltName?.split(', ').includes(san), `${san} in ${server.subjectAltName}`);
  }
  const serverYears = (Date.parse(server.validTo) - Date.now()) / (365.25 * 86400e3);
  assert.ok(serverYears > 1.9 && serverYears < 2.1, `server valid ${serverYears} years`);
  assert.ok(server.checkPrivateKey((await import('node:crypto')).createPrivateKey(readFileSync(path.join(caDir, 'server.key')))));
  assert.ok(loadIssuer(caDir).cert);
});

test('ca init --name sets the key name and log origin', async () => {
  const dir = path.join(root, 'named');
  const r = await caInit(dir, { name: 'ci.example.com/runguard' });
  assert.match(r.verifierKey, /^ci\.example\.com\/runguard\+[0-9a-f]{8}\+/);
  assert.equal(loadCheckpointSigner(dir).name, 'ci.example.com/runguard');
  await assert.rejects(caInit(path.join(root, 'badname'), { name: 'has space' }), /key name/);
  await assert.rejects(caInit(path.join(root, 'badhost'), { hosts: ['not a host'] }), /--host/);
});

test('ca init refuses to overwrite an existing CA', async () => {
  const before = ['ca.key', 'ca.crt', 'server.key', 'server.crt', 'checkpoint.key', 'checkpoint.pub'].map((f) => readFileSync(path.join(caDir, f)));
  await assert.rejects(caInit(caDir), /already holds a CA .*refusing to overwrite/);
  const r = await cli('caCommand', ['init', '--dir', caDir]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /refusing to overwrite/);
  assert.equal(r.stdout, '');
  const afterFiles = ['ca.key', 'ca.crt', 'server.key', 'server.crt', 'checkpoint.key', 'checkpoint.pub'].map((f) => readFileSync(path.join(caDir, f)));
  assert.deepEqual(afterFiles, before);
  // Even a partial CA (one file) is not touched.
  const partial = path.join(root, 'partial');
  await caInit(partial);
  rmSync(path.join(partial, 'ca.key'));
  await assert.rejects(caInit(partial), /refusing to overwrite/);
  // Usage errors.
  assert.equal((await cli('caCommand', ['init'])).code, 2);
  assert.equal((await cli('caCommand', ['frobnicate', '--dir', caDir])).code, 2);
});

test('enroll binds the agent id and its signing key into the certificate', async () => {
  const r = await cli('enrollCommand', ['--ca', caDir, '--agent-id', 'alice', '--out', agentDir]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(mode(agentDir), 0o700);
  for (const f of ['agent.key', 'signing.key']) assert.equal(mode(path.join(agentDir, f)), 0o600, f);
  assert.deepEqual(readFileSync(path.join(agentDir, 'ca.crt')), readFileSync(path.join(caDir, 'ca.crt')));
  assert.deepEqual(readFileSync(path.join(agentDir, 'checkpoint.pub')), readFileSync(path.join(caDir, 'checkpoint.pub')));

  const pem = readFileSync(path.join(agentDir, 'agent.crt'), 'utf8');
  const cert = new X509Certificate(pem);
  const ca = new X509Certificate(readFileSync(path.join(caDir, 'ca.crt')));
  assert.ok(cert.checkIssued(ca) && cert.verify(ca.publicKey));
  assert.deepEqual(cert.keyUsage, ['1.3.6.1.5.5.7.3.2']);
  assert.match(cert.subject, /^CN=alice$/m);
  const years = (Date.parse(cert.validTo) - Date.now()) / (365.25 * 86400e3);
  assert.ok(years > 0.9 && years < 1.1, `agent valid ${years} years`);

  const signingKey = loadSigningKey(agentDir);
  const uri = SIGNING_KEY_URI_PREFIX + ed25519Raw(signingKey).toString('base64url');
  assert.equal(r.stdout.trim(), uri);
  assert.equal(cert.subjectAltName, `URI:spiffe://runguard/agent/alice, URI:${uri}`);

  for (const input of [cert.raw, pem, cert]) {
    const id = agentIdentityFromCert(input, { ca: ca.raw });
    assert.ok(id.ok, id.ok ? '' : id.reason);
    assert.equal(id.value.agentId, 'alice');
    const msg = Buffer.from('batch 1');
    assert.ok(verify(null, msg, id.value.signingKey, sign(null, msg, signingKey)), 'the certificate key verifies a signing.key signature');
    assert.ok(!verify(null, msg, id.value.signingKey, sign(null, msg, generateKeyPairSync('ed25519').privateKey)));
  }
  assert.equal(loadAgentIdentity(agentDir).agentId, 'alice');
});

test('re-enrolment keeps signing.key, renews the certificate, and refuses another agent id', async () => {
  const dir = path.join(root, 'bob');
  const first = await enroll({ caDir, agentId: 'bob', outDir: dir });
  assert.equal(first.keptSigningKey, false);
  const key1 = readFileSync(path.join(dir, 'signing.key'));
  const cert1 = new X509Certificate(readFileSync(path.join(dir, 'agent.crt')));
  const second = await enroll({ caDir, agentId: 'bob', outDir: dir });
  assert.equal(second.keptSigningKey, true);
  assert.deepEqual(readFileSync(path.join(dir, 'signing.key')), key1);
  const cert2 = new X509Certificate(readFileSync(path.join(dir, 'agent.crt')));
  assert.notEqual(cert2.serialNumber, cert1.serialNumber);
  assert.deepEqual(second.signingPublicKey, first.signingPublicKey);
  const id = agentIdentityFromCert(cert2.raw);
  assert.ok(id.ok);
  assert.deepEqual(id.value.signingKeyRaw, first.signingPublicKey);
  await assert.rejects(enroll({ caDir, agentId: 'mallory', outDir: dir }), /enrolled as agent "bob"/);

  // An agent created its signing key before enrolment (first start): enrol binds that key.
  const pre = path.join(root, 'pre');
  const own = generateKeyPairSync('ed25519').privateKey;
  (await import('node:fs')).mkdirSync(pre, { mode: 0o700 });
  writeFileSync(path.join(pre, 'signing.key'), own.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
  const r = await enroll({ caDir, agentId: 'carol', outDir: pre });
  assert.equal(r.keptSigningKey, true);
  assert.deepEqual(r.signingPublicKey, ed25519Raw(own));

  // A signing key readable by others is refused.
  chmodSync(path.join(pre, 'signing.key'), 0o644);
  await assert.rejects(enroll({ caDir, agentId: 'carol', outDir: pre }), /accessible by other users/);
});

test('enroll rejects bad agent ids and a missing CA', async () => {
  for (const id of ['', 'a b', '../x', 'a/b', 'x'.repeat(129), '.', '..', 'é', 'a:b']) {
    await assert.rejects(enroll({ caDir, agentId: id, outDir: path.join(root, 'bad') }), /agent id/, JSON.stringify(id));
  }
  await enroll({ caDir, agentId: 'x'.repeat(128), outDir: path.join(root, 'long') });
  await assert.rejects(enroll({ caDir: path.join(root, 'nope'), agentId: 'a', outDir: path.join(root, 'a') }), /ca\.key not found/);
  const r = await cli('enrollCommand', ['--ca', caDir, '--out', path.join(root, 'x')]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--agent-id/);
});

test('agentIdentityFromCert rejects certificates whose names disagree or that bind no key', async () => {
  const issuer = loadIssuer(caDir);
  const signing = generateKeyPairSync('ed25519').privateKey;
  const keyUri = SIGNING_KEY_URI_PREFIX + ed25519Raw(signing).toString('base64url');
  const mk = async (commonName: string, uris: string[], usage: 'clientAuth' | 'serverAuth' = 'clientAuth') =>
    (await issueLeafCert(issuer, {
      commonName, publicKey: generateP256().publicKey, now: new Date(), years: 1, usage,
      sans: uris.map((value) => ({ type: 'url' as const, value })),
    })).der;
  const bad = async (commonName: string, uris: string[], re: RegExp, usage?: 'clientAuth' | 'serverAuth') => {
    const id = agentIdentityFromCert(await mk(commonName, uris, usage));
    assert.ok(!id.ok, `${commonName} ${uris.join(' ')} accepted`);
    assert.match(id.reason, re);
  };
  // CA-signed, but the CN claims bob while the SAN says alice.
  await bad('bob', ['spiffe://runguard/agent/alice', keyUri], /CN "bob" does not match .* "alice"/);
  await bad('alice', [keyUri], /no spiffe:\/\/runguard\/agent\/<id> URI/);
  await bad('alice', ['spiffe://runguard/agent/alice', 'spiffe://runguard/agent/bob', keyUri], /2 SPIFFE URIs/);
  await bad('alice', ['spiffe://runguard/agent/alice'], /binds no signing key/);
  await bad('alice', ['spiffe://runguard/agent/alice', keyUri, keyUri], /binds 2 signing keys/);
  await bad('alice', ['spiffe://runguard/agent/alice', `${SIGNING_KEY_URI_PREFIX}AAAA`], /32-byte/);
  await bad('alice', ['spiffe://runguard/agent/alice', 'urn:runguard:signing-key:p256:AAAA'], /only ed25519/);
  await bad('../x', ['spiffe://runguard/agent/../x', keyUri], /agent id/);
  await bad('alice', ['spiffe://runguard/agent/alice', keyUri], /client authentication/, 'serverAuth');
  // The collector's own certificate is not an agent's.
  const server = agentIdentityFromCert(readFileSync(path.join(caDir, 'server.crt'), 'utf8'));
  assert.ok(!server.ok && /not an agent certificate/.test(server.reason));
  // Not a certificate at all, or an empty tls.PeerCertificate.
  assert.ok(!agentIdentityFromCert(Buffer.from('garbage')).ok);
  const none = agentIdentityFromCert({} as never);
  assert.ok(!none.ok && none.reason === 'no client certificate');
  // A good one from this CA fails the `ca` check against another CA.
  const other = path.join(root, 'other-ca');
  await caInit(other);
  const good = await mk('alice', ['spiffe://runguard/agent/alice', keyUri]);
  assert.ok(agentIdentityFromCert(good, { ca: readFileSync(path.join(caDir, 'ca.crt'), 'utf8') }).ok);
  const foreign = agentIdentityFromCert(good, { ca: readFileSync(path.join(other, 'ca.crt'), 'utf8') });
  assert.ok(!foreign.ok && /not issued by the CA/.test(foreign.reason));
});

// ---------------------------------------------------------------------------------------------
// Mutual TLS over a real gRPC server
// ---------------------------------------------------------------------------------------------

const raw = (b: Buffer): Buffer => b;
const WhoAmI: grpc.ServiceDefinition = {
  whoAmI: {
    path: '/runguard.test.PkiTest/WhoAmI',
    requestStream: false,
    responseStream: false,
    requestSerialize: raw,
    requestDeserialize: raw,
    responseSerialize: raw,
    responseDeserialize: raw,
  },
};
const Client = grpc.makeGenericClientConstructor(WhoAmI, 'PkiTest');
type WhoAmIClient = grpc.Client & { whoAmI(req: Buffer, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: Buffer) => void): void };

interface Claim { agentId: string; message: string; signature: string }

test('a mutual-TLS gRPC server admits enrolled agents only and names them by their certificate', async (t) => {
  let handled = 0;
  const server = new grpc.Server();
  server.addService(WhoAmI, {
    whoAmI: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      handled++;
      const claim = JSON.parse(call.request.toString('utf8')) as Claim;
      // The verified client certificate, from the TLS socket (grpc-js >= 1.10: getAuthContext).
      const id = peerAgentIdentity(call, claim.agentId);
      if (!id.ok) {
        cb({ code: grpc.status.UNAUTHENTICATED, details: id.reason });
        return;
      }
      const good = verify(null, Buffer.from(claim.message), id.value.signingKey, Buffer.from(claim.signature, 'base64'));
      if (!good) {
        cb({ code: grpc.status.UNAUTHENTICATED, details: 'signature does not verify with the certificate signing key' });
        return;
      }
      cb(null, Buffer.from(JSON.stringify({ agentId: id.value.agentId, key: id.value.signingKeyRaw.toString('base64url'), peer: call.getPeer() })));
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', tlsServerCredentials(caDir), (err, p) => (err ? reject(err) : resolve(p))));
  const clients: grpc.Client[] = [];
  t.after(() => {
    for (const c of clients) c.close();
    server.forceShutdown();
  });

  const call = (creds: grpc.ChannelCredentials, claim: Claim): Promise<{ err: grpc.ServiceError | null; res?: Buffer }> => {
    const c = new Client(`127.0.0.1:${port}`, creds) as unknown as WhoAmIClient;
    clients.push(c);
    return new Promise((resolve) => {
      c.whoAmI(Buffer.from(JSON.stringify(claim)), new grpc.Metadata(), { deadline: Date.now() + 10_000 }, (err, res) => resolve({ err, res }));
    });
  };
  const signed = (dir: string, agentId: string): Claim => {
    const message = `hello from ${agentId}`;
    return { agentId, message, signature: sign(null, Buffer.from(message), loadSigningKey(dir)).toString('base64') };
  };

  await t.test('an enrolled agent is admitted and identified by its certificate', async () => {
    const r = await call(tlsClientCredentials(agentDir), signed(agentDir, 'alice'));
    assert.equal(r.err, null, r.err?.details);
    const body = JSON.parse(r.res!.toString('utf8')) as { agentId: string; key: string; peer: string };
    assert.equal(body.agentId, 'alice');
    assert.equal(body.key, ed25519Raw(createPublicKey(loadSigningKey(agentDir))).toString('base64url'));
    assert.match(body.peer, /^127\.0\.0\.1:\d+$/, 'getPeer() is only the address');
  });

  await t.test('an agent claiming another id is refused', async () => {
    const before = handled;
    const r = await call(tlsClientCredentials(agentDir), signed(agentDir, 'bob'));
    assert.equal(r.err?.code, grpc.status.UNAUTHENTICATED);
    assert.match(r.err!.details, /"bob" does not match the client certificate, which is for agent "alice"/);
    assert.equal(handled, before + 1);
  });

  await t.test('a client without a certificate is refused at the TLS handshake', async () => {
    const before = handled;
    const r = await call(grpc.credentials.createSsl(readFileSync(path.join(caDir, 'ca.crt'))), signed(agentDir, 'alice'));
    assert.equal(r.err?.code, grpc.status.UNAVAILABLE, r.err?.details);
    assert.equal(handled, before, 'the handler never ran');
  });

  await t.test('a client with a certificate from another CA is refused at the TLS handshake', async () => {
    const otherCa = path.join(root, 'other-ca');
    const mallory = path.join(root, 'mallory');
    await enroll({ caDir: otherCa, agentId: 'alice', outDir: mallory });
    const before = handled;
    // Trusts the real collector (so only the client certificate is wrong) but presents the other CA's.
    const creds = grpc.credentials.createSsl(
      readFileSync(path.join(caDir, 'ca.crt')), readFileSync(path.join(mallory, 'agent.key')), readFileSync(path.join(mallory, 'agent.crt')));
    const r = await call(creds, signed(mallory, 'alice'));
    assert.equal(r.err?.code, grpc.status.UNAVAILABLE, r.err?.details);
    assert.equal(handled, before, 'the handler never ran');
  });

  await t.test('an agent does not trust a collector of another CA', async () => {
    const otherCa = path.join(root, 'other-ca');
    const other = new grpc.Server();
    other.addService(WhoAmI, { whoAmI: (_c: unknown, cb: grpc.sendUnaryData<Buffer>) => cb(null, Buffer.alloc(0)) });
    const otherPort = await new Promise<number>((resolve, reject) =>
      other.bindAsync('127.0.0.1:0', tlsServerCredentials(otherCa), (err, p) => (err ? reject(err) : resolve(p))));
    try {
      const c = new Client(`127.0.0.1:${otherPort}`, tlsClientCredentials(agentDir)) as unknown as WhoAmIClient;
      clients.push(c);
      const err = await new Promise<grpc.ServiceError | null>((resolve) =>
        c.whoAmI(Buffer.from('{}'), new grpc.Metadata(), { deadline: Date.now() + 10_000 }, (e) => resolve(e)));
      assert.equal(err?.code, grpc.status.UNAVAILABLE);
    } finally {
      other.forceShutdown();
    }
  });
});
