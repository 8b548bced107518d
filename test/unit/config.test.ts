import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { loadConfigFile, parseInterceptRule, relayThreadCount, DEFAULT_INTERCEPT, DEFAULT_RELAY_AUDIT_DELAY_MS } from '../../agent/config.js';
import { DEFAULT_COMMIT_DELAY_MS } from '../../agent/events/commit-delay.js';
import { tempDir } from '../helpers/tmp.js';

const dir = tempDir('rg-config-');
function file(text: string): string {
  const f = path.join(dir, `c${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(f, text);
  return f;
}

test('intercept rules: IPv4 CIDR with port, IPv6 in brackets, bypass, bare host', () => {
  const v4 = parseInterceptRule('10.1.0.0/16:5432');
  assert.equal(v4.action, 'intercept');
  assert.equal(v4.prefix, 96 + 16);
  assert.equal(v4.port, 5432);
  assert.equal(v4.addr.toString('hex'), '00000000000000000000ffff0a010000');
  const v6 = parseInterceptRule('[fd00::]/8:443');
  assert.equal(v6.prefix, 8);
  assert.equal(v6.port, 443);
  assert.equal(parseInterceptRule('!127.0.0.0/8').action, 'bypass');
  assert.equal(parseInterceptRule('127.0.0.2').prefix, 128);
  assert.equal(parseInterceptRule('::1').prefix, 128);
  assert.equal(parseInterceptRule('[::1]:9000').port, 9000);
  assert.equal(DEFAULT_INTERCEPT.map((r) => parseInterceptRule(r)).length, 4);
});

test('intercept rules: errors say what is wrong and show the expected form', () => {
  assert.throws(() => parseInterceptRule('10.0.0.0/33'), /prefix must be 0..32/);
  assert.throws(() => parseInterceptRule('10.0.0.0/8:70000'), /port must be/);
  assert.throws(() => parseInterceptRule('db.internal:5432'), /not an IP address.*expected CIDR/);
  assert.throws(() => parseInterceptRule('[::1/128'), /missing \]/);
});

test('config file: settings are read and flags-shaped values validated', () => {
  const cfg = loadConfigFile(file('agentId: runner-7\nproxyPort: 16000\nintercept:\n  - 10.0.0.0/8:5432\n  - "!10.9.0.0/16"\nfailOpen: true\n'));
  assert.equal(cfg.agentId, 'runner-7');
  assert.equal(cfg.proxyPort, 16000);
  assert.equal(cfg.failOpen, true);
  assert.deepEqual(cfg.intercept.map((r) => r.action), ['intercept', 'bypass']);
});

test('config file: a bad rule names its line', () => {
  const f = file('agentId: a\nintercept:\n  - 10.0.0.0/8\n  - 300.1.1.1/8\n');
  assert.throws(() => loadConfigFile(f), (err: Error) => err.message.startsWith(`${f}:4:`) && /not an IP address/.test(err.message));
});

test('config file: unknown keys, wrong types and YAML syntax errors name their line', () => {
  const unknown = file('agentId: a\nproxyport: 5\n');
  assert.throws(() => loadConfigFile(unknown), new RegExp(`^ConfigError: ${unknown}:2: unknown setting "proxyport"`));
  const wrongType = file('proxyPort: "high"\n');
  assert.throws(() => loadConfigFile(wrongType), new RegExp(`${wrongType}:1: "proxyPort" must be a number`));
  const syntax = file('agentId: a\nintercept: [10.0.0.0/8\nfailOpen: true\n');
  assert.throws(() => loadConfigFile(syntax), new RegExp(`${syntax}:\\d+:`));
  const range = file('proxyPort: 0\n');
  assert.throws(() => loadConfigFile(range), /proxyPort must be 1..65535/);
});

for (const [key, byDefault] of [['spoolCommitDelayMs', DEFAULT_COMMIT_DELAY_MS], ['relayAuditDelayMs', DEFAULT_RELAY_AUDIT_DELAY_MS]] as const) {
  test(`config file: ${key} has its default and is range-checked`, () => {
    assert.equal(loadConfigFile(file('agentId: a\n'))[key], byDefault);
    assert.equal(loadConfigFile(file(`${key}: 0\n`))[key], 0);
    assert.equal(loadConfigFile(file(`${key}: 2.5\n`))[key], 2.5);
    assert.throws(() => loadConfigFile(file(`${key}: -1\n`)), new RegExp(`${key} must be from 0 to 1000`));
    assert.throws(() => loadConfigFile(file(`${key}: 5000\n`)), new RegExp(`${key} must be from 0 to 1000`));
  });
}

test('config file: auditNice defaults to 10 and takes an integer from 0 (off) to 19', () => {
  assert.equal(loadConfigFile(file('agentId: a\n')).auditNice, 10);
  assert.equal(loadConfigFile(file('auditNice: 0\n')).auditNice, 0);
  assert.equal(loadConfigFile(file('auditNice: 19\n')).auditNice, 19);
  for (const bad of ['-1', '20', '2.5']) {
    assert.throws(() => loadConfigFile(file(`auditNice: ${bad}\n`)), new RegExp(`auditNice must be an integer from 0 \\(off\\) to 19, got ${bad}`));
  }
});

test('config file: relayThreads is 0 (one per 4 cpus, 1 to 4) by default and takes an integer up to 64', () => {
  assert.equal(loadConfigFile(file('agentId: a\n')).relayThreads, 0);
  assert.equal(loadConfigFile(file('relayThreads: 1\n')).relayThreads, 1);
  assert.equal(loadConfigFile(file('relayThreads: 64\n')).relayThreads, 64);
  for (const bad of ['-1', '65', '1.5']) {
    assert.throws(() => loadConfigFile(file(`relayThreads: ${bad}\n`)), new RegExp(`relayThreads must be an integer from 0 \\(one per 4 cpus, 1 to 4\\) to 64, got ${bad}`));
  }
  assert.equal(relayThreadCount({ relayThreads: 0 }, 1), 1);
  assert.equal(relayThreadCount({ relayThreads: 0 }, 2), 1);
  assert.equal(relayThreadCount({ relayThreads: 0 }, 7), 1);
  assert.equal(relayThreadCount({ relayThreads: 0 }, 8), 2);
  assert.equal(relayThreadCount({ relayThreads: 0 }, 32), 4);
  assert.equal(relayThreadCount({ relayThreads: 3 }, 1), 3, 'an explicit count is taken as it is');
});
