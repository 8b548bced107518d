// Native twins of the decoders in agent/pg/messages.ts (see pgmsg.h for the contract). Every length
// and count in a body comes from the peer, so each is compared with the bytes that remain, as a
// distance (never by forming a pointer past the end), before anything is read through it.
#include "pgmsg.h"

#include <string.h>

bool utf8_valid(const uint8_t* p, size_t n) {
  const uint8_t* q = p;
  const uint8_t* end = p + n;
  while (q < end) {
    // SQL text is mostly ASCII and can be long: skip 8 plain bytes (high bit clear) at a time.
    while (static_cast<size_t>(end - q) >= 8) {
      uint64_t w;
      memcpy(&w, q, 8);
      if (w & 0x8080808080808080ull) break;
      q += 8;
    }
    if (q == end) break;
    const uint8_t c = *q;
    if (c < 0x80) {
      q++;
      continue;
    }
    // The first continuation byte's range depends on the lead byte (Unicode Table 3-7).
    size_t more;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      more = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      more = 2;
      if (c == 0xE0) lo = 0xA0;       // overlong
      else if (c == 0xED) hi = 0x9F;  // surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      more = 3;
      if (c == 0xF0) lo = 0x90;       // overlong
      else if (c == 0xF4) hi = 0x8F;  // past U+10FFFF
    } else {
      return false;  // a continuation byte, an overlong C0/C1, or F5..FF
    }
    if (static_cast<size_t>(end - q) <= more) return false;  // cut off
    if (q[1] < lo || q[1] > hi) return false;
    for (size_t i = 2; i <= more; i++) {
      if ((q[i] & 0xC0) != 0x80) return false;
    }
    q += more + 1;
  }
  return true;
}

namespace {

// A cursor over [p, end): the body never leaves these bounds.
struct Reader {
  const uint8_t* p;
  const uint8_t* end;

  size_t left() const { return static_cast<size_t>(end - p); }

  bool u16(uint32_t* v) {
    if (left() < 2) return false;
    *v = static_cast<uint32_t>(p[0]) << 8 | p[1];
    p += 2;
    return true;
  }

  bool i32(int32_t* v) {
    if (left() < 4) return false;
    *v = static_cast<int32_t>(static_cast<uint32_t>(p[0]) << 24 | static_cast<uint32_t>(p[1]) << 16 |
                              static_cast<uint32_t>(p[2]) << 8 | p[3]);
    p += 4;
    return true;
  }

  bool skip(size_t n) {
    if (left() < n) return false;
    p += n;
    return true;
  }

  // readCstr(): everything up to the first NUL, which must lie inside the body. No encoding check:
  // for the fields read this way the JS decoder's U+FFFD is harmless (they are never keys).
  bool cstr() {
    const void* nul = left() ? memchr(p, 0, left()) : nullptr;
    if (!nul) return false;
    p = static_cast<const uint8_t*>(nul) + 1;
    return true;
  }

  // readCstr() for names and SQL, which must also be valid UTF-8 (utf8_valid): then, and only then,
  // the bytes and the JS string they decode to determine each other. A NUL never hides inside a
  // multi-byte sequence (continuation bytes are 0x80..0xBF), so the first NUL ends the string.
  bool utf8_cstr(PgSlice* out) {
    const void* nul = left() ? memchr(p, 0, left()) : nullptr;
    if (!nul) return false;
    const uint8_t* q = static_cast<const uint8_t*>(nul);
    if (!utf8_valid(p, static_cast<size_t>(q - p))) return false;
    out->p = p;
    out->n = static_cast<size_t>(q - p);
    p = q + 1;
    return true;
  }

  // readFormats(): a count, then that many int16 codes, each 0 (text) or 1 (binary).
  bool formats(uint32_t* count) {
    if (!u16(count) || left() < 2 * static_cast<size_t>(*count)) return false;
    for (uint32_t i = 0; i < *count; i++, p += 2) {
      if (p[0] != 0 || p[1] > 1) return false;
    }
    return true;
  }

  // Bind parameters and DataRow columns: an int32 length each, -1 for NULL, other negatives refused.
  bool values(uint32_t count) {
    for (uint32_t i = 0; i < count; i++) {
      int32_t len;
      if (!i32(&len)) return false;
      if (len == -1) continue;
      if (len < 0 || !skip(static_cast<size_t>(len))) return false;
    }
    return true;
  }

