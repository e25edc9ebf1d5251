// __half for the CPU emulator: storage plus the conversions csrc/ uses (round to nearest even,
// via the compiler's _Float16).
#pragma once

#include "cuda_qualifiers.h"

#include <cstdint>
#include <cstring>

struct __half {
  uint16_t x;
};
struct __half2 {
  __half x, y;
};

inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.x, 2);
  return static_cast<float>(f);
}

inline __half __float2half_rn(float v) {
  const _Float16 f = static_cast<_Float16>(v);
  __half h;
  std::memcpy(&h.x, &f, 2);
  return h;
}

inline __half __float2half(float v) { return __float2half_rn(v); }
inline __half2 __floats2half2_rn(float lo, float hi) { return {__float2half_rn(lo), __float2half_rn(hi)}; }
