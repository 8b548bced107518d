// @peculiar/x509 registers its algorithm providers with tsyringe, which refuses to load unless a
// Reflect metadata API exists (the `reflect-metadata` package, which is not installed here). The
// x509 code never emits decorator metadata, so tsyringe only ever reads "design:paramtypes" (gets
// undefined) and stores its own injection-token table. This installs the three functions it calls,
// backed by a WeakMap, and only when nothing else has installed a real implementation.
//
// Import this module before '@peculiar/x509' (ES modules evaluate their imports in order); only
// ./x509.ts does, and everything else imports x509 from there.
type MetadataKey = string | symbol;
type Target = object;

interface ReflectMetadata {
  getMetadata?: (key: MetadataKey, target: Target) => unknown;
  getOwnMetadata?: (key: MetadataKey, target: Target) => unknown;
  defineMetadata?: (key: MetadataKey, value: unknown, target: Target) => void;
}

const R = Reflect as unknown as ReflectMetadata;
if (typeof R.getMetadata !== 'function') {
  const store = new WeakMap<Target, Map<MetadataKey, unknown>>();
  R.defineMetadata = (key, value, target) => {
    let m = store.get(target);
    if (!m) store.set(target, (m = new Map()));
    m.set(key, value);
  };
  R.getOwnMetadata = (key, target) => store.get(target)?.get(key);
  R.getMetadata = (key, target) => {
    for (let o: Target | null = target; o !== null && o !== undefined; o = Object.getPrototypeOf(o) as Target | null) {
      const m = store.get(o);
      if (m?.has(key)) return m.get(key);
    }
    return undefined;
  };
}

export {};
