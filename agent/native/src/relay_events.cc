#include "relay_events.h"

#include <stdint.h>
#include <string.h>

#include <string>
#include <unordered_map>

#include "napi_args.h"
#include "relay_records.h"
#include "seal.h"
#include "varint.h"

using namespace relay_records;

namespace {

// runguard.v1.AuditEvent keys (proto/runguard/v1/events.proto; proto/session-events.ts F) and the
// record header of agent/events/record-format.ts.
constexpr uint8_t kKeySeq = 2 << 3 | 0, kKeyPrevHash = 3 << 3 | 2, kKeyTime = 4 << 3 | 2, kKeyKind = 5 << 3 | 0, kKeyRequestId = 7 << 3 | 2;
constexpr uint8_t kKeySeconds = 1 << 3 | 0, kKeyNanos = 2 << 3 | 0;
constexpr size_t kRecordHeader = 8, kHash = 32;

struct Fields {
  uint32_t sink = 0;       // which spool (agent/native/relay.ts EventSealer.sink)
  std::string session_id;  // field 6, key and length included
  std::string identity;    // fields 8 to 11
  napi_ref tally_ref = nullptr;  // keeps the handler's Float64Array (and so `tally`) alive
  double* tally = nullptr;
};

// Touched only on the JavaScript thread (every entry point below is a JS call).
std::unordered_map<uint32_t, Fields>& sessions() {
  static std::unordered_map<uint32_t, Fields> m;
  return m;
}

void forget(napi_env env, uint32_t id) {
  auto it = sessions().find(id);
  if (it == sessions().end()) return;
  napi_delete_reference(env, it->second.tally_ref);
  sessions().erase(it);
}

// The decimal digits of a request id (String(n) for a safe integer n >= 1).
size_t decimal(uint64_t v, char* out) {
  char tmp[24];
  size_t n = 0;
  do tmp[n++] = (char)('0' + v % 10), v /= 10;
  while (v);
  for (size_t i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
  return n;
}

}  // namespace

napi_value relay_events_register_js(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  double id, sink;
  void *sid, *ident, *tally;
  size_t sid_len, ident_len, tally_len;
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok || argc < 5 || !safe_uint_arg(env, argv[0], &id) || id > UINT32_MAX ||
      !safe_uint_arg(env, argv[1], &sink) || sink > UINT32_MAX || !typed_array_arg(env, argv[2], napi_uint8_array, &sid, &sid_len) ||
      !typed_array_arg(env, argv[3], napi_uint8_array, &ident, &ident_len) || !typed_array_arg(env, argv[4], napi_float64_array, &tally, &tally_len) ||
      tally_len < kTallySlots) {
    napi_throw_type_error(env, nullptr,
                          "relayEventsRegister(id: number, sink: number, sessionIdField: Uint8Array, identityFields: Uint8Array, tally: Float64Array(6))");
    return nullptr;
  }
  forget(env, (uint32_t)id);
  Fields f;
  f.sink = (uint32_t)sink;
  f.session_id.assign(static_cast<const char*>(sid), sid_len);
  f.identity.assign(static_cast<const char*>(ident), ident_len);
  f.tally = static_cast<double*>(tally);
  if (napi_create_reference(env, argv[4], 1, &f.tally_ref) != napi_ok) {
    napi_throw_error(env, nullptr, "relayEventsRegister: cannot keep the tally");
    return nullptr;
  }
  sessions().emplace((uint32_t)id, std::move(f));
  return nullptr;
}

napi_value relay_events_forget_js(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  double id;
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok || argc < 1 || !safe_uint_arg(env, argv[0], &id) || id > UINT32_MAX) {
    napi_throw_type_error(env, nullptr, "relayEventsForget(id: number)");
    return nullptr;
  }
  forget(env, (uint32_t)id);
  return nullptr;
}

