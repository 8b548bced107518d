// Node-API argument readers for the entry points that take typed arrays and offsets (seal.cc,
// relay_events.cc): each says whether an argument is what the signature names, so that the entry
// point throws one TypeError naming its signature instead of trusting what JavaScript passed.
#pragma once
#include <math.h>
#include <node_api.h>
#include <stddef.h>

// A typed array of element type `want`: its first element (byte offset applied) and its length in
// elements.
template <typename T>
bool typed_array_arg(napi_env env, napi_value v, napi_typedarray_type want, T** data, size_t* len) {
  bool is_typed = false;
  napi_typedarray_type type;
  void* p;
  if (napi_is_typedarray(env, v, &is_typed) != napi_ok || !is_typed) return false;
  if (napi_get_typedarray_info(env, v, &type, len, &p, nullptr, nullptr) != napi_ok || type != want) return false;
  *data = static_cast<T*>(p);
  return true;
}

// A non-negative safe integer (an offset, a count, a seq, a time in ms), as a double.
inline bool safe_uint_arg(napi_env env, napi_value v, double* out) {
  return napi_get_value_double(env, v, out) == napi_ok && *out >= 0 && *out <= 9007199254740991.0 && *out == floor(*out);
}
