// Worker thread body of the collector's self-verify (see verifier.ts).
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import { verifyLog } from '../verify.js';
import { storeSource } from '../verify-sources.js';
import { loadCheckpointVerifier } from '../pki/identity.js';

const { dataDir, tlsDir } = workerData as { dataDir: string; tlsDir: string };
const source = storeSource(dataDir);
try {
  const caFile = path.join(tlsDir, 'ca.crt');
  const report = await verifyLog(source, {
    verifier: loadCheckpointVerifier(tlsDir),
    caCert: existsSync(caFile) ? readFileSync(caFile, 'utf8') : undefined,
    maxProblems: 100,
  });
  parentPort!.postMessage({ report });
} catch (err) {
  parentPort!.postMessage({ error: (err as Error).message });
} finally {
  source.close();
}
