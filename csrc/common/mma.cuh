// Warp-level tensor-core MMA (mma.sync.m16n8k16, fp32 accumulate) for fp16 / bf16. No torch headers.
//
// Fragment ownership (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with lane = 4 * g + t
// (g = lane / 4 in 0..7, t = lane % 4 in 0..3); each 32-bit register holds two adjacent elements:
//   A (16 x 16, row-major):  a[0] = A[g][2t, 2t+1]      a[1] = A[g+8][2t, 2t+1]
//                            a[2] = A[g][2t+8, 2t+9]    a[3] = A[g+8][2t+8, 2t+9]
//   B (16 x 8, "col"):       b[0] = B[2t, 2t+1][g]      b[1] = B[2t+8, 2t+9][g]
//   C (16 x 8, fp32):        c[0], c[1] = C[g][2t, 2t+1]   c[2], c[3] = C[g+8][2t, 2t+1]
// So the C fragments of two adjacent 16 x 8 tiles (columns 0-7, 8-15), packed to 16 bits, are
// exactly the A fragment of the 16 x 16 tile they form: the FlashAttention trick that feeds P
// straight from the S accumulators into P V without a trip through shared memory.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace vtk {

// c += A * B for one m16n8k16 tile.
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

// mma.sync.m16n8k16 needs sm_80+; on older targets (a compile check for sm_75, say) the
// kernels build but trap if ever launched. The library targets sm_80 and sm_90.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define VTK_MMA_UNSUPPORTED 1
#endif

template <>
__device__ __forceinline__ void mma_m16n8k16<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(VTK_CUDA_EMULATOR)  // tools/cuda_emulator: the CPU runs the warp's MMA
  vtk_emu::mma_m16n8k16(c, a, b0, b1, /*bf16=*/false);
#elif defined(VTK_MMA_UNSUPPORTED)
  __trap();
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

template <>
__device__ __forceinline__ void mma_m16n8k16<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                            uint32_t b1) {
#if defined(VTK_CUDA_EMULATOR)  // tools/cuda_emulator: the CPU runs the warp's MMA
  vtk_emu::mma_m16n8k16(c, a, b0, b1, /*bf16=*/true);
#elif defined(VTK_MMA_UNSUPPORTED)
  __trap();
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Two floats rounded to T and packed into one register, `lo` in the low half (the lower column).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);

template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

// The two adjacent 16-bit elements at `ptr` (4-byte aligned) as one register.
template <typename T>
__device__ __forceinline__ uint32_t load_pair(const T* ptr) {
  return *reinterpret_cast<const uint32_t*>(ptr);
}

}  // namespace vtk
