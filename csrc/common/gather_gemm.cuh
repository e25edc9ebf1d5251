// A tiled tensor-core GEMM whose operands are produced element by element by a "problem" object,
// so an operand can be gathered (image patches), transposed or normalized on the way into shared
// memory, and the epilogue can scatter. fp16 / bf16 operands, fp32 accumulation (mma.sync
// m16n8k16, see common/mma.cuh). No torch headers.
//
// C[m, n] = sum_k A[m, k] * B[k, n] over a block tile of kBM x kBN, k in steps of kBK. 8 warps in
// a 4 x 2 grid, each owning 32 x 32 of C (2 x 4 mma tiles). A is staged in shared memory as
// a_s[m][k] and B as b_s[n][k] (k contiguous in both, so each mma fragment register is one
// 32-bit load; rows padded to 40 elements = 20 words, which puts the 8 row groups of a fragment
// load in distinct banks). The next k tile is fetched into registers while the current one is
// multiplied.
//
// Problem interface (all __device__ const). An element's address splits into a row part and a
// column part; the row parts of a thread's elements are the same for every k step, so the kernel
// computes them once per tile and only the column part (one k decomposition) per step:
//   static constexpr bool kAKFast, kBKFast;  // consecutive threads walk k (true) or m / n (false):
//                                            // pick the direction that is contiguous in memory
//   int rows(), cols(), depth();             // M, N, K (also __host__)
//   int k_chunk;                             // K range per blockIdx.y (split-K), multiple of kBK
//   ARow a_row(int m); ACol a_col(int k); float a(ARow, ACol);   // A[m, k], called in range
//   BRow b_row(int n); BCol b_col(int k); float b(BRow, BCol);   // B[k, n], called in range
//   void store(int m, int n, float v);       // called only in range
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "common/dtype.cuh"
#include "common/mma.cuh"

namespace vtk {
namespace gather_gemm {

constexpr int kBM = 128, kBN = 64, kBK = 32;
constexpr int kThreads = 256;
constexpr int kWarpM = 32, kWarpN = 32;  // warp tile; warps form a (kBM / kWarpM) x (kBN / kWarpN) grid
constexpr int kRowPad = 8;
static_assert((kBM / kWarpM) * (kBN / kWarpN) * 32 == kThreads, "one warp per warp tile");

// Element i of a (ROWS x kBK) tile -> (row, k): k fastest or row fastest.
template <bool KFast, int ROWS>
__device__ __forceinline__ void tile_coords(int i, int& row, int& k) {
  if constexpr (KFast) {
    row = i / kBK;
    k = i % kBK;
  } else {
    k = i / ROWS;
    row = i % ROWS;
  }
}

// The elements of one operand's (ROWS x kBK) shared tile that this thread moves: element
// threadIdx.x + i * kThreads of the tile for i < kPerThread. Row parts are computed once per
// block tile (rows past the end are clamped to row 0 and masked); values are fetched into
// registers (zero out of range) and stashed into shared memory as T.
template <bool KFast, int ROWS, typename RowPart>
struct OperandLoader {
  static constexpr int kPerThread = ROWS * kBK / kThreads;
  RowPart row_part[kPerThread];
  bool in_range[kPerThread];
  float value[kPerThread];

  __device__ static void coords(int i, int& row, int& k) { tile_coords<KFast, ROWS>(threadIdx.x + i * kThreads, row, k); }

  template <typename RowFn>
  __device__ __forceinline__ void init(int row0, int n_rows, RowFn&& row_fn) {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      int r, k;
      coords(i, r, k);
      in_range[i] = row0 + r < n_rows;
      row_part[i] = row_fn(in_range[i] ? row0 + r : 0);
    }
  }
  // value[i] = element(row_part[i], col_fn(k0 + k)) for k0 + k < k_end.
  template <typename ColFn, typename ElemFn>
  __device__ __forceinline__ void fetch(int k0, int k_end, ColFn&& col_fn, ElemFn&& element) {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      int r, k;
      coords(i, r, k);
      value[i] = (in_range[i] && k0 + k < k_end) ? element(row_part[i], col_fn(k0 + k)) : 0.f;
    }
  }
  template <typename T>
  __device__ __forceinline__ void stash(T (*tile)[kBK + kRowPad]) const {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      int r, k;
      coords(i, r, k);
      tile[r][k] = from_float<T>(value[i]);
    }
  }
};

