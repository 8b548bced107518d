// Where runguard's own files are, found from this module so that the same code works from the
// source tree, from dist/ and from an installed package.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

function findProjectRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = path.join(dir, 'package.json');
    if (existsSync(pkg) && JSON.parse(readFileSync(pkg, 'utf8')).name === 'runguard') return dir;
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error('runguard: cannot find the runguard package root above ' + fileURLToPath(import.meta.url));
    dir = parent;
  }
}

export const PROJECT_ROOT = findProjectRoot();
export const PROTO_DIR = path.join(PROJECT_ROOT, 'proto');
export const BPF_DIR = path.join(PROJECT_ROOT, 'bpf');
export const DEFAULT_STATE_DIR = '/var/lib/runguard';
export const DEFAULT_PIN_DIR = '/sys/fs/bpf/runguard';
