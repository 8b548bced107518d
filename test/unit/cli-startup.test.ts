// The commands a CI job runs on every step (`runguard run`, `runguard hook`) start in a blink only if
// they do not load the agent itself: its module graph (BPF loader, proxy, protocol handlers, the
// PostgreSQL parser's wasm) cost `runguard run` 0.6 s of wall time and 0.9 s of cpu per job. Checked
// on the compiled modules' static imports (type-only imports are gone there).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const DIST = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** Every project module `entry` loads statically, as paths relative to dist/. */
function closure(entry: string): Set<string> {
  const seen = new Set<string>();
  const visit = (file: string) => {
    const rel = path.relative(DIST, file);
    if (seen.has(rel)) return;
    seen.add(rel);
    const src = readFileSync(file, 'utf8');
    for (const m of src.matchAll(/^\s*(?:import|export)\s[^;]*?\sfrom\s+'(\.{1,2}\/[^']+)'/gm)) visit(path.resolve(path.dirname(file), m[1]!));
    for (const m of src.matchAll(/^\s*import\s+'(\.{1,2}\/[^']+)'/gm)) visit(path.resolve(path.dirname(file), m[1]!));
  };
  visit(path.join(DIST, entry));
  return seen;
}

const HEAVY = ['agent/agent.js', 'agent/proxy/server.js', 'agent/pg/handler.js', 'agent/bpf/runtime.js'];

for (const entry of ['agent/cli/run-cmd.js', 'agent/cli/hook-cmd.js']) {
  test(`${entry} does not load the agent`, () => {
    const loaded = closure(entry);
    assert.ok(loaded.has('agent/state.js'), `${entry} reads the agent's state file through agent/state.js`);
    for (const heavy of HEAVY) assert.ok(!loaded.has(heavy), `${entry} loads ${heavy}`);
  });
}

test('the closure follows imports (it finds the agent from the agent command)', () => {
  assert.ok(closure('agent/cli/agent-cmd.js').has('agent/agent.js'));
  assert.ok(closure('agent/cli/agent-cmd.js').has('agent/pg/handler.js'));
});