template <typename T, class Problem>
__global__ void __launch_bounds__(kThreads) gather_gemm_kernel(const Problem p) {
  __shared__ __align__(16) T a_s[kBM][kBK + kRowPad];
  __shared__ __align__(16) T b_s[kBN][kBK + kRowPad];

  const int rows = p.rows(), cols = p.cols();
  const int n_tiles = (cols + kBN - 1) / kBN;
  // The N tiles of one M tile are neighbours in launch order: the gathered A rows stay in L2.
  const int m0 = (blockIdx.x / n_tiles) * kBM, n0 = (blockIdx.x % n_tiles) * kBN;
  const int k_begin = blockIdx.y * p.k_chunk;
  const int k_end = min(p.depth(), k_begin + p.k_chunk);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int wm = (warp / (kBN / kWarpN)) * kWarpM, wn = (warp % (kBN / kWarpN)) * kWarpN;

  float acc[kWarpM / 16][kWarpN / 8][4] = {};
  OperandLoader<Problem::kAKFast, kBM, decltype(p.a_row(0))> a_load;  // A[m, k]
  OperandLoader<Problem::kBKFast, kBN, decltype(p.b_row(0))> b_load;  // B[k, n], staged as b_s[n][k]
  a_load.init(m0, rows, [&](int m) { return p.a_row(m); });
  b_load.init(n0, cols, [&](int n) { return p.b_row(n); });

  auto fetch = [&](int k0) {
    a_load.fetch(k0, k_end, [&](int k) { return p.a_col(k); }, [&](auto row, auto col) { return p.a(row, col); });
    b_load.fetch(k0, k_end, [&](int k) { return p.b_col(k); }, [&](auto row, auto col) { return p.b(row, col); });
  };
  auto stash = [&]() {
    a_load.stash(a_s);
    b_load.stash(b_s);
  };

  fetch(k_begin);
  for (int k0 = k_begin; k0 < k_end; k0 += kBK) {
    __syncthreads();  // everyone is done reading the previous tile
    stash();
    __syncthreads();
    if (k0 + kBK < k_end) fetch(k0 + kBK);  // in flight during the MMAs below
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      uint32_t a_frag[kWarpM / 16][4];
#pragma unroll
      for (int mi = 0; mi < kWarpM / 16; ++mi) {
        const int r = wm + mi * 16 + g;
        a_frag[mi][0] = load_pair(&a_s[r][kk + 2 * t]);
        a_frag[mi][1] = load_pair(&a_s[r + 8][kk + 2 * t]);
        a_frag[mi][2] = load_pair(&a_s[r][kk + 2 * t + 8]);
        a_frag[mi][3] = load_pair(&a_s[r + 8][kk + 2 * t + 8]);
      }
#pragma unroll
      for (int ni = 0; ni < kWarpN / 8; ++ni) {
        const int n = wn + ni * 8 + g;
        const uint32_t b0 = load_pair(&b_s[n][kk + 2 * t]);
        const uint32_t b1 = load_pair(&b_s[n][kk + 2 * t + 8]);
#pragma unroll
        for (int mi = 0; mi < kWarpM / 16; ++mi) mma_m16n8k16<T>(acc[mi][ni], a_frag[mi], b0, b1);
      }
    }
  }

#pragma unroll
  for (int mi = 0; mi < kWarpM / 16; ++mi) {
#pragma unroll
    for (int ni = 0; ni < kWarpN / 8; ++ni) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {  // C fragment rows g and g + 8
        const int m = m0 + wm + mi * 16 + g + 8 * half;
        const int n = n0 + wn + ni * 8 + 2 * t;
        if (m >= rows) continue;
        if (n < cols) p.store(m, n, acc[mi][ni][2 * half]);
        if (n + 1 < cols) p.store(m, n + 1, acc[mi][ni][2 * half + 1]);
      }
    }
  }
}

// Grid for a problem: (M tiles x N tiles, K splits).
template <class Problem>
inline dim3 grid_for(const Problem& p) {
  const int64_t tiles = int64_t((p.rows() + kBM - 1) / kBM) * ((p.cols() + kBN - 1) / kBN);
  return dim3(static_cast<unsigned>(tiles), static_cast<unsigned>((p.depth() + p.k_chunk - 1) / p.k_chunk));
}

template <class Problem, typename T>
cudaError_t launch_gemm(const Problem& problem, cudaStream_t stream) {
  const dim3 grid = grid_for(problem);
  if (grid.x == 0 || grid.y == 0) return cudaSuccess;
  gather_gemm_kernel<T, Problem><<<grid, kThreads, 0, stream>>>(problem);
  return cudaGetLastError();
}

// The whole K range as one chunk (no split-K), at least one k tile.
inline int whole_depth(int depth) { return depth > kBK ? (depth + kBK - 1) / kBK * kBK : kBK; }

// Runs fn(T{}) with T the 16-bit type of `dtype`; fp32 (refused upstream) is an invalid value.
template <typename Fn>
cudaError_t dispatch_16bit(DType dtype, Fn&& fn) {
  if (dtype == DType::kFloat16) return fn(__half{});
  if (dtype == DType::kBFloat16) return fn(__nv_bfloat16{});
  return cudaErrorInvalidValue;
}

}  // namespace gather_gemm
}  // namespace vtk
