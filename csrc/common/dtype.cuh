// Element types, conversions to/from fp32 and 16-byte vectors. No torch headers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace vtk {

enum class DType { kFloat32, kFloat16, kBFloat16 };

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// N elements moved as one aligned access (16 bytes when N = 16 / sizeof(T)).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T>
constexpr int kVec16 = 16 / sizeof(T);

#ifdef __CUDACC__  // the vector helpers are device code; the bindings' host .cpp files include this header too
// Loads N elements as fp32; `valid` false gives zeros (a lane past the row end).
template <typename T, int N>
__device__ __forceinline__ void load_vec(const T* ptr, bool valid, float (&out)[N]) {
  if (valid) {
    const Vec<T, N> vec = *reinterpret_cast<const Vec<T, N>*>(ptr);
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = to_float(vec.v[i]);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = 0.f;
  }
}

template <typename T, int N>
__device__ __forceinline__ void store_vec(T* ptr, const float (&in)[N]) {
  Vec<T, N> vec;
#pragma unroll
  for (int i = 0; i < N; ++i) vec.v[i] = from_float<T>(in[i]);
  *reinterpret_cast<Vec<T, N>*>(ptr) = vec;
}
#endif

}  // namespace vtk

// Runs the statement with `scalar_t` bound to the C++ type of a vtk::DType.
#define VTK_DISPATCH_DTYPE(dtype, ...)                                  \
  [&] {                                                                 \
    switch (dtype) {                                                    \
      case ::vtk::DType::kFloat16: {                                    \
        using scalar_t = __half;                                        \
        return __VA_ARGS__();                                           \
      }                                                                 \
      case ::vtk::DType::kBFloat16: {                                   \
        using scalar_t = __nv_bfloat16;                                 \
        return __VA_ARGS__();                                           \
      }                                                                 \
      default: {                                                        \
        using scalar_t = float;                                         \
        return __VA_ARGS__();                                           \
      }                                                                 \
    }                                                                   \
  }()
