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
//
// *text, when given, gets the byte range from the first token to the end of the last token that is
// not a ';': for a text of one statement, that statement's text as classify() reports it (see
// CachedOp.whole in classify.ts, which says for which shapes that holds).
struct PgSpan {
  uint32_t start = 0, end = 0;
};
bool pg_shape(const uint8_t* sql, size_t n, std::string* out, PgSpan* text = nullptr);

// JS: shape(buf: Buffer, span?: Uint32Array) => Buffer | null; span gets [start, end]. For tests.
napi_value shape_js(napi_env env, napi_callback_info info);
