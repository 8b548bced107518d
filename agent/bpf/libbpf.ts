// The slice of libbpf (Debian's libbpf1) that the agent calls, bound with koffi.
//
// libbpf does the ELF parsing, CO-RE relocation, map pinning and link management; this module only
// declares the C signatures and turns libbpf's "negative errno / NULL + errno" convention into
// thrown errors that say which call failed on what.
import { existsSync } from 'node:fs';
import koffi from 'koffi';

const LIB_CANDIDATES = ['libbpf.so.1', 'libbpf.so'];

function loadLibbpf(): ReturnType<typeof koffi.load> {
  const errors: string[] = [];
  for (const name of LIB_CANDIDATES) {
    try {
      return koffi.load(name);
    } catch (err) {
      errors.push(`${name}: ${(err as Error).message}`);
    }
  }
  throw new Error(`cannot load libbpf (install Debian's libbpf1): ${errors.join('; ')}`);
}

const lib = loadLibbpf();

// Opaque handle types: koffi checks that a bpf_map * is never passed where a bpf_link * belongs.
for (const name of ['bpf_object', 'bpf_map', 'bpf_program', 'bpf_link', 'ring_buffer']) koffi.opaque(name);

export type BpfObject = { readonly __brand: 'bpf_object' };
export type BpfMap = { readonly __brand: 'bpf_map' };
export type BpfProgram = { readonly __brand: 'bpf_program' };
export type BpfLink = { readonly __brand: 'bpf_link' };
export type RingBuffer = { readonly __brand: 'ring_buffer' };

/** `int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size)` */
export const RingBufferSampleFn = koffi.proto('int rg_ring_buffer_sample_fn(void *ctx, void *data, size_t size)');

const fn = {
  object_open_file: lib.func('bpf_object *bpf_object__open_file(const char *path, void *opts)'),
  object_load: lib.func('int bpf_object__load(bpf_object *obj)'),
  object_close: lib.func('void bpf_object__close(bpf_object *obj)'),
  object_next_map: lib.func('bpf_map *bpf_object__next_map(bpf_object *obj, bpf_map *prev)'),
  object_find_program: lib.func('bpf_program *bpf_object__find_program_by_name(bpf_object *obj, const char *name)'),
  map_name: lib.func('const char *bpf_map__name(bpf_map *map)'),
  map_fd: lib.func('int bpf_map__fd(bpf_map *map)'),
  map_set_pin_path: lib.func('int bpf_map__set_pin_path(bpf_map *map, const char *path)'),
  program_attach_cgroup: lib.func('bpf_link *bpf_program__attach_cgroup(bpf_program *prog, int cgroup_fd)'),
  program_attach: lib.func('bpf_link *bpf_program__attach(bpf_program *prog)'),
  link_pin: lib.func('int bpf_link__pin(bpf_link *link, const char *path)'),
  link_unpin: lib.func('int bpf_link__unpin(bpf_link *link)'),
  link_open: lib.func('bpf_link *bpf_link__open(const char *path)'),
  link_update_program: lib.func('int bpf_link__update_program(bpf_link *link, bpf_program *prog)'),
  link_fd: lib.func('int bpf_link__fd(bpf_link *link)'),
  link_destroy: lib.func('int bpf_link__destroy(bpf_link *link)'),
  link_detach: lib.func('int bpf_link_detach(int link_fd)'),
  map_lookup_elem: lib.func('int bpf_map_lookup_elem(int fd, const void *key, void *value)'),
  map_update_elem: lib.func('int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags)'),
  map_delete_elem: lib.func('int bpf_map_delete_elem(int fd, const void *key)'),
  map_lookup_and_delete_elem: lib.func('int bpf_map_lookup_and_delete_elem(int fd, const void *key, void *value)'),
  map_get_next_key: lib.func('int bpf_map_get_next_key(int fd, const void *key, void *next_key)'),
  obj_get: lib.func('int bpf_obj_get(const char *path)'),
  ring_buffer_new: lib.func('ring_buffer *ring_buffer__new(int map_fd, rg_ring_buffer_sample_fn *sample_cb, void *ctx, void *opts)'),
  ring_buffer_consume: lib.func('int ring_buffer__consume(ring_buffer *rb)'),
  ring_buffer_free: lib.func('void ring_buffer__free(ring_buffer *rb)'),
};

const libc = koffi.load('libc.so.6');
const libcClose = libc.func('int close(int fd)');
const libcStrerror = libc.func('const char *strerror(int errnum)');

export class BpfError extends Error {
  constructor(readonly call: string, readonly errno: number, detail: string) {
    super(`${call}${detail ? ` (${detail})` : ''}: ${libcStrerror(errno)} [errno ${errno}]`);
    this.name = 'BpfError';
  }
}

function check(call: string, rc: number, detail = ''): number {
  if (rc < 0) throw new BpfError(call, -rc, detail);
  return rc;
}

function checkPtr<T>(call: string, ptr: unknown, detail = ''): T {
  if (ptr === null) throw new BpfError(call, koffi.errno() || 22, detail);
  return ptr as T;
}

