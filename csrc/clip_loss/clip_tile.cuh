// Block-level tensor-core tile for the clip_loss kernels: C[64][64] (fp32) += A[64][K] * B[64][K]^T.
//
// 128 threads = 4 warps in a 2 x 2 grid; warp (wm, wn) owns C rows wm*32 .. +31, columns
// wn*32 .. +31 as 2 x 4 mma.sync m16n8k16 tiles (see common/mma.cuh for fragment ownership).
// Operands are staged K-contiguous in shared memory, kBK = 32 per step, rows padded by 8
// elements so the 32-bit fragment loads of a warp hit 32 distinct banks. Global -> shared loads
// take any strides: a K-contiguous source is read along K, anything else along the rows (so a
// transposed operand, e.g. dS^T, is still read coalesced); out-of-range elements read as 0.
#pragma once

#include <cstdint>

#include "clip_loss/clip_loss.h"
#include "common/dtype.cuh"
#include "common/mma.cuh"

namespace vtk {
namespace clip {

constexpr int kThreads = 128;
constexpr int kBM = kClipTileM, kBN = kClipTileN, kBK = kClipTileK;
constexpr int kPad = 8;

template <typename T>
struct alignas(16) TileSmem {
  T a[kBM][kBK + kPad];
  T b[kBN][kBK + kPad];
};

// One operand view: element (row, k) at base + row * stride_row + k * stride_k.
template <typename T>
struct Operand {
  const T* base;
  int64_t stride_row, stride_k;
  int64_t rows, k;  // extents
};

// tile[r][kk] = op(row0 + r, k0 + kk), zero outside the operand.
template <typename T, int ROWS>
__device__ __forceinline__ void load_tile(T (*tile)[kBK + kPad], const Operand<T>& op, int64_t row0, int64_t k0) {
  constexpr int kElems = ROWS * kBK;
  const T zero = from_float<T>(0.f);
  if (op.stride_k == 1) {
    // Consecutive threads read consecutive k of a row.
#pragma unroll 4
    for (int i = threadIdx.x; i < kElems; i += kThreads) {
      const int r = i / kBK, kk = i % kBK;
      const int64_t row = row0 + r, k = k0 + kk;
      tile[r][kk] = (row < op.rows && k < op.k) ? op.base[row * op.stride_row + k] : zero;
    }
  } else {
    // Consecutive threads read consecutive rows (unit row stride: the transposed operands).
#pragma unroll 4
    for (int i = threadIdx.x; i < kElems; i += kThreads) {
      const int r = i % ROWS, kk = i / ROWS;
      const int64_t row = row0 + r, k = k0 + kk;
      tile[r][kk] = (row < op.rows && k < op.k) ? op.base[row * op.stride_row + k * op.stride_k] : zero;
    }
  }
}

struct Acc {
  float v[2][4][4];  // [m tile][n tile][fragment element]

  __device__ void zero() {
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) v[mi][ni][e] = 0.f;
  }
  // Tile-local coordinates of element (mi, ni, e) for this thread.
  __device__ static int row(int mi, int e) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    return (warp / 2) * 32 + mi * 16 + lane / 4 + (e >= 2 ? 8 : 0);
  }
  __device__ static int col(int ni, int e) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    return (warp % 2) * 32 + ni * 8 + 2 * (lane % 4) + (e & 1);
  }
};

template <typename T>
__device__ __forceinline__ void mma_step(Acc& acc, const TileSmem<T>& s) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;
  const int m0 = (warp / 2) * 32, n0 = (warp % 2) * 32;
#pragma unroll
  for (int kk = 0; kk < kBK; kk += 16) {
    uint32_t a[2][4];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
      const int r = m0 + mi * 16 + g;
      a[mi][0] = load_pair(&s.a[r][kk + 2 * t]);
      a[mi][1] = load_pair(&s.a[r + 8][kk + 2 * t]);
      a[mi][2] = load_pair(&s.a[r][kk + 2 * t + 8]);
      a[mi][3] = load_pair(&s.a[r + 8][kk + 2 * t + 8]);
    }
#pragma unroll
    for (int ni = 0; ni < 4; ++ni) {
      const int c = n0 + ni * 8 + g;
      const uint32_t b0 = load_pair(&s.b[c][kk + 2 * t]);
      const uint32_t b1 = load_pair(&s.b[c][kk + 2 * t + 8]);
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) mma_m16n8k16<T>(acc.v[mi][ni], a[mi], b0, b1);
    }
  }
}

// acc = A[row0 .. +63][:] @ B[col0 .. +63][:]^T over the whole K extent.
template <typename T>
__device__ __forceinline__ void tile_matmul(Acc& acc, TileSmem<T>& s, const Operand<T>& a, const Operand<T>& b,
                                            int64_t row0, int64_t col0) {
  acc.zero();
  for (int64_t k0 = 0; k0 < a.k; k0 += kBK) {
    __syncthreads();  // the previous step's fragments have been read
    load_tile<T, kBM>(s.a, a, row0, k0);
    load_tile<T, kBN>(s.b, b, col0, k0);
    __syncthreads();
    mma_step(acc, s);
  }
}

}  // namespace clip
}  // namespace vtk
