// The collector's approval rules, without processes: groups, N distinct approvers, self-approval,
// deny-at-once, expiry, decided requests, persistence across a restart; and the user store.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import Database from 'better-sqlite3';
import { pino } from 'pino';
import { ApprovalError, ApprovalRegistry, toUpdate } from '../../collector/approvals/registry.js';
import { UserStore, type User } from '../../collector/approvals/users.js';
import { approvalWebhookPayload } from '../../collector/approvals/webhook.js';
import type { ApprovalRequestMsg } from '../../proto/services.js';
import { tempDir } from '../helpers/tmp.js';

const log = pino({ level: 'silent' });
const req = (id: string, extra: Partial<ApprovalRequestMsg> = {}): ApprovalRequestMsg => ({
  requestId: id, agentId: 'a1', sessionId: 's1', job: { repository: 'acme/app', actor: 'carol' }, process: null,
  target: { address: '10.0.0.5', port: 5432, hostname: '' }, protocol: 'postgres',
  operation: { type: 'ALTER TABLE', text: 'ALTER TABLE t ADD c int', objects: ['t'], database: 'db', user: 'u' },
  rule: 'review-schema', ruleReason: '', approvers: 'dba', approvals: 1, timeoutMs: 60_000, ...extra,
});
const dba = (name: string): User => ({ name, roles: ['approver'], groups: ['dba'] });
const code = (fn: () => unknown) => {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof ApprovalError, String(err));
    return err.code;
  }
  return 'ok';
};

test('approval rules: group, role, self-approval, N distinct approvers, deny at once, decided is final', () => {
  const reg = new ApprovalRegistry(new Database(':memory:'), log);
  reg.open('a1', req('ap-one'));
  assert.equal(code(() => reg.decide('ap-nope', dba('dan'), 'approve')), 'unknown_id');
  assert.equal(code(() => reg.decide('ap-one', { name: 'olga', roles: ['approver'], groups: ['ops'] }, 'approve')), 'not_in_group');
  assert.equal(code(() => reg.decide('ap-one', { name: 'vic', roles: ['viewer'], groups: ['dba'] }, 'approve')), 'not_an_approver');
  assert.equal(code(() => reg.decide('ap-one', dba('Carol'), 'approve')), 'self_approval');
  assert.equal(reg.decide('ap-one', dba('dan'), 'approve').state, 'approved');
  assert.equal(code(() => reg.decide('ap-one', dba('erin'), 'deny')), 'already_decided');

  reg.open('a1', req('ap-two', { approvals: 2 }));
  assert.equal(reg.decide('ap-two', dba('dan'), 'approve').state, 'pending');
  assert.equal(code(() => reg.decide('ap-two', dba('dan'), 'approve')), 'already_approved');
  const done = reg.decide('ap-two', dba('erin'), 'approve');
  assert.equal(done.state, 'approved');
  assert.deepEqual(toUpdate(done).approvedBy, ['dan', 'erin']);

  reg.open('a1', req('ap-three', { approvals: 2 }));
  reg.decide('ap-three', dba('dan'), 'approve');
  const denied = reg.decide('ap-three', dba('erin'), 'deny', 'not now');
  assert.equal(denied.state, 'denied');
  assert.equal(toUpdate(denied).deniedBy, 'erin');
  assert.equal(denied.reason, 'not now');
  assert.equal(code(() => reg.open('a2', req('ap-three'))), 'id_taken');
  assert.equal(reg.open('a1', req('ap-three')).state, 'denied', 'the same agent re-attaches to its request');
  reg.close();
});

test('approval requests expire at their deadline and survive a restart while pending', async () => {
  const file = path.join(tempDir('rg-appr-'), 'a.db');
  let reg = new ApprovalRegistry(new Database(file), log);
  reg.open('a1', req('ap-fast', { timeoutMs: 100 }));
  reg.open('a1', req('ap-slow', { timeoutMs: 60_000 }));
  const expired = await new Promise<string>((r) => reg.on('change', (rec) => rec.state === 'expired' && r(rec.id)));
  assert.equal(expired, 'ap-fast');
  assert.match(reg.get('ap-fast')!.reason, /no decision within 100ms/);
  reg.close();
  reg = new ApprovalRegistry(new Database(file), log);
  assert.deepEqual(reg.list({ state: 'pending' }).map((r) => r.id), ['ap-slow']);
  assert.equal(reg.decide('ap-slow', dba('dan'), 'approve').state, 'approved');
  reg.close();
});

