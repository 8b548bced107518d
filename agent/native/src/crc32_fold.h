// CRC-32 (zlib's polynomial, the spool record checksum) folded with carry-less multiplication.
#pragma once
#include <stddef.h>
#include <stdint.h>

// Whether this cpu has PCLMULQDQ and SSE4.1 (checked once; false off x86-64).
bool crc32_fold_available();
// The CRC-32 state after `n` bytes at `p` from state `crc` (zlib's crc32(crc, p, n) for n a
// multiple of 16 and at least 64); only when crc32_fold_available().
uint32_t crc32_fold(uint32_t crc, const uint8_t* p, size_t n);
