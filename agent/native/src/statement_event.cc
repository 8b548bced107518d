#include "statement_event.h"

#include <math.h>
#include <string.h>

#include <algorithm>

#include "varint.h"

namespace {

uint32_t le32(const uint8_t* p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

bool is_digit(uint8_t b) { return b >= '0' && b <= '9'; }

// The longest run of ASCII digits in which neighbours are at most one ' ' or '-' apart: the
// redactor's digit-run hint (/\d(?:[ -]?\d){n-1}/) is found exactly when this reaches n.
uint32_t longest_digit_run(const uint8_t* p, size_t n) {
  uint32_t best = 0, run = 0;
  bool after_digit = false, after_sep = false;  // after a digit; after one separator that follows a digit
  for (size_t i = 0; i < n; i++) {
    uint8_t b = p[i];
    if (is_digit(b)) {
      run = (after_digit || after_sep) ? run + 1 : 1;
      if (run > best) best = run;
      after_digit = true, after_sep = false;
    } else if ((b == ' ' || b == '-') && after_digit) {
      after_digit = false, after_sep = true;
    } else {
      run = 0, after_digit = false, after_sep = false;
    }
  }
  return best;
}

// encode_statement sizes the Statement first and then writes it in place: its field 28 key and
// length go before the body, and writing the body first would mean moving it up afterwards.
// proto/wire-writer.ts: a string field is omitted when empty, a uint field when 0.
// Each put_* below has its *_len here, and encode_statement sizes with exactly the ones it writes with.
size_t bytes_field_len(uint32_t field, size_t n) { return varint_len(field << 3 | 2) + varint_len(n) + n; }
size_t string_field_len(uint32_t field, size_t n) { return n ? bytes_field_len(field, n) : 0; }
size_t uint_field_len(uint32_t field, uint64_t v) { return v ? varint_len(field << 3) + varint_len(v) : 0; }

uint8_t* put_raw(uint8_t* p, const void* src, size_t n) {
  memcpy(p, src, n);
  return p + n;
}

uint8_t* put_bytes_field(uint8_t* p, uint32_t field, const void* src, size_t n) {
  p = put_varint(p, field << 3 | 2);
  p = put_varint(p, n);
  return put_raw(p, src, n);
}

uint8_t* put_string_field(uint8_t* p, uint32_t field, const uint8_t* src, size_t n) { return n ? put_bytes_field(p, field, src, n) : p; }

uint8_t* put_uint_field(uint8_t* p, uint32_t field, uint64_t v) {
  if (!v) return p;
  p = put_varint(p, field << 3);
  return put_varint(p, v);
}

// agent/pg/messages.ts decodeCommandComplete's count: the last number of an INSERT tag ("INSERT oid
// rows"), the number of SELECT, UPDATE, DELETE, MERGE, MOVE, FETCH and COPY tags. *has: whether
// the tag carries one. False for a count past 15 digits (JavaScript would lose its precision).
bool tag_rows(const char* tag, size_t n, bool* has, uint64_t* rows) {
  *has = false;
  auto number = [&](size_t from, size_t to) {  // [from, to) all digits, non-empty
    if (from >= to) return false;
    for (size_t i = from; i < to; i++)
      if (!is_digit((uint8_t)tag[i])) return false;
    return true;
  };
  size_t sp = 0;
  while (sp < n && tag[sp] != ' ') sp++;
  if (sp == n) return true;
  std::string cmd(tag, sp);
  size_t from = sp + 1;
  if (cmd == "INSERT") {
    size_t sp2 = from;
    while (sp2 < n && tag[sp2] != ' ') sp2++;
    if (sp2 == n || !number(from, sp2)) return true;
    from = sp2 + 1;
  } else if (cmd != "SELECT" && cmd != "UPDATE" && cmd != "DELETE" && cmd != "MERGE" && cmd != "MOVE" && cmd != "FETCH" && cmd != "COPY") {
    return true;
  }
  if (!number(from, n)) return true;
  if (n - from > 15) return false;
  uint64_t v = 0;
  for (size_t i = from; i < n; i++) v = v * 10 + (uint64_t)(tag[i] - '0');
  *has = true;
  *rows = v;
  return true;
}

// ASCII upper case to lower case; every other byte as it is.
uint8_t fold(uint8_t b) { return (uint8_t)(b >= 'A' && b <= 'Z' ? b - 'A' + 'a' : b); }

// Sorts `entries` by first byte and sets at[b]..at[b + 1] to the range of those starting with b.
void index_by_first_byte(std::vector<std::string>* entries, std::vector<uint32_t>* at) {
  std::stable_sort(entries->begin(), entries->end(), [](const std::string& a, const std::string& b) { return (uint8_t)a[0] < (uint8_t)b[0]; });
  at->assign(257, 0);
  for (const std::string& e : *entries) (*at)[(uint8_t)e[0] + 1]++;
  for (size_t b = 1; b < 257; b++) (*at)[b] += (*at)[b - 1];
}

}  // namespace

bool RedactionPrecheck::parse(const uint8_t* p, size_t n) {
  needles.clear(), digit_runs.clear(), exact.clear();
  size_t at = 0;
  while (at < n) {
    if (n - at < 5) return false;
    uint8_t kind = p[at];
    uint32_t len = le32(p + at + 1);
    at += 5;
    if (kind == 1) {
      if (len == 0) return false;
      digit_runs.push_back(len);
      continue;
    }
    if (len > n - at || len == 0 || kind > 2) return false;
    std::string s(reinterpret_cast<const char*>(p + at), len);
    at += len;
    if (kind == 0) {
      for (char& c : s) {
        if ((uint8_t)c >= 0x80) return false;  // the JavaScript side folds ASCII case only: so must this
        c = (char)fold((uint8_t)c);
      }
      needles.push_back(std::move(s));
    } else {
      exact.push_back(std::move(s));
    }
  }
  index_by_first_byte(&needles, &needle_at_);
  index_by_first_byte(&exact, &exact_at_);
  index_pairs();
  return true;
}

void RedactionPrecheck::index_pairs() {
  memset(first_, 0, sizeof first_);
  pair_.assign(1, {});
  auto add = [&](const std::string& e) {
    uint8_t a = fold((uint8_t)e[0]);
    if (!first_[a]) {
      // Folded, a first byte is one of 230 values: a slot always fits in a byte.
      pair_.push_back({});
      first_[a] = (uint8_t)(pair_.size() - 1);
    }
    std::array<uint64_t, 4>& bits = pair_[first_[a]];
    if (e.size() == 1) {
      bits = {~0ull, ~0ull, ~0ull, ~0ull};
      return;
    }
    uint8_t b = fold((uint8_t)e[1]);
    bits[b >> 6] |= 1ull << (b & 63);
  };
  for (const std::string& e : needles) add(e);
  for (const std::string& e : exact) add(e);
}

bool RedactionPrecheck::clean(const uint8_t* text, size_t n) const {
  // A case-insensitive JavaScript RegExp without the u flag matches an ASCII letter only by the
  // same letter in either case (never a non-ASCII character that folds to it), and UTF-8 puts no
  // ASCII byte inside a multi-byte character: folding ASCII bytes is the same comparison.
  for (size_t i = 0; i < n; i++) {
    const uint8_t b = text[i];
    const size_t left = n - i;
    const uint8_t f = fold(b);
    const uint8_t slot = first_[f];
    if (!slot) continue;
    if (left > 1) {
      const uint8_t g = fold(text[i + 1]);
      if (!(pair_[slot][g >> 6] >> (g & 63) & 1)) continue;
    }
    for (uint32_t k = needle_at_[f]; k < needle_at_[f + 1]; k++) {
      const std::string& needle = needles[k];
      if (needle.size() > left) continue;
      size_t j = 1;
      while (j < needle.size() && fold(text[i + j]) == (uint8_t)needle[j]) j++;
      if (j == needle.size()) return false;
    }
    for (uint32_t k = exact_at_[b]; k < exact_at_[b + 1]; k++) {
      const std::string& form = exact[k];
      if (form.size() <= left && memcmp(text + i, form.data(), form.size()) == 0) return false;
    }
  }
  if (!digit_runs.empty()) {
    uint32_t run = longest_digit_run(text, n);
    for (uint32_t want : digit_runs)
      if (run >= want) return false;
  }
  return true;
}

bool StatementPieces::parse(const uint8_t* p, size_t n) {
  std::string* parts[] = {&head, &subject, &decision, &tail};
  size_t at = 0;
  for (std::string* part : parts) {
    if (n - at < 4) return false;
    uint32_t len = le32(p + at);
    at += 4;
    if (len > n - at) return false;
    part->assign(reinterpret_cast<const char*>(p + at), len);
    at += len;
  }
  return at == n;
}

bool values_clean(const RedactionPrecheck& check, const PgSlice& values) {
  static const uint8_t kNull[] = {'N', 'U', 'L', 'L'};
  if (values.n < 2) return false;
  size_t at = 2, count = 0;
  PgSlice v;
  bool null, null_checked = false;
  while (pg_next_value(values, &at, &v, &null)) {
    count++;
    if (null) {
      if (!null_checked && !check.clean(kNull, sizeof kNull)) return false;
      null_checked = true;
    } else if (!utf8_valid(v.p, v.n) || !check.clean(v.p, v.n)) {
      return false;
    }
  }
  return at == values.n && count == ((size_t)values.p[0] << 8 | values.p[1]);
}

bool encode_statement(const StatementPieces& t, const uint8_t* text, size_t text_len, const PgSlice* values, const uint8_t* complete,
                      size_t complete_len, double duration_ms, std::vector<uint8_t>* out) {
  // CommandComplete: one C string filling the body (decodeCommandComplete's soleCstr), printable ASCII.
  if (complete_len == 0 || complete[complete_len - 1] != 0) return false;
  const char* tag = reinterpret_cast<const char*>(complete);
  size_t tag_len = complete_len - 1;
  for (size_t i = 0; i < tag_len; i++)
    if (complete[i] < 0x20 || complete[i] > 0x7e) return false;
  bool has_rows;
  uint64_t rows = 0;
  if (!tag_rows(tag, tag_len, &has_rows, &rows)) return false;
  // handler.ts: Math.floor(durationMs * 1000), the same double arithmetic.
  double us = floor(duration_ms * 1000);
  if (!(us >= 0) || us > 9007199254740991.0) return false;

  // The Statement's fields in proto/session-events.ts order: head (1), text (2), subject (3, 4),
  // params (5, none for a simple query), decision (6), outcome (7 to 12), tail (13 to 16). Every
  // value goes in, empty ones too (a repeated field has no default to omit); NULL as 'NULL'.
  static const char kNull[] = {'N', 'U', 'L', 'L'};
  size_t values_len = 0;
  if (values) {
    size_t at = 2;
    PgSlice v;
    bool null;
    while (pg_next_value(*values, &at, &v, &null)) values_len += bytes_field_len(5, null ? sizeof kNull : v.n);
    if (at != values->n) return false;
  }
  const uint64_t row_count = has_rows ? rows : 0;
  const size_t body = t.head.size() + string_field_len(2, text_len) + t.subject.size() + values_len + t.decision.size() +
                      uint_field_len(7, row_count) + string_field_len(8, tag_len) + uint_field_len(9, (uint64_t)us) + t.tail.size();
  const size_t start = out->size(), total = varint_len(28 << 3 | 2) + varint_len(body) + body;
  out->resize(start + total);
  uint8_t* const first = out->data() + start;
  uint8_t* p = first;
  p = put_varint(p, 28 << 3 | 2);
  p = put_varint(p, body);
  p = put_raw(p, t.head.data(), t.head.size());
  p = put_string_field(p, 2, text, text_len);
  p = put_raw(p, t.subject.data(), t.subject.size());
  if (values) {
    size_t at = 2;
    PgSlice v;
    bool null;
    while (pg_next_value(*values, &at, &v, &null)) p = null ? put_bytes_field(p, 5, kNull, sizeof kNull) : put_bytes_field(p, 5, v.p, v.n);
  }
  p = put_raw(p, t.decision.data(), t.decision.size());
  p = put_uint_field(p, 7, row_count);
  p = put_string_field(p, 8, complete, tag_len);
  p = put_uint_field(p, 9, (uint64_t)us);
  p = put_raw(p, t.tail.data(), t.tail.size());
  // Sizing and writing follow the same rules; should they ever disagree (a bug), write nothing
  // rather than a wrong event. The property tests compare every byte with the handler's.
  if (p != first + total) {
    out->resize(start);
    return false;
  }
  return true;
}

namespace {

bool buffer_arg(napi_env env, napi_value v, const uint8_t** p, size_t* n) {
  void* data;
  if (napi_get_buffer_info(env, v, &data, n) != napi_ok) return false;
  *p = static_cast<const uint8_t*>(data);
  return true;
}

}  // namespace

napi_value statement_event_js(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  const uint8_t *pre, *pieces, *text, *complete, *vals = nullptr;
  size_t pre_n, pieces_n, text_n, complete_n, vals_n = 0;
  double ms;
  napi_valuetype vt = napi_undefined;
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok || argc < 5 || !buffer_arg(env, argv[0], &pre, &pre_n) ||
      !buffer_arg(env, argv[1], &pieces, &pieces_n) || !buffer_arg(env, argv[2], &text, &text_n) ||
      !buffer_arg(env, argv[3], &complete, &complete_n) || napi_get_value_double(env, argv[4], &ms) != napi_ok ||
      (argc > 5 && (napi_typeof(env, argv[5], &vt) != napi_ok || (vt != napi_undefined && !buffer_arg(env, argv[5], &vals, &vals_n))))) {
    napi_throw_type_error(env, nullptr, "statementEvent(precheck, pieces, text, complete, durationMs, values?)");
    return nullptr;
  }
  RedactionPrecheck check;
  StatementPieces t;
  std::vector<uint8_t> out;
  PgSlice values{vals, vals_n};
  const bool has_vals = argc > 5 && vt != napi_undefined;
  napi_value result;
  if (!check.parse(pre, pre_n) || !t.parse(pieces, pieces_n) || !utf8_valid(text, text_n) || !check.clean(text, text_n) ||
      (has_vals && !values_clean(check, values)) ||
      !encode_statement(t, text, text_n, has_vals ? &values : nullptr, complete, complete_n, ms, &out)) {
    napi_get_null(env, &result);
    return result;
  }
  napi_create_buffer_copy(env, out.size(), out.data(), nullptr, &result);
  return result;
}
