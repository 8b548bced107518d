#include "seal.h"

#include <dlfcn.h>
#include <stdint.h>
#include <string.h>

#include "crc32_fold.h"
#include "napi_args.h"

// The digest and checksum come from the node process itself, found at run time: node exports its
// OpenSSL and zlib (or links the system's libcrypto and libz), so the addon needs neither their
// headers nor a second copy, and uses the same SHA-NI / SIMD code paths the JavaScript path does.
// If a node build exports neither, sealAvailable() says so and the spool stays on the JS path.
namespace {

// SHA256_Init/Update/Final, not the one-shot SHA256(): in OpenSSL 3 the one-shot fetches the
// digest through the provider machinery on every call (EVP_Q_digest), 0.3 us of a 0.75 us seal of
// a 300-byte event; the low-level functions go straight to the SHA-NI block function. OpenSSL's
// SHA256_CTX is 112 bytes (sha.h: 8 + 2 + 16 + 2 32-bit words); the context here is twice that, so
// that no OpenSSL header is needed and a larger build of the struct still fits.
struct alignas(16) Sha256Ctx {
  unsigned char opaque[224];
};
using Sha256InitFn = int (*)(Sha256Ctx*);
using Sha256UpdateFn = int (*)(Sha256Ctx*, const void*, size_t);
using Sha256FinalFn = int (*)(unsigned char*, Sha256Ctx*);
using Crc32Fn = unsigned long (*)(unsigned long, const unsigned char*, unsigned int);

struct Impl {
  Sha256InitFn init = nullptr;
  Sha256UpdateFn update = nullptr;
  Sha256FinalFn final = nullptr;
  Crc32Fn crc32 = nullptr;
  Impl() {
    init = reinterpret_cast<Sha256InitFn>(dlsym(RTLD_DEFAULT, "SHA256_Init"));
    update = reinterpret_cast<Sha256UpdateFn>(dlsym(RTLD_DEFAULT, "SHA256_Update"));
    final = reinterpret_cast<Sha256FinalFn>(dlsym(RTLD_DEFAULT, "SHA256_Final"));
    crc32 = reinterpret_cast<Crc32Fn>(dlsym(RTLD_DEFAULT, "crc32"));
  }
  bool ok() const { return init && update && final && crc32; }
  void sha256(const uint8_t* p, size_t n, uint8_t* out) const {
    Sha256Ctx c;
    init(&c);
    update(&c, p, n);
    final(out, &c);
  }
};

const Impl& impl() {
  static const Impl i;
  return i;
}

constexpr size_t kHeader = 8;
constexpr size_t kHash = 32;

void put_le32(uint8_t* p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}


}  // namespace

bool seal_ready() { return impl().ok(); }

// zlib's crc32() of the payload. node's zlib computes it 8 bytes at a time (0.2 us for a 400-byte
// event, as much as its SHA-256 with SHA-NI); folded by carry-less multiplication, 16 bytes a
// step over four lanes, it takes 0.03 us. zlib does the tail under 16 bytes, and events too short
// for four lanes.
static uint32_t record_crc(const uint8_t* p, size_t n) {
  uint32_t crc = 0;
  if (n >= 64 && crc32_fold_available()) {
    const size_t bulk = n & ~(size_t)15;
    crc = crc32_fold(0, p, bulk);
    p += bulk, n -= bulk;
  }
  return n ? (uint32_t)impl().crc32(crc, p, (unsigned int)n) : crc;
}

void seal_in_place(uint8_t* rec, size_t payload_len, uint8_t* hash_out) {
  put_le32(rec, (uint32_t)payload_len);
  put_le32(rec + 4, record_crc(rec + kHeader, payload_len));
  impl().sha256(rec + kHeader, payload_len, hash_out);
}

napi_value seal_record_js(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok) return nullptr;
  if (!impl().ok()) {
    napi_throw_error(env, nullptr, "sealRecord: this node exports no SHA256_Init/Update/Final or crc32 (see sealAvailable)");
    return nullptr;
  }
  uint8_t *target, *payload, *hash_out;
  size_t target_len, payload_len, hash_len;
  double offset_d;
  if (argc < 4 || !typed_array_arg(env, argv[0], napi_uint8_array, &target, &target_len) || napi_get_value_double(env, argv[1], &offset_d) != napi_ok ||
      !typed_array_arg(env, argv[2], napi_uint8_array, &payload, &payload_len) ||
      !typed_array_arg(env, argv[3], napi_uint8_array, &hash_out, &hash_len)) {
    napi_throw_type_error(env, nullptr, "sealRecord(target: Uint8Array, offset: number, payload: Uint8Array, hashOut: Uint8Array)");
    return nullptr;
  }
  // Every length is checked here, not trusted from the caller: a wrong offset must not write past
  // the slab, and a payload over 4 GiB would not fit the u32 length field.
  if (!(offset_d >= 0) || offset_d > (double)target_len || hash_len < kHash || payload_len > UINT32_MAX ||
      target_len - (size_t)offset_d < kHeader + payload_len) {
    napi_throw_range_error(env, nullptr, "sealRecord: the record does not fit the target at that offset");
    return nullptr;
  }
  size_t offset = (size_t)offset_d;
  uint8_t* rec = target + offset;
  // The payload may be a view into a scratch buffer; it never overlaps the slab.
  memmove(rec + kHeader, payload, payload_len);
  seal_in_place(rec, payload_len, hash_out);
  napi_value result;
  napi_create_double(env, (double)(offset + kHeader + payload_len), &result);
  return result;
}

napi_value seal_available_js(napi_env env, napi_callback_info) {
  napi_value result;
  napi_get_boolean(env, impl().ok(), &result);
  return result;
}
