// Warp and block reductions in fp32. No torch headers.
#pragma once

namespace vtk {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the WARPS warps of a block that all work on one row. `scratch` holds WARPS floats
// in shared memory; the leading barrier makes back-to-back calls safe. Every thread of the
// block must call it (it has barriers when WARPS > 1).
template <int WARPS>
__device__ __forceinline__ float row_sum(float v, float* scratch) {
  v = warp_sum(v);
  if constexpr (WARPS == 1) {
    return v;
  } else {
    __syncthreads();
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) total += scratch[w];
    return total;
  }
}

}  // namespace vtk
