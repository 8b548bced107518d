// gRPC service definitions for @grpc/grpc-js, built from the same protobufjs root as everything
// else, so the .proto files stay the only description of the wire.
import type { ServiceDefinition, MethodDefinition } from '@grpc/grpc-js';
import type protobuf from 'protobufjs';
import { root } from './index.js';

const CONVERSION: protobuf.IConversionOptions = { longs: Number, bytes: Buffer, defaults: true, arrays: true };

function codec<T>(typeName: string) {
  const type = root.lookupType(typeName);
  return {
    serialize: (value: T): Buffer => Buffer.from(type.encode(type.fromObject(value as Record<string, unknown>)).finish()),
    deserialize: (bytes: Buffer): T => type.toObject(type.decode(bytes), CONVERSION) as T,
  };
}

function method<Req, Res>(service: string, name: string, req: string, res: string, requestStream: boolean, responseStream: boolean): MethodDefinition<Req, Res> {
  const q = codec<Req>(`runguard.v1.${req}`);
  const r = codec<Res>(`runguard.v1.${res}`);
  return {
    path: `/runguard.v1.${service}/${name}`, requestStream, responseStream,
    requestSerialize: q.serialize, requestDeserialize: q.deserialize,
    responseSerialize: r.serialize, responseDeserialize: r.deserialize,
  };
}

export interface EventBatch {
  agentId: string;
  firstSeq: number;
  events: Buffer[];
  tipSignature: Buffer;
}

export interface BatchAck {
  firstSeq: number;
  lastSeq: number;
  firstIndex: number;
  lastIndex: number;
  newEvents: number;
  duplicates: number;
  error: string;
  expectedSeq: number;
}

export interface SignedCheckpoint { note: string }
export interface InclusionProofRequest { index: number; treeSize: number }
export interface ConsistencyProofRequest { fromSize: number; toSize: number }
export interface Proof { hashes: Buffer[]; leafHash: Buffer }

export const IngestService = {
  stream: method<EventBatch, BatchAck>('Ingest', 'Stream', 'EventBatch', 'BatchAck', true, true),
} satisfies ServiceDefinition;

export const LogService = {
  getCheckpoint: method<Record<string, never>, SignedCheckpoint>('Log', 'GetCheckpoint', 'CheckpointRequest', 'SignedCheckpoint', false, false),
  getInclusionProof: method<InclusionProofRequest, Proof>('Log', 'GetInclusionProof', 'InclusionProofRequest', 'Proof', false, false),
  getConsistencyProof: method<ConsistencyProofRequest, Proof>('Log', 'GetConsistencyProof', 'ConsistencyProofRequest', 'Proof', false, false),
} satisfies ServiceDefinition;
