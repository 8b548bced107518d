// `runguard verify (--data-dir DIR | --collector URL) [--key FILE] [--checkpoint FILE]`
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { verifyLog, type VerifyReport } from '../../collector/verify.js';
import { httpSource, storeSource } from '../../collector/verify-sources.js';
import { loadCheckpointVerifier } from '../../collector/pki/identity.js';
import { parseArgs, UsageError } from './args.js';

export async function verifyCommand(argv: string[]): Promise<number> {
  const a = parseArgs(argv, { 'data-dir': 'string', collector: 'string', key: 'string', checkpoint: 'string', ca: 'string', json: 'boolean' });
  if (!a['data-dir'] === !a.collector) throw new UsageError('usage: runguard verify (--data-dir DIR | --collector URL) [--key FILE] [--checkpoint FILE] [--ca CA_DIR|ca.crt] [--json]');
  const source = a['data-dir'] ? storeSource(a['data-dir']) : httpSource(a.collector!);
  const verifier = a.key ? loadCheckpointVerifier(a.key) : undefined;
  const savedCheckpoint = a.checkpoint ? readFileSync(a.checkpoint, 'utf8') : undefined;
  const caCert = a.ca ? readFileSync(a.ca.endsWith('.crt') ? a.ca : path.join(a.ca, 'ca.crt'), 'utf8') : undefined;
  const started = Date.now();
  let lastPrint = started;
  let report: VerifyReport;
  try {
    report = await verifyLog(source, {
      verifier, savedCheckpoint, caCert,
      onProgress: (done, total) => {
        if (Date.now() - lastPrint < 2000) return;
        lastPrint = Date.now();
        const rate = Math.round(done / ((Date.now() - started) / 1000));
        process.stderr.write(`verify: ${done}/${total} leaves (${rate}/s)\n`);
      },
    });
  } finally {
    (source as { close?: () => void }).close?.();
  }
  const secs = (Date.now() - started) / 1000;
  if (a.json) {
    process.stdout.write(JSON.stringify({ ...report, seconds: secs }) + '\n');
  } else {
    process.stdout.write(`${source.describe}: ${report.leavesChecked} of ${report.size} leaves, ${report.agents} agent(s), ${report.signaturesChecked} batch signature(s) checked in ${secs.toFixed(2)} s\n`);
    process.stdout.write(report.checkpointSigned ? 'checkpoint signature: valid\n' : 'checkpoint signature: NOT CHECKED (pass --key checkpoint.pub)\n');
    process.stdout.write(report.agentCertsChecked ? 'agent keys: issued by the fleet CA\n' : 'agent keys: taken from the log (pass --ca ca.crt to check them against the fleet CA)\n');
    if (report.ok) {
      process.stdout.write('OK: every leaf, the tree, the checkpoint and every agent chain and signature verify\n');
    } else {
      const p = report.firstProblem!;
      process.stdout.write(`FAILED: ${p.index >= 0 ? `first bad index ${p.index}: ` : ''}${p.reason}\n`);
      for (const q of report.problems.slice(1, 10)) process.stdout.write(`  also: ${q.index >= 0 ? `index ${q.index}: ` : ''}${q.reason}\n`);
      if (report.problems.length > 10) process.stdout.write(`  ... and ${report.problems.length - 10} more\n`);
    }
  }
  return report.ok && (report.checkpointSigned || !a.key) ? 0 : 1;
}
