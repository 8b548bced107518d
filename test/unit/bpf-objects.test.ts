// The committed BPF objects are what the sources compile to, and the struct layouts of
// bpf/runguard.h are what the agent reads and writes (agent/bpf/layout.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ADDR_KEY, CONFIG, EXEC_EVENT, ORIGIN, RULE } from '../../agent/bpf/layout.js';
import { ROOT } from '../helpers/agent.js';

const BPF = path.join(ROOT, 'bpf');
const OBJECTS = ['redirect.bpf.o', 'exec.bpf.o'];

function have(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
}

test('committed BPF objects match a fresh build of bpf/*.bpf.c', (t) => {
  if (!have('clang') || !have('llvm-strip')) {
    if (process.env.RUNGUARD_REQUIRE_BPF === '1') assert.fail('clang/llvm-strip missing; test/setup.sh installs them');
    t.skip('clang not installed');
    return;
  }
  const out = mkdtempSync(path.join(os.tmpdir(), 'rg-bpf-'));
  try {
    const r = spawnSync('make', ['-s', '-C', BPF, `OUT=${out}`], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    for (const o of OBJECTS) {
      const fresh = readFileSync(path.join(out, o));
      const committed = readFileSync(path.join(BPF, o));
      assert.ok(fresh.equals(committed), `bpf/${o} differs from what its source compiles to: run \`make -C bpf\` and commit`);
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

const STRUCTS: [string, Record<string, number>, Record<string, string>][] = [
  ['rg_rule', RULE, { addr: 'addr', mask: 'mask', port: 'port', action: 'action' }],
  ['rg_config', CONFIG, { state: 'state', proxyPort: 'proxy_port', nrules: 'nrules', agentCgroupId: 'agent_cgroup_id', rules: 'rules' }],
  ['rg_addr_key', ADDR_KEY, { addr: 'addr', port: 'port' }],
  ['rg_origin', ORIGIN, {
    addr: 'addr', port: 'port', family: 'family', pid: 'pid', tid: 'tid', uid: 'uid', gid: 'gid', cgroupId: 'cgroup_id', cookie: 'cookie', comm: 'comm',
  }],
  ['rg_exec_event', EXEC_EVENT, {
    type: 'type', pid: 'pid', ppid: 'ppid', uid: 'uid', gid: 'gid', exitCode: 'exit_code', cgroupId: 'cgroup_id', ktimeNs: 'ktime_ns',
    flags: 'flags', argvLen: 'argv_len', argvTotal: 'argv_total', comm: 'comm', filename: 'filename', argv: 'argv',
  }],
];

// bpf/runguard.h uses only naturally aligned fixed-width types, so the host C ABI (x86-64, arm64)
// lays it out exactly as the BPF target does; the host compiler is always present (node-gyp needs it).
test('agent/bpf/layout.ts matches bpf/runguard.h (sizeof and offsetof of every field)', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'rg-layout-'));
  try {
    const lines = STRUCTS.flatMap(([name, , fields]) => [
      `printf("${name} size %zu\\n", sizeof(struct ${name}));`,
      ...Object.values(fields).map((f) => `printf("${name} ${f} %zu\\n", offsetof(struct ${name}, ${f}));`),
    ]);
    const src = `#include <stdio.h>\n#include <stddef.h>\n#include <linux/types.h>\n#include "${path.join(BPF, 'runguard.h')}"\nint main(void) {\n${lines.join('\n')}\nreturn 0;\n}\n`;
    const c = path.join(dir, 'layout.c');
    writeFileSync(c, src);
    const cc = spawnSync('cc', ['-o', path.join(dir, 'layout'), c], { encoding: 'utf8' });
    assert.equal(cc.status, 0, cc.stderr);
    const out = spawnSync(path.join(dir, 'layout'), { encoding: 'utf8' }).stdout;
    const got = new Map(out.trim().split('\n').map((l) => {
      const [s, f, v] = l.split(' ');
      return [`${s} ${f}`, Number(v)] as const;
    }));
    for (const [name, layout, fields] of STRUCTS) {
      assert.equal(layout.size, got.get(`${name} size`), `sizeof(struct ${name})`);
      for (const [tsName, cName] of Object.entries(fields)) {
        assert.equal(layout[tsName], got.get(`${name} ${cName}`), `offsetof(struct ${name}, ${cName})`);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