export const BPF_ANY = 0;
const ENOENT = 2;

export const libbpf = {
  openObject(path: string): BpfObject {
    return checkPtr('bpf_object__open_file', fn.object_open_file(path, null), path);
  },
  load(obj: BpfObject, what: string): void {
    check('bpf_object__load', fn.object_load(obj), `${what}; the verifier log is above on stderr`);
  },
  close(obj: BpfObject): void {
    fn.object_close(obj);
  },
  maps(obj: BpfObject): BpfMap[] {
    const maps: BpfMap[] = [];
    for (let m = fn.object_next_map(obj, null); m !== null; m = fn.object_next_map(obj, m)) maps.push(m);
    return maps;
  },
  mapName(map: BpfMap): string {
    return fn.map_name(map) as string;
  },
  mapFd(map: BpfMap): number {
    return check('bpf_map__fd', fn.map_fd(map), libbpf.mapName(map));
  },
  setPinPath(map: BpfMap, path: string): void {
    check('bpf_map__set_pin_path', fn.map_set_pin_path(map, path), path);
  },
  program(obj: BpfObject, name: string): BpfProgram {
    return checkPtr('bpf_object__find_program_by_name', fn.object_find_program(obj, name), name);
  },
  attachCgroup(prog: BpfProgram, cgroupFd: number, what: string): BpfLink {
    return checkPtr('bpf_program__attach_cgroup', fn.program_attach_cgroup(prog, cgroupFd), what);
  },
  attach(prog: BpfProgram, what: string): BpfLink {
    return checkPtr('bpf_program__attach', fn.program_attach(prog), what);
  },
  pinLink(link: BpfLink, path: string): void {
    check('bpf_link__pin', fn.link_pin(link, path), path);
  },
  unpinLink(link: BpfLink): void {
    check('bpf_link__unpin', fn.link_unpin(link));
  },
  /** Opens a pinned link; undefined when nothing is pinned there. */
  openPinnedLink(path: string): BpfLink | undefined {
    // Checked first so that libbpf does not print a warning for the normal first-start case.
    if (!existsSync(path)) return undefined;
    const link = fn.link_open(path);
    if (link === null) {
      const errno = koffi.errno();
      if (errno === ENOENT) return undefined;
      throw new BpfError('bpf_link__open', errno, path);
    }
    return link as BpfLink;
  },
  updateLinkProgram(link: BpfLink, prog: BpfProgram, what: string): void {
    check('bpf_link__update_program', fn.link_update_program(link, prog), what);
  },
  /** Detaches the link from its hook now, even if another fd or pin still holds it. */
  detachLink(link: BpfLink, what: string): void {
    check('bpf_link_detach', fn.link_detach(fn.link_fd(link)), what);
  },
  destroyLink(link: BpfLink): void {
    fn.link_destroy(link);
  },
  lookup(fd: number, key: Buffer, value: Buffer): boolean {
    const rc = fn.map_lookup_elem(fd, key, value) as number;
    if (rc === -ENOENT) return false;
    check('bpf_map_lookup_elem', rc);
    return true;
  },
  /** Looks up and removes in one step where the map type allows it. */
  take(fd: number, key: Buffer, value: Buffer): boolean {
    const rc = fn.map_lookup_and_delete_elem(fd, key, value) as number;
    if (rc === -ENOENT) return false;
    check('bpf_map_lookup_and_delete_elem', rc);
    return true;
  },
  update(fd: number, key: Buffer, value: Buffer, flags = BPF_ANY): void {
    check('bpf_map_update_elem', fn.map_update_elem(fd, key, value, flags));
  },
  delete(fd: number, key: Buffer): boolean {
    const rc = fn.map_delete_elem(fd, key) as number;
    if (rc === -ENOENT) return false;
    check('bpf_map_delete_elem', rc);
    return true;
  },
  /** Every key of a hash map (a snapshot; the map may change meanwhile). */
  keys(fd: number, keySize: number): Buffer[] {
    const out: Buffer[] = [];
    let prev: Buffer | null = null;
    for (;;) {
      const next = Buffer.alloc(keySize);
      const rc = fn.map_get_next_key(fd, prev, next) as number;
      if (rc === -ENOENT) return out;
      check('bpf_map_get_next_key', rc);
      out.push(next);
      prev = next;
    }
  },
  /** fd of a pinned object; undefined when nothing is pinned there. */
  objGet(path: string): number | undefined {
    const rc = fn.obj_get(path) as number;
    if (rc === -ENOENT) return undefined;
    return check('bpf_obj_get', rc, path);
  },
  closeFd(fd: number): void {
    libcClose(fd);
  },
  ringBufferNew(mapFd: number, cb: unknown): RingBuffer {
    return checkPtr('ring_buffer__new', fn.ring_buffer_new(mapFd, cb, null, null));
  },
  /** Drains every available record without blocking; returns how many were handled. */
  ringBufferConsume(rb: RingBuffer): number {
    return check('ring_buffer__consume', fn.ring_buffer_consume(rb));
  },
  ringBufferFree(rb: RingBuffer): void {
    fn.ring_buffer_free(rb);
  },
};
