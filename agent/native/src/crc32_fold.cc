#include "crc32_fold.h"

#if defined(__x86_64__)
#include <immintrin.h>

// Intel's "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ Instruction" (2009), for
// the bit-reflected CRC-32 of zlib: four 128-bit lanes folded 64 bytes at a time, then into one
// lane, 16 bytes at a time, then to 64 and 32 bits and a Barrett reduction. The constants are
// x^(4*128+32) mod P and x^(4*128-32) mod P (k1, k2), the same for one lane (k3, k4), x^64 mod P
// (k5), and P(x) with its Barrett quotient mu, all bit-reflected, as the paper derives them.
namespace {

alignas(16) const uint64_t kK1K2[2] = {0x0154442bd4ULL, 0x01c6e41596ULL};
alignas(16) const uint64_t kK3K4[2] = {0x01751997d0ULL, 0x00ccaa009eULL};
alignas(16) const uint64_t kK5K0[2] = {0x0163cd6124ULL, 0};
alignas(16) const uint64_t kPolyMu[2] = {0x01db710641ULL, 0x01f7011641ULL};

#define RG_CLMUL __attribute__((target("pclmul,sse4.1")))

RG_CLMUL inline __m128i load(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }

// a * k (low 64 bits of each) xor a * k (high 64 bits of each) xor b: one lane folded onto b.
RG_CLMUL inline __m128i fold_onto(__m128i a, __m128i k, __m128i b) {
  return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(a, k, 0x00), _mm_clmulepi64_si128(a, k, 0x11)), b);
}

}  // namespace

bool crc32_fold_available() {
  static const bool ok = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
  return ok;
}

RG_CLMUL uint32_t crc32_fold(uint32_t crc, const uint8_t* p, size_t n) {
  // zlib's crc32() works on the inverted state.
  __m128i x1 = _mm_xor_si128(load(p), _mm_cvtsi32_si128((int)~crc));
  __m128i x2 = load(p + 16), x3 = load(p + 32), x4 = load(p + 48);
  p += 64, n -= 64;
  __m128i k = _mm_load_si128(reinterpret_cast<const __m128i*>(kK1K2));
  for (; n >= 64; p += 64, n -= 64) {
    x1 = fold_onto(x1, k, load(p));
    x2 = fold_onto(x2, k, load(p + 16));
    x3 = fold_onto(x3, k, load(p + 32));
    x4 = fold_onto(x4, k, load(p + 48));
  }
  k = _mm_load_si128(reinterpret_cast<const __m128i*>(kK3K4));
  x1 = fold_onto(x1, k, x2);
  x1 = fold_onto(x1, k, x3);
  x1 = fold_onto(x1, k, x4);
  for (; n >= 16; p += 16, n -= 16) x1 = fold_onto(x1, k, load(p));
  // 128 bits to 64.
  const __m128i low32 = _mm_setr_epi32(~0, 0, ~0, 0);
  x2 = _mm_clmulepi64_si128(x1, k, 0x10);
  x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), x2);
  k = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(kK5K0));
  x2 = _mm_srli_si128(x1, 4);
  x1 = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x1, low32), k, 0x00), x2);
  // Barrett reduction to 32 bits.
  k = _mm_load_si128(reinterpret_cast<const __m128i*>(kPolyMu));
  x2 = _mm_and_si128(_mm_clmulepi64_si128(_mm_and_si128(x1, low32), k, 0x10), low32);
  x1 = _mm_xor_si128(x1, _mm_clmulepi64_si128(x2, k, 0x00));
  return ~(uint32_t)_mm_extract_epi32(x1, 1);
}

#else  // no PCLMULQDQ: zlib does it all

bool crc32_fold_available() { return false; }
uint32_t crc32_fold(uint32_t crc, const uint8_t*, size_t) { return crc; }

#endif
