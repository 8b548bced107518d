// Loads runguard's BPF objects, attaches them to the watched cgroups, and keeps them pinned so that
// enforcement outlives the agent process:
//
//   <pinDir>/maps/rg_config, rg_origins, rg_by_addr, rg_watched   maps, reused by the next agent
//   <pinDir>/links/<cgroup id>/<program>                           one cgroup link per hook
//
// A restarted agent loads the same objects against the pinned maps and swaps each pinned link to
// its freshly loaded program in place (bpf_link__update_program), so there is no instant in which a
// watched job's connect() runs unhooked.
import { existsSync, mkdirSync, readdirSync, rmSync, rmdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import koffi from 'koffi';
import { libbpf, RingBufferSampleFn, type BpfLink, type BpfObject, type RingBuffer } from './libbpf.js';
import {
  ADDR_KEY, CONFIG, ORIGIN, EXEC_EVENT, encodeConfig, fillAddrKey, decodeOrigin, decodeExecEvent,
  type ConfigValue, type ExecRecord, type InterceptRule, type Origin,
} from './layout.js';
import { ensureBpffs, bpffsMountFor } from './bpffs.js';
import { cgroupId, openCgroupFd } from '../cgroup.js';
import { BPF_DIR } from '../paths.js';

/** Hooks of the redirect object, attached to every watched cgroup. */
export const CGROUP_PROGRAMS = ['rg_connect4', 'rg_connect6', 'rg_getpeername4', 'rg_getpeername6', 'rg_sockops'] as const;
export const EXEC_PROGRAMS = ['rg_exec', 'rg_exit'] as const;
const PINNED_MAPS = new Set(['rg_config', 'rg_origins', 'rg_by_addr', 'rg_watched']);

export interface WatchedCgroup {
  path: string; // absolute
  id: bigint;
}

export interface BpfRuntimeOptions {
  pinDir: string;
  objectDir?: string;
  onExec?: (rec: ExecRecord) => void;
}

export type AttachStatus = 'attached' | 'reused';

export class BpfRuntime {
  private redirectObj?: BpfObject;
  private execObj?: BpfObject;
  private links: BpfLink[] = [];
  private execLinks: BpfLink[] = [];
  private configFd = -1;
  private byAddrFd = -1;
  private watchedFd = -1;
  private dropsFd = -1;
  private ring?: RingBuffer;
  private ringCb?: unknown;
  private ringTimer?: NodeJS.Timeout;
  private readonly keyBuf = Buffer.alloc(ADDR_KEY.size);
  private readonly originBuf = Buffer.alloc(ORIGIN.size);
  private readonly objectDir: string;
  status: AttachStatus = 'attached';

  /** BPF links this agent holds open: the cgroup hooks on every watched cgroup, and the tracers. */
  get linkCount(): number { return this.links.length + this.execLinks.length; }

  constructor(private readonly opts: BpfRuntimeOptions) {
    this.objectDir = opts.objectDir ?? BPF_DIR;
  }

  get mapsDir(): string { return path.join(this.opts.pinDir, 'maps'); }
  get linksDir(): string { return path.join(this.opts.pinDir, 'links'); }

  /** Loads both objects against the pinned maps (creating them on first start). */
  load(): void {
    ensureBpffs(bpffsMountFor(this.opts.pinDir));
    mkdirSync(this.mapsDir, { recursive: true, mode: 0o700 });
    mkdirSync(this.linksDir, { recursive: true, mode: 0o700 });
    this.redirectObj = this.openAndLoad('redirect.bpf.o');
    this.execObj = this.openAndLoad('exec.bpf.o');
    this.configFd = this.mapFd(this.redirectObj, 'rg_config');
    this.byAddrFd = this.mapFd(this.redirectObj, 'rg_by_addr');
    this.watchedFd = this.mapFd(this.execObj, 'rg_watched');
    this.dropsFd = this.mapFd(this.execObj, 'rg_exec_drops');
  }

  private openAndLoad(file: string): BpfObject {
    const obj = libbpf.openObject(path.join(this.objectDir, file));
    for (const map of libbpf.maps(obj)) {
      const name = libbpf.mapName(map);
      if (PINNED_MAPS.has(name)) libbpf.setPinPath(map, path.join(this.mapsDir, name));
    }
    libbpf.load(obj, file);
    return obj;
  }

  private mapFd(obj: BpfObject, name: string): number {
    const map = libbpf.maps(obj).find((m) => libbpf.mapName(m) === name);
    if (!map) throw new Error(`BPF object has no map ${name}: the committed objects do not match this agent`);
    return libbpf.mapFd(map);
  }

  writeConfig(cfg: ConfigValue): void {
    libbpf.update(this.configFd, Buffer.alloc(4), encodeConfig(cfg));
  }

  /** Marks the agent down: watched connects to intercepted targets now fail at once (EPERM). */
  markDown(): void {
    const value = Buffer.alloc(CONFIG.size);
    if (libbpf.lookup(this.configFd, Buffer.alloc(4), value)) {
      value.writeUInt32LE(0, CONFIG.state);
      libbpf.update(this.configFd, Buffer.alloc(4), value);
    }
  }

  /**
   * Attaches (or re-uses) the cgroup hooks on every watched cgroup, and detaches hooks pinned by an
   * earlier run on cgroups no longer watched.
   */
  attach(watched: readonly WatchedCgroup[]): AttachStatus {
    if (!this.redirectObj) throw new Error('BpfRuntime.attach before load');
    let reused = 0;
    const keep = new Set(watched.map((w) => String(w.id)));
    for (const w of watched) {
      const dir = path.join(this.linksDir, String(w.id));
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      const fd = openCgroupFd(w.path);
      try {
        for (const name of CGROUP_PROGRAMS) {
          const prog = libbpf.program(this.redirectObj, name);
          const pin = path.join(dir, name);
          const what = `${name} on ${w.path}`;
          const existing = libbpf.openPinnedLink(pin);
          if (existing) {
            libbpf.updateLinkProgram(existing, prog, what);
            this.links.push(existing);
            reused++;
          } else {
            const link = libbpf.attachCgroup(prog, fd, what);
            libbpf.pinLink(link, pin);
            this.links.push(link);
          }
        }
      } finally {
        libbpf.closeFd(fd);
      }
    }
    for (const stale of existsSync(this.linksDir) ? readdirSync(this.linksDir) : []) {
      if (!keep.has(stale)) detachPinnedDir(path.join(this.linksDir, stale));
    }
    this.setWatched(watched);
    this.status = reused > 0 ? 'reused' : 'attached';
    return this.status;
  }

  private setWatched(watched: readonly WatchedCgroup[]): void {
    // Drop ids from an earlier run first: the exec tracer must not report on unwatched cgroups.
    const key = Buffer.alloc(8);
    const stale = libbpf.keys(this.watchedFd, 8);
    const want = new Set(watched.map((w) => String(w.id)));
    for (const k of stale) if (!want.has(String(k.readBigUInt64LE()))) libbpf.delete(this.watchedFd, k);
    for (const w of watched) {
      key.writeBigUInt64LE(w.id);
      libbpf.update(this.watchedFd, key, Buffer.from([1]));
    }
  }

  /** Starts the exec/exit tracepoints and drains their ring buffer every `intervalMs`. */
  startExecTracing(intervalMs = 20): void {
    if (!this.execObj) throw new Error('BpfRuntime.startExecTracing before load');
    for (const name of EXEC_PROGRAMS) this.execLinks.push(libbpf.attach(libbpf.program(this.execObj, name), name));
    const onExec = this.opts.onExec;
    const cb = koffi.register((_ctx: unknown, data: unknown, size: number) => {
      if (!onExec || size < EXEC_EVENT.size) return 0;
      // The record lives in the ring only for this call: copy before decoding.
      const bytes = Buffer.from(koffi.view(data as never, EXEC_EVENT.size) as ArrayBuffer).subarray(0, EXEC_EVENT.size);
      try {
        onExec(decodeExecEvent(Buffer.from(bytes)));
      } catch {
        // A consumer bug must not stop the drain; the consumer logs its own errors.
      }
      return 0;
    }, koffi.pointer(RingBufferSampleFn));
    this.ringCb = cb;
    this.ring = libbpf.ringBufferNew(this.mapFd(this.execObj, 'rg_exec_events'), cb);
    this.ringTimer = setInterval(() => this.drainExec(), intervalMs);
  }

  drainExec(): void {
    if (this.ring) libbpf.ringBufferConsume(this.ring);
  }

  /** Exec records the ring buffer had no room for, summed over CPUs. */
  execDrops(): bigint {
    const ncpu = possibleCpus();
    const value = Buffer.alloc(8 * ncpu);
    if (!libbpf.lookup(this.dropsFd, Buffer.alloc(4), value)) return 0n;
    let sum = 0n;
    for (let i = 0; i < ncpu; i++) sum += value.readBigUInt64LE(i * 8);
    return sum;
  }

  /**
   * The redirect record of the job socket whose local end is `address:port` (the proxy's peer),
   * removed from the map as it is read: each record is claimed by exactly one accepted connection.
   */
  takeOrigin(address: string, port: number): Origin | undefined {
    if (!fillAddrKey(this.keyBuf, address, port)) return undefined;
    if (!libbpf.take(this.byAddrFd, this.keyBuf, this.originBuf)) return undefined;
    return decodeOrigin(this.originBuf);
  }

  /**
   * Stops the agent's side. Fail-closed (default): the links stay pinned and the config says DOWN,
   * so watched connects to intercepted targets fail until an agent is back. Fail-open: everything
   * is detached and unpinned, and jobs connect directly.
   */
  shutdown(failOpen: boolean): void {
    if (this.ringTimer) clearInterval(this.ringTimer);
    if (this.ring) {
      this.drainExec();
      libbpf.ringBufferFree(this.ring);
      this.ring = undefined;
    }
    if (this.ringCb) koffi.unregister(this.ringCb as never);
    for (const l of this.execLinks) libbpf.destroyLink(l);
    this.execLinks = [];
    if (failOpen) {
      for (const l of this.links) {
        try { libbpf.detachLink(l, 'shutdown'); } catch { /* already gone */ }
      }
    } else if (this.configFd >= 0) {
      this.markDown();
    }
    for (const l of this.links) libbpf.destroyLink(l); // closes our fds; pins keep attached links alive
    this.links = [];
    if (this.redirectObj) libbpf.close(this.redirectObj);
    if (this.execObj) libbpf.close(this.execObj);
    this.redirectObj = this.execObj = undefined;
    if (failOpen) removePins(this.opts.pinDir);
  }
}

/** Detaches and unpins every link under a directory, then removes it. */
function detachPinnedDir(dir: string): void {
  for (const name of readdirSync(dir)) {
    const pin = path.join(dir, name);
    const link = libbpf.openPinnedLink(pin);
    if (link) {
      try { libbpf.detachLink(link, pin); } catch { /* detached already */ }
      libbpf.destroyLink(link);
    }
    rmSync(pin, { force: true });
  }
  rmdirSync(dir);
}

/**
 * `runguard agent --cleanup`: detaches every hook this pin directory holds and removes the pins.
 * Returns what it removed, for the operator.
 */
export function removePins(pinDir: string): string[] {
  const removed: string[] = [];
  const links = path.join(pinDir, 'links');
  if (existsSync(links)) {
    for (const cg of readdirSync(links)) {
      removed.push(...readdirSync(path.join(links, cg)).map((n) => `link ${cg}/${n}`));
      detachPinnedDir(path.join(links, cg));
    }
  }
  const maps = path.join(pinDir, 'maps');
  if (existsSync(maps)) {
    for (const m of readdirSync(maps)) {
      rmSync(path.join(maps, m), { force: true });
      removed.push(`map ${m}`);
    }
  }
  for (const d of [links, maps, pinDir]) {
    try { rmdirSync(d); } catch { /* not there or not empty */ }
  }
  return removed;
}

export function watchedCgroup(absPath: string): WatchedCgroup {
  return { path: absPath, id: cgroupId(absPath) };
}

let cpuCount = 0;
function possibleCpus(): number {
  if (cpuCount) return cpuCount;
  // "0-1" or "0,2-3": per-CPU map values have one slot per possible CPU.
  const text = readFileSync('/sys/devices/system/cpu/possible', 'utf8').trim();
  let n = 0;
  for (const part of text.split(',')) {
    const [a, b] = part.split('-').map(Number);
    n += b === undefined ? 1 : b - a! + 1;
  }
  cpuCount = n;
  return n;
}

export type { InterceptRule };
