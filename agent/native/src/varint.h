// Protocol buffers' base-128 varints, for the code that writes audit events' bytes in place (the
// relay's statement events and their sealing): the length a value takes, and writing it.
#pragma once
#include <stddef.h>
#include <stdint.h>

inline size_t varint_len(uint64_t v) {
  size_t n = 1;
  while (v > 0x7f) v >>= 7, n++;
  return n;
}

// Writes v at p (varint_len(v) bytes) and returns the byte after it.
inline uint8_t* put_varint(uint8_t* p, uint64_t v) {
  while (v > 0x7f) *p++ = (uint8_t)(v | 0x80), v >>= 7;
  *p++ = (uint8_t)v;
  return p;
}