napi_value relay_events_seal_js(napi_env env, napi_callback_info info) {
  size_t argc = 13;
  napi_value argv[13];
  napi_value* a = argv + 1;
  void *batch_v, *slab_v, *chain_v, *agent_v, *out_v;
  size_t batch_len, slab_len, chain_len, agent_len, out_len;
  double sink_d, offset_d, pos_d, room_d, max_d, seq_d, time_d, kind_d;
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok || argc < 13 || !safe_uint_arg(env, argv[0], &sink_d) ||
      !typed_array_arg(env, a[0], napi_uint8_array, &batch_v, &batch_len) || !safe_uint_arg(env, a[1], &offset_d) ||
      !typed_array_arg(env, a[2], napi_uint8_array, &slab_v, &slab_len) || !safe_uint_arg(env, a[3], &pos_d) || !safe_uint_arg(env, a[4], &room_d) ||
      !safe_uint_arg(env, a[5], &max_d) || !typed_array_arg(env, a[6], napi_uint8_array, &chain_v, &chain_len) ||
      !typed_array_arg(env, a[7], napi_uint8_array, &agent_v, &agent_len) || !safe_uint_arg(env, a[8], &seq_d) || !safe_uint_arg(env, a[9], &time_d) ||
      !safe_uint_arg(env, a[10], &kind_d) || kind_d > 0x7fffffff || !typed_array_arg(env, a[11], napi_float64_array, &out_v, &out_len) || out_len < 4 ||
      chain_len < kHash) {
    napi_throw_type_error(env, nullptr,
                          "relayEventsSeal(sink, batch, offset, slab, pos, room, maxEventBytes, chainHash, agentIdField, seq, timeMs, kind, "
                          "out: Float64Array(4))");
    return nullptr;
  }
  if (!seal_ready()) {
    napi_throw_error(env, nullptr, "relayEventsSeal: this node exports no SHA256_Init/Update/Final or crc32 (see sealAvailable)");
    return nullptr;
  }
  const uint8_t* batch = static_cast<const uint8_t*>(batch_v);
  uint8_t* slab = static_cast<uint8_t*>(slab_v);
  uint8_t* chain = static_cast<uint8_t*>(chain_v);
  const uint8_t* agent = static_cast<const uint8_t*>(agent_v);
  double* out = static_cast<double*>(out_v);
  // Nothing from JavaScript is trusted to be in bounds: the slab window is clamped to the slab,
  // and every record length is checked against the batch before it is read.
  size_t off = offset_d < (double)batch_len ? (size_t)offset_d : batch_len;
  size_t pos = pos_d < (double)slab_len ? (size_t)pos_d : slab_len;
  size_t end = pos + (room_d < (double)(slab_len - pos) ? (size_t)room_d : slab_len - pos);
  const size_t max_event = (size_t)max_d;
  uint64_t seq = (uint64_t)seq_d;
  const uint32_t kind = (uint32_t)kind_d;
  const uint64_t time_ms = (uint64_t)time_d;
  uint8_t time_field[2 + 2 * 11];
  uint8_t* t = time_field + 2;
  if (time_ms / 1000) *t++ = kKeySeconds, t = put_varint(t, time_ms / 1000);
  if (time_ms % 1000) *t++ = kKeyNanos, t = put_varint(t, time_ms % 1000 * 1000000);
  time_field[0] = kKeyTime;
  time_field[1] = (uint8_t)(t - time_field - 2);  // at most 2 + 2 * 10 bytes: one length byte
  const size_t time_len = (size_t)(t - time_field);
  const size_t kind_len = kind ? 1 + varint_len(kind) : 0;
  uint64_t written = 0;
  // The framed size of a record that stopped the run for want of room alone: the spool makes room
  // (a new group, slab or segment) and calls again, where the handler would append it itself.
  size_t needs = 0;
  auto& table = sessions();

  while (batch_len - off >= sizeof(RecordHeader)) {
    RecordHeader h;
    memcpy(&h, batch + off, sizeof h);
    if (h.len > batch_len - off - sizeof h) break;
    const uint8_t* body = batch + off + sizeof h;
    if (h.kind != kEvent && h.kind != kSkip) break;
    auto it = table.find(h.id);
    if (it == table.end() || it->second.sink != sink_d) break;
    Fields& f = it->second;
    double* tally = f.tally;
    if (h.kind == kSkip) {
      if (h.len < 4) break;
      uint32_t n;
      memcpy(&n, body, 4);
      tally[h.side == kClient ? kTallyBytesUp : kTallyBytesDown] += n;
      off += sizeof h + h.len;
      continue;
    }
    if (h.len < sizeof(EventHead)) break;
    EventHead e;
    memcpy(&e, body, sizeof e);
    // The handler's part: a statement re-pointed, a portal kept, or one to forget.
    if (e.flags & kParsedUnnamed) break;
    if (e.flags & kPortalEnded ? tally[kTallyUnnamedPortal] != 0 : e.bind_len != 0) break;
    if (e.bind_len > h.len - sizeof e) break;
    const uint8_t* field = body + sizeof e + e.bind_len;
    const size_t field_len = h.len - sizeof e - e.bind_len;
    const uint64_t request = (uint64_t)tally[kTallyRequestSeq] + 1;
    char digits[24];
    const size_t digits_len = decimal(request, digits);
    const size_t seq_len = seq ? 1 + varint_len(seq) : 0;
    const size_t len = agent_len + seq_len + 2 + kHash + time_len + kind_len + f.session_id.size() + 2 + digits_len + f.identity.size() + field_len;
    if (len > max_event) break;
    if (end - pos < kRecordHeader + len) {
      needs = kRecordHeader + len;
      break;
    }
    // proto/session-events.ts SessionEventEncoder.encode's field order, byte for byte.
    uint8_t* rec = slab + pos;
    uint8_t* p = rec + kRecordHeader;
    memcpy(p, agent, agent_len), p += agent_len;
    if (seq) *p++ = kKeySeq, p = put_varint(p, seq);
    *p++ = kKeyPrevHash, *p++ = (uint8_t)kHash;
    memcpy(p, chain, kHash), p += kHash;
    memcpy(p, time_field, time_len), p += time_len;
    if (kind) *p++ = kKeyKind, p = put_varint(p, kind);
    memcpy(p, f.session_id.data(), f.session_id.size()), p += f.session_id.size();
    *p++ = kKeyRequestId, *p++ = (uint8_t)digits_len;
    memcpy(p, digits, digits_len), p += digits_len;
    memcpy(p, f.identity.data(), f.identity.size()), p += f.identity.size();
    memcpy(p, field, field_len);
    seal_in_place(rec, len, chain);
    tally[kTallyRequestSeq] = (double)request;
    tally[kTallyBytesUp] += e.up;
    tally[kTallyBytesDown] += e.down;
    tally[kTallySummarised] += 1;
    tally[kTallyEncoded] += 1;
    pos += kRecordHeader + len;
    seq++;
    written++;
    off += sizeof h + h.len;
  }
  out[0] = (double)off;
  out[1] = (double)written;
  out[2] = (double)pos;
  out[3] = (double)needs;
  return nullptr;
}
