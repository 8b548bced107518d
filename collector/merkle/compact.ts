// Append-only tree state: the hashes of the perfect subtrees that make up the tree of the current
// size (at most 53 of them), enough to append leaves and compute the root in O(log n) memory. Each
// append reports every perfect node it completes, so a store can keep exactly the nodes (or tiles)
// that provers need. Also an in-memory node store for tests and small tools.
import { isIndex } from './bits.js';
import { emptyRoot, HASH_SIZE, nodeHash } from './hash.js';
import { foldNodes, perfectNodes, type NodeGetter } from './proof.js';

/** Called for each perfect node completed by an append, bottom-up, starting with the leaf (level 0). */
export type NodeSink = (level: number, index: number, hash: Uint8Array) => void;

export class TreeBuilder {
  #size = 0;
  // Perfect subtrees covering [0, size), left to right, strictly decreasing levels.
  #frontier: { level: number; hash: Uint8Array }[] = [];

  /** Restores the state of a tree of `size` leaves from stored perfect nodes. */
  static async fromNodes(size: number, getNode: NodeGetter): Promise<TreeBuilder> {
    if (!isIndex(size)) throw new RangeError(`bad tree size ${size}`);
    const ids = perfectNodes(0, size);
    return TreeBuilder.#restore(size, await Promise.all(ids.map(({ level, index }) => getNode(level, index))));
  }

  /** Like fromNodes, for a synchronous store (e.g. better-sqlite3). */
  static fromNodesSync(size: number, getNode: (level: number, index: number) => Uint8Array): TreeBuilder {
    if (!isIndex(size)) throw new RangeError(`bad tree size ${size}`);
    const hashes = perfectNodes(0, size).map(({ level, index }) => {
      const h: unknown = getNode(level, index);
      if (h instanceof Promise) throw new TypeError('fromNodesSync needs a synchronous node getter; use fromNodes');
      return h as Uint8Array;
    });
    return TreeBuilder.#restore(size, hashes);
  }

  static #restore(size: number, hashes: Uint8Array[]): TreeBuilder {
    const ids = perfectNodes(0, size);
    const b = new TreeBuilder();
    b.#frontier = ids.map(({ level, index }, i) => {
      const hash = hashes[i]!;
      if (!(hash instanceof Uint8Array) || hash.length !== HASH_SIZE) {
        throw new Error(`node (${level}, ${index}) is not a ${HASH_SIZE}-byte hash`);
      }
      return { level, hash };
    });
    b.#size = size;
    return b;
  }

  /** An independent copy: append to it, and keep it only if the appended leaves were committed. */
  clone(): TreeBuilder {
    const b = new TreeBuilder();
    b.#frontier = this.#frontier.slice();
    b.#size = this.#size;
    return b;
  }

  get size(): number {
    return this.#size;
  }

  /** Appends one leaf hash; returns its index. */
  append(leafHash: Uint8Array, onNode?: NodeSink): number {
    if (leafHash.length !== HASH_SIZE) throw new RangeError(`leaf hash has ${leafHash.length} bytes, expected ${HASH_SIZE}`);
    if (this.#size >= Number.MAX_SAFE_INTEGER) throw new RangeError('tree is full');
    const leafIndex = this.#size;
    let hash = leafHash;
    let level = 0;
    let index = leafIndex;
    onNode?.(0, index, hash);
    for (;;) {
      const top = this.#frontier[this.#frontier.length - 1];
      if (!top || top.level !== level) break;
      this.#frontier.pop();
      hash = nodeHash(top.hash, hash);
      level++;
      index = Math.floor(index / 2);
      onNode?.(level, index, hash);
    }
    this.#frontier.push({ level, hash });
    this.#size++;
    return leafIndex;
  }

  /** The root of the tree of the current size. */
  root(): Uint8Array {
    if (this.#frontier.length === 0) return emptyRoot();
    return foldNodes(this.#frontier.map((f) => f.hash));
  }
}

/** Every perfect node of a tree in memory. For tests, tools and small trees. */
export class MemoryTree {
  readonly #builder = new TreeBuilder();
  readonly #levels: Uint8Array[][] = [];

  get size(): number {
    return this.#builder.size;
  }

  append(leafHash: Uint8Array): number {
    return this.#builder.append(leafHash, (level, index, hash) => {
      (this.#levels[level] ??= [])[index] = hash;
    });
  }

  root(): Uint8Array {
    return this.#builder.root();
  }

  /** The perfect node (level, index); throws if the tree does not have it yet. */
  readonly getNode = (level: number, index: number): Uint8Array => {
    const h = this.#levels[level]?.[index];
    if (!h) throw new RangeError(`no node (${level}, ${index}) in a tree of size ${this.size}`);
    return h;
  };
}
