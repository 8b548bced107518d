// PostgreSQL message bodies checked and taken apart in native code, for the data path's decisions.
// The invariant: a body these functions accept is one the JavaScript decoder in agent/pg/messages.ts
// (as agent/pg/handler.ts uses it) accepts too, with the same fields. They may be stricter, never
// looser: whatever they refuse goes to the JavaScript handler, which reports it properly.
// `body` is the message after the type byte and the length; nothing past body+n is read.
#pragma once
#include <node_api.h>
#include <stddef.h>
#include <stdint.h>

struct PgSlice {
  const uint8_t* p;
  size_t n;
};

// Strict UTF-8 (RFC 3629: no overlongs, no encoded surrogates, nothing past U+10FFFF): exactly the
// byte strings that Buffer.toString('utf8') decodes without a replacement character.
bool utf8_valid(const uint8_t* p, size_t n);

// Frontend (job -> server). Names and SQL must be valid UTF-8 (stricter than the JS decoders, which
// map invalid bytes to U+FFFD: two byte strings must never name the same JS map key).
bool pg_query(const uint8_t* body, size_t n, PgSlice* sql);                             // 'Q'
bool pg_parse(const uint8_t* body, size_t n, PgSlice* name, PgSlice* sql);              // 'P'
// 'B'. *values, if asked for: the parameters as sent, checked ([u16 count], then per value an i32
// length, -1 for NULL, and that many bytes), for pg_next_value.
bool pg_bind(const uint8_t* body, size_t n, PgSlice* portal, PgSlice* statement, PgSlice* values = nullptr);
bool pg_execute(const uint8_t* body, size_t n, PgSlice* portal);                        // 'E'
// The next value of a values block pg_bind checked: *at starts at 2 (after the count). False when
// none is left; *null for a NULL (then *value is empty).
bool pg_next_value(const PgSlice& values, size_t* at, PgSlice* value, bool* null);
bool pg_close(const uint8_t* body, size_t n, uint8_t* kind, PgSlice* name);             // 'C' (kind 'S' or 'P')

// Backend (server -> job), after authentication: true when handler.ts's onServerFrame would relay the
// message without a protocol error: 'T' decodeRowDescription, 'D' checkDataRow, 'C'
// decodeCommandComplete, 'E' decodeErrorResponse, 'Z' decodeReadyForQuery all succeed; 'R' and 'K'
// are never accepted (the handler rejects them after authentication); other types are accepted as
// they are (the handler relays them unread).
bool pg_backend_ok(uint8_t type, const uint8_t* body, size_t n);

// JS: checkMessage(direction, type, body) => null when refused, else an object with the fields
// taken apart ({sql}, {name, sql}, {portal, statement}, {portal}, {kind, name}, or {} for backend).
// Strings are returned as Buffers of their bytes. For tests.
napi_value pgmsg_check_js(napi_env env, napi_callback_info info);
