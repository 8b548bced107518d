// Statement shapes: a port of scanShape() in agent/pg/classify.ts. The comment "Statement shapes"
// there says which subset of PostgreSQL's lexer is understood and why equal shapes classify alike;
// test/unit/native-shape.test.ts holds the two scanners to the same output.
//
// JS scans UTF-16 code units, this scans UTF-8 bytes. Every unit of a non-ASCII character is >= 128
// in both encodings, and the scanner only ever asks whether a unit is a given ASCII character or
// non-ASCII, so once the bytes are known to be valid UTF-8 both walk the same tokens.
#include "shape.h"

#include <string.h>

namespace {

// charCodeAt() past the end is NaN, which no test below matches; -1 plays that part.
inline int at(const uint8_t* s, size_t n, size_t i) {
  return i < n ? s[i] : -1;
}

inline bool is_ident_start(int c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 128;
}

inline bool is_digit(int c) {
  return c >= '0' && c <= '9';
}

inline bool is_ident_char(int c) {
  return is_ident_start(c) || is_digit(c) || c == '$';
}

inline bool is_space(int c) {
  return c == ' ' || (c >= '\t' && c <= '\r');
}

// Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), and no NUL: shapes are map
// keys, so two byte strings that decode to one JS string must not both get a shape, and a NUL could
// pass for half of a placeholder.
bool valid_utf8(const uint8_t* s, size_t n) {
  size_t i = 0;
  while (i < n) {
    uint8_t c = s[i];
    if (c >= 0x01 && c < 0x80) {
      i++;
      continue;
    }
    size_t len;
    uint8_t lo = 0x80, hi = 0xbf;  // allowed range of the second byte
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      if (c == 0xe0) lo = 0xa0;
      if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      if (c == 0xf0) lo = 0x90;
      if (c == 0xf4) hi = 0x8f;
    } else {
      return false;
    }
    if (n - i < len || s[i + 1] < lo || s[i + 1] > hi) return false;
    for (size_t k = 2; k < len; k++)
      if ((s[i + k] & 0xc0) != 0x80) return false;
    i += len;
  }
  return true;
}

// PostgreSQL makes an integer ICONST only when it fits in 32 signed bits.
const char* integer_kind(const uint8_t* s, size_t start, size_t end) {
  while (start < end - 1 && s[start] == '0') start++;
  size_t len = end - start;
  if (len < 10) return "\0i";
  if (len > 10) return "\0f";
  return memcmp(s + start, "2147483647", 10) <= 0 ? "\0i" : "\0f";
}

// Index just past the '...' or "..." opening at `open` (a doubled quote stands for itself), or 0 to
// give up: unterminated, a control character, or in strings a backslash, whose meaning depends on
// standard_conforming_strings.
size_t skip_quoted(const uint8_t* s, size_t n, size_t open, int quote, bool no_backslash) {
  for (size_t i = open + 1; i < n;) {
    int d = s[i];
    if (d == quote) {
      if (at(s, n, i + 1) != quote) return i + 1;
      i += 2;
      continue;
    }
    if ((no_backslash && d == '\\') || (d < 32 && !is_space(d))) return 0;
    i++;
  }
  return 0;
}

}  // namespace