test('an agent cancels its own pending request only: it leaves the queue, stays cancelled, and deciding it is a 409', () => {
  const file = path.join(tempDir('rg-appr-cancel-'), 'a.db');
  let reg = new ApprovalRegistry(new Database(file), log);
  const changes: string[] = [];
  reg.on('change', (rec) => changes.push(`${rec.id}:${rec.state}`));
  reg.open('a1', req('ap-held'));
  reg.open('a1', req('ap-done'));
  reg.decide('ap-done', dba('dan'), 'approve');
  const status = (fn: () => unknown) => {
    try {
      fn();
    } catch (err) {
      return (err as ApprovalError).status;
    }
    return 200;
  };
  assert.equal(code(() => reg.cancel('ap-nope', 'a1', 'client disconnected')), 'unknown_id');
  assert.equal(code(() => reg.cancel('ap-held', 'a2', 'client disconnected')), 'not_your_request');
  assert.equal(status(() => reg.cancel('ap-held', 'a2', 'x')), 403);
  assert.equal(code(() => reg.cancel('ap-done', 'a1', 'client disconnected')), 'already_decided');
  assert.equal(reg.get('ap-done')!.state, 'approved', 'a decided request stays decided');

  const rec = reg.cancel('ap-held', 'a1', 'client disconnected');
  assert.equal(rec.state, 'cancelled');
  assert.equal(rec.reason, 'client disconnected');
  assert.ok(rec.decidedMs);
  assert.equal(toUpdate(rec).state, 5, 'APPROVAL_STATE_CANCELLED');
  assert.deepEqual(changes.slice(-1), ['ap-held:cancelled']);
  assert.deepEqual(reg.list({ state: 'pending' }), []);
  assert.deepEqual(reg.list({ state: 'cancelled' }).map((r) => r.id), ['ap-held']);
  assert.equal(code(() => reg.decide('ap-held', dba('dan'), 'approve')), 'cancelled');
  assert.equal(status(() => reg.decide('ap-held', dba('dan'), 'deny')), 409);
  assert.throws(() => reg.decide('ap-held', dba('dan'), 'approve'), /ap-held was cancelled by its agent \(client disconnected\)/);
  assert.equal(code(() => reg.cancel('ap-held', 'a1', 'again')), 'already_decided');
  assert.equal(reg.open('a1', req('ap-held')).state, 'cancelled', 're-attaching finds it cancelled');
  reg.close();

  reg = new ApprovalRegistry(new Database(file), log);
  assert.equal(reg.get('ap-held')!.state, 'cancelled', 'cancelled survives a restart');
  assert.deepEqual(reg.list({ state: 'pending' }), []);
  reg.close();
});

test('users: scrypt-hashed passwords, roles and groups; the webhook payload names the request', () => {
  const dir = tempDir('rg-users-');
  const users = UserStore.forDataDir(dir);
  users.add({ name: 'dan', roles: ['approver'], groups: ['dba'] }, 'correct horse');
  assert.deepEqual(users.authenticate('dan', 'correct horse'), { name: 'dan', roles: ['approver'], groups: ['dba'] });
  assert.equal(users.authenticate('dan', 'wrong'), undefined);
  assert.equal(users.authenticate('nobody', 'correct horse'), undefined);
  assert.throws(() => users.add({ name: 'x', roles: [], groups: [] }, 'long enough'), /at least one role/);
  const reg = new ApprovalRegistry(new Database(':memory:'), log);
  const p = approvalWebhookPayload(reg.open('a1', req('ap-hook')));
  assert.match(p.text, /ap-hook/);
  assert.match(p.text, /ALTER TABLE/);
  assert.ok(Array.isArray(p.blocks));
  reg.close();
});
