// The collector's Merkle core: RFC 6962/9162 hashing, proofs, C2SP tlog-tiles and checkpoints.
// Pure functions; the only I/O is what callers' node and tile callbacks do.
export * from './result.js';
export { HASH_SIZE, leafHash, nodeHash, emptyRoot, hashEqual, hex } from './hash.js';
export * from './proof.js';
export * from './compact.js';
export * from './tiles.js';
export * from './checkpoint.js';