bool pg_shape(const uint8_t* sql, size_t n, std::string* out, PgSpan* text) {
  out->clear();
  PgSpan span;
  bool any = false;
  if (!valid_utf8(sql, n)) return false;
  out->reserve(n);

  bool pending_space = false;
  bool last_was_string = false;
  size_t i = 0;
  while (i < n) {
    int c = sql[i];
    if (is_space(c)) {
      pending_space = true;
      i++;
      continue;
    }
    size_t start = i;
    bool is_string = false;
    // A literal is replaced by its placeholder; every other token is copied as it stands.
    const char* placeholder = nullptr;
    if (c == '-' && at(sql, n, i + 1) == '-') {
      i += 2;
      while (i < n && sql[i] != '\n' && sql[i] != '\r') i++;
      pending_space = true;
      continue;
    } else if (c == '/' && at(sql, n, i + 1) == '*') {
      // Comments nest, as in PostgreSQL.
      int depth = 1;
      i += 2;
      while (i < n && depth > 0) {
        int d = sql[i];
        if (d == '/' && at(sql, n, i + 1) == '*') {
          depth++;
          i += 2;
        } else if (d == '*' && at(sql, n, i + 1) == '/') {
          depth--;
          i += 2;
        } else {
          i++;
        }
      }
      if (depth > 0) return false;
      pending_space = true;
      continue;
    } else if (c == '\'') {
      // 'a'<newline>'b' is one literal: the separator would matter.
      if (last_was_string) return false;
      int prev = i > 0 ? sql[i - 1] : ' ';
      // E'' B'' X'' N'' U&'' and typed literals such as date'..'
      if (is_ident_char(prev) || prev == '&') return false;
      i = skip_quoted(sql, n, i, '\'', true);
      if (i == 0) return false;
      placeholder = "\0s";
      is_string = true;
    } else if (c == '"') {
      if (i > 0 && sql[i - 1] == '&') return false;  // U&"..."
      i = skip_quoted(sql, n, i, '"', false);
      if (i == 0) return false;
    } else if (is_ident_start(c)) {
      i++;
      while (i < n && is_ident_char(sql[i])) i++;
      int next = at(sql, n, i);
      if (next == '\'') return false;  // E'..', B'..', typed literal
      if (next == '&' && (at(sql, n, i + 1) == '\'' || at(sql, n, i + 1) == '"')) return false;
    } else if (is_digit(c)) {
      if (i > 0 && sql[i - 1] == '.') return false;  // .5, a.1
      while (i < n && is_digit(sql[i])) i++;
      if (at(sql, n, i) == '.') {
        if (!is_digit(at(sql, n, i + 1))) return false;  // 1. and 1..2
        i++;
        while (i < n && is_digit(sql[i])) i++;
        placeholder = "\0f";
      } else {
        placeholder = integer_kind(sql, start, i);
      }
      if (i < n) {
        int d = sql[i];
        // 1e5 0x1 1_0 1.2.3 1'x'
        if (is_ident_char(d) || d == '.' || d == '\'' || d == '"') return false;
      }
    } else if (c == '$') {
      i++;
      if (!is_digit(at(sql, n, i))) return false;  // $tag$ and $$
      while (i < n && is_digit(sql[i])) i++;
      if (i < n && (is_ident_char(sql[i]) || sql[i] == '.')) return false;
    } else if (c == '\\' || c < 32 || c == 127) {
      return false;
    } else if (c == '&' && (at(sql, n, i + 1) == '\'' || at(sql, n, i + 1) == '"')) {
      return false;
    } else {
      // Operators and punctuation, one character per token.
      i++;
    }
    // The separator goes only between tokens; every token is non-empty, so an empty *out means none yet.
    if (pending_space && !out->empty()) out->push_back(' ');
    pending_space = false;
    if (placeholder)
      out->append(placeholder, 2);
    else
      out->append(reinterpret_cast<const char*>(sql + start), i - start);
    last_was_string = is_string;
    if (!any) span.start = (uint32_t)start, any = true;
    if (!(i - start == 1 && c == ';')) span.end = (uint32_t)i;
  }
  if (text) *text = span;
  return true;
}

napi_value shape_js(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok) return nullptr;
  bool is_buffer = false;
  if (argc < 1 || napi_is_buffer(env, argv[0], &is_buffer) != napi_ok || !is_buffer) {
    napi_throw_type_error(env, nullptr, "shape: expected a Buffer");
    return nullptr;
  }
  void* data;
  size_t len;
  if (napi_get_buffer_info(env, argv[0], &data, &len) != napi_ok) return nullptr;
  // Optional: a Uint32Array of 2 that gets the text span.
  uint32_t* span_out = nullptr;
  if (argc >= 2) {
    bool is_typed = false;
    napi_typedarray_type type;
    size_t n = 0;
    void* p = nullptr;
    if (napi_is_typedarray(env, argv[1], &is_typed) != napi_ok || !is_typed ||
        napi_get_typedarray_info(env, argv[1], &type, &n, &p, nullptr, nullptr) != napi_ok || type != napi_uint32_array || n < 2) {
      napi_throw_type_error(env, nullptr, "shape: the span must be a Uint32Array of 2");
      return nullptr;
    }
    span_out = static_cast<uint32_t*>(p);
  }

  std::string shape;
  PgSpan span;
  napi_value result;
  if (!pg_shape(static_cast<const uint8_t*>(data), len, &shape, &span)) {
    napi_get_null(env, &result);
    return result;
  }
  if (span_out) span_out[0] = span.start, span_out[1] = span.end;
  if (napi_create_buffer_copy(env, shape.size(), shape.data(), nullptr, &result) != napi_ok) return nullptr;
  return result;
}
