// Statement shapes in native code: the byte-for-byte equivalent of shapeOf() in agent/pg/classify.ts,
// so the data path can tell that a statement has the shape of one the policy already allowed.
#pragma once
#include <node_api.h>
#include <stddef.h>
#include <stdint.h>
#include <string>

// The shape of `sql` (UTF-8) written to *out (replacing its contents): exactly the UTF-8 encoding of
// shapeOf(text) for the JavaScript string the bytes decode to. Returns false where shapeOf gives up,
// and also (stricter than shapeOf, never looser) for bytes that are not valid UTF-8 or hold a NUL.
bool pg_shape(const uint8_t* sql, size_t n, std::string* out);

// JS: shape(buf: Buffer) => Buffer | null. For tests.
napi_value shape_js(napi_env env, napi_callback_info info);