  // trailing(): the server's pq_getmsgend() refuses leftovers, so the decoders do too.
  bool done() const { return p == end; }
};

Reader reader(const uint8_t* body, size_t n) { return Reader{body, body + n}; }

}  // namespace

bool pg_query(const uint8_t* body, size_t n, PgSlice* sql) {
  // soleCstr(): the first NUL must be the last byte, so a NUL inside the text is refused as well.
  Reader r = reader(body, n);
  return r.utf8_cstr(sql) && r.done();
}

bool pg_parse(const uint8_t* body, size_t n, PgSlice* name, PgSlice* sql) {
  Reader r = reader(body, n);
  uint32_t types;
  return r.utf8_cstr(name) && r.utf8_cstr(sql) && r.u16(&types) && r.skip(4 * static_cast<size_t>(types)) &&
         r.done();
}

bool pg_bind(const uint8_t* body, size_t n, PgSlice* portal, PgSlice* statement, PgSlice* values) {
  Reader r = reader(body, n);
  uint32_t param_formats, params, result_formats;
  if (!r.utf8_cstr(portal) || !r.utf8_cstr(statement) || !r.formats(&param_formats)) return false;
  const uint8_t* first = r.p;
  if (!r.u16(&params)) return false;
  // One code applies to all parameters; more must be one per parameter.
  if (param_formats > 1 && param_formats != params) return false;
  if (!r.values(params)) return false;
  if (values) *values = PgSlice{first, static_cast<size_t>(r.p - first)};
  return r.formats(&result_formats) && r.done();
}

bool pg_next_value(const PgSlice& values, size_t* at, PgSlice* value, bool* null) {
  // The block was checked by pg_bind: each length is -1 or fits in what remains. Checked again all
  // the same, as distances, so that a block from anywhere else cannot lead outside it.
  if (*at >= values.n || values.n - *at < 4) return false;
  const uint8_t* p = values.p + *at;
  int32_t len = static_cast<int32_t>(static_cast<uint32_t>(p[0]) << 24 | static_cast<uint32_t>(p[1]) << 16 |
                                     static_cast<uint32_t>(p[2]) << 8 | p[3]);
  *at += 4;
  *null = len == -1;
  if (*null) {
    *value = PgSlice{p + 4, 0};
    return true;
  }
  if (len < 0 || static_cast<size_t>(len) > values.n - *at) return false;
  *value = PgSlice{p + 4, static_cast<size_t>(len)};
  *at += static_cast<size_t>(len);
  return true;
}

bool pg_execute(const uint8_t* body, size_t n, PgSlice* portal) {
  // The row limit is any int32: the JS decoder takes negatives too (the server reads <= 0 as "all").
  Reader r = reader(body, n);
  return r.utf8_cstr(portal) && r.skip(4) && r.done();
}

bool pg_close(const uint8_t* body, size_t n, uint8_t* kind, PgSlice* name) {
  if (n < 1 || (body[0] != 'S' && body[0] != 'P')) return false;
  Reader r = reader(body + 1, n - 1);
  if (!r.utf8_cstr(name) || !r.done()) return false;
  *kind = body[0];
  return true;
}

static bool row_description_ok(const uint8_t* body, size_t n) {
  Reader r = reader(body, n);
  uint32_t fields;
  if (!r.u16(&fields)) return false;
  for (uint32_t i = 0; i < fields; i++) {
    // Name, then table OID, column number, type OID, type size, type modifier, format: 18 bytes, none
    // of them checked by the JS decoder (not even the format code).
    if (!r.cstr() || !r.skip(18)) return false;
  }
  return r.done();
}

static bool data_row_ok(const uint8_t* body, size_t n) {
  Reader r = reader(body, n);
  uint32_t columns;
  return r.u16(&columns) && r.values(columns) && r.done();
}

static bool error_response_ok(const uint8_t* body, size_t n) {
  // Fields are a code byte and a C string each, until a zero code; any code, repeated or not, goes.
  Reader r = reader(body, n);
  for (;;) {
    if (r.left() == 0) return false;
    if (*r.p++ == 0) return r.done();
    if (!r.cstr()) return false;
  }
}

