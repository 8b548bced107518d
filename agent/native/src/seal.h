// Spool record sealing in one call: the record framing of agent/events/record-format.ts plus the
// event's SHA-256 chain hash. The JavaScript path pays three native calls and two allocations per
// event for the same work (zlib's crc32, the payload copy, crypto's one-shot hash); this is one.
#pragma once
#include <node_api.h>
#include <stddef.h>
#include <stdint.h>

// Whether the process exports what sealing needs (see seal.cc); nothing below works without it.
bool seal_ready();

// Frames a payload already written at rec + 8 ([u32 LE length][u32 LE crc32] into rec[0..8)) and
// writes its sha256 into hash_out[0..32). The caller checked seal_ready() and the bounds.
void seal_in_place(uint8_t* rec, size_t payload_len, uint8_t* hash_out);

// JS: sealRecord(target: Buffer, offset: number, payload: Uint8Array, hashOut: Buffer) => number.
// Writes [u32 LE length][u32 LE crc32][payload] at target[offset], sha256(payload) into
// hashOut[0..32), and returns the offset after the record. Throws a RangeError if it does not fit.
napi_value seal_record_js(napi_env env, napi_callback_info info);

// JS: sealAvailable() => boolean. False if the process exports no SHA256_Init/Update/Final or crc32 (see seal.cc).
napi_value seal_available_js(napi_env env, napi_callback_info info);
