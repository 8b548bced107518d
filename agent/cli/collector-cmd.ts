// `runguard collector`: the central log. Runs in the foreground until SIGTERM/SIGINT.
import { pino } from 'pino';
import { startCollector } from '../../collector/server.js';
import { parseArgs, UsageError } from './args.js';

export async function collectorCommand(argv: string[]): Promise<number> {
  const a = parseArgs(argv, { 'data-dir': 'string', tls: 'string', listen: 'string', http: 'string', 'log-level': 'string', 'approval-webhook': 'string', 'http-tls': 'boolean', 'verify-interval': 'string' });
  if (!a['data-dir'] || !a.tls) throw new UsageError('usage: runguard collector --data-dir DIR --tls DIR [--listen HOST:PORT] [--http HOST:PORT] [--http-tls] [--approval-webhook URL] [--verify-interval SECONDS]');
  const verifyInterval = a['verify-interval'] === undefined ? undefined : Number(a['verify-interval']);
  if (verifyInterval !== undefined && !(Number.isInteger(verifyInterval) && verifyInterval >= 0)) throw new UsageError('--verify-interval must be whole seconds (0: only when an admin asks)');
  const log = pino({ level: a['log-level'] ?? process.env.RUNGUARD_LOG_LEVEL ?? 'info', base: { component: 'collector' } });
  const collector = await startCollector({
    dataDir: a['data-dir'], tlsDir: a.tls, listen: a.listen ?? '127.0.0.1:7443', http: a.http ?? '127.0.0.1:7480', log,
    approvalWebhook: a['approval-webhook'], httpTls: a['http-tls'], verifyIntervalMs: verifyInterval === undefined ? undefined : verifyInterval * 1000,
  });
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ signal }, 'stopping');
      collector.stop().then(resolve, (err) => {
        log.error({ err }, 'error while stopping');
        resolve();
      });
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  return 0;
}