bool pg_backend_ok(uint8_t type, const uint8_t* body, size_t n) {
  switch (type) {
    case 'T': return row_description_ok(body, n);
    case 'D': return data_row_ok(body, n);
    case 'C': {
      // soleCstr(); the tag's parsing into command and row count cannot fail.
      Reader r = reader(body, n);
      return r.cstr() && r.done();
    }
    case 'E': return error_response_ok(body, n);
    case 'Z': return n == 1 && (body[0] == 'I' || body[0] == 'T' || body[0] == 'E');
    case 'R':
    case 'K': return false;
    default: return true;
  }
}

// ---------------------------------------------------------------------------------------------------
// The test hook

namespace {

napi_value type_error(napi_env env, const char* msg) {
  napi_throw_type_error(env, nullptr, msg);
  return nullptr;
}

// Sets obj[key] to a Buffer holding a copy of the slice's bytes; false with an exception pending.
bool set_bytes(napi_env env, napi_value obj, const char* key, PgSlice s) {
  napi_value buf;
  void* data;
  return napi_create_buffer_copy(env, s.n, s.p, &data, &buf) == napi_ok &&
         napi_set_named_property(env, obj, key, buf) == napi_ok;
}

}  // namespace

napi_value pgmsg_check_js(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok) return nullptr;
  if (argc < 3) return type_error(env, "checkMessage(direction, type, body): 3 arguments expected");

  char dir[16];
  size_t dir_len = 0;
  if (napi_get_value_string_utf8(env, argv[0], dir, sizeof dir, &dir_len) != napi_ok) {
    return type_error(env, "direction must be 'frontend' or 'backend'");
  }
  const bool frontend = dir_len == 8 && memcmp(dir, "frontend", 8) == 0;
  if (!frontend && !(dir_len == 7 && memcmp(dir, "backend", 7) == 0)) {
    return type_error(env, "direction must be 'frontend' or 'backend'");
  }

  double type_num;
  if (napi_get_value_double(env, argv[1], &type_num) != napi_ok || !(type_num >= 0 && type_num <= 255) ||
      type_num != static_cast<double>(static_cast<int>(type_num))) {
    return type_error(env, "type must be a byte value (0..255)");
  }
  const uint8_t type = static_cast<uint8_t>(type_num);

  bool is_buffer = false;
  if (napi_is_buffer(env, argv[2], &is_buffer) != napi_ok || !is_buffer) return type_error(env, "body must be a Buffer");
  void* data;
  size_t n;
  if (napi_get_buffer_info(env, argv[2], &data, &n) != napi_ok) return nullptr;
  const uint8_t* body = static_cast<const uint8_t*>(data);

  napi_value null_value, obj;
  if (napi_get_null(env, &null_value) != napi_ok) return nullptr;

  if (!frontend) {
    if (!pg_backend_ok(type, body, n)) return null_value;
    return napi_create_object(env, &obj) == napi_ok ? obj : nullptr;
  }

  PgSlice a{}, b{};
  uint8_t kind = 0;
  bool ok;
  switch (type) {
    case 'Q': ok = pg_query(body, n, &a); break;
    case 'P': ok = pg_parse(body, n, &a, &b); break;
    case 'B': ok = pg_bind(body, n, &a, &b); break;
    case 'E': ok = pg_execute(body, n, &a); break;
    case 'C': ok = pg_close(body, n, &kind, &a); break;
    default: return null_value;
  }
  if (!ok) return null_value;
  if (napi_create_object(env, &obj) != napi_ok) return nullptr;
  switch (type) {
    case 'Q': ok = set_bytes(env, obj, "sql", a); break;
    case 'P': ok = set_bytes(env, obj, "name", a) && set_bytes(env, obj, "sql", b); break;
    case 'B': ok = set_bytes(env, obj, "portal", a) && set_bytes(env, obj, "statement", b); break;
    case 'E': ok = set_bytes(env, obj, "portal", a); break;
    default: {
      napi_value k;
      const char s = static_cast<char>(kind);
      ok = napi_create_string_utf8(env, &s, 1, &k) == napi_ok && napi_set_named_property(env, obj, "kind", k) == napi_ok &&
           set_bytes(env, obj, "name", a);
    }
  }
  return ok ? obj : nullptr;
}
