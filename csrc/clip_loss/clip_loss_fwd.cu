// CLIP loss forward: row normalization, the statistics sweep over S tiles, the partial merge.
//
// clip_stats_kernel: block (row_group, group) walks its row group's 64-row blocks and, for each,
// computes S tiles against the group's column blocks. Each tile goes to shared memory (fp32);
// then threads 0..63 each own a row and fold the tile into that row's online (max, sumexp) kept
// in registers across the group, while threads 64..127 each own a column and merge its
// logsumexp over the tile's rows into col_part[row_group] (read-modify-write: the slice belongs
// to this block alone, and the same thread wrote it for the row group's earlier row blocks).
// So the column partials are (row groups, n_cols), row groups <= 32: O(n), as in Triton.
// A row thread also picks up the diagonal S[i, i + diag_offset].

#include <cmath>

#include "clip_loss/clip_loss.h"
#include "clip_loss/clip_tile.cuh"
#include "common/launch.h"
#include "common/reduce.cuh"

namespace vtk {
namespace {

using clip::kBM;
using clip::kBN;
using clip::kThreads;

template <typename T>
__global__ void __launch_bounds__(128) normalize_rows_kernel(const ClipNormalizeParams p) {
  const int64_t row = int64_t(blockIdx.x) * 4 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= p.rows) return;  // a warp per row, no block barriers
  const T* x = static_cast<const T*>(p.x) + row * p.x_stride;
  float sumsq = 0.f;
  for (int k = lane; k < p.d; k += 32) {
    const float v = to_float(x[k]);
    sumsq += v * v;
  }
  const float rnorm = 1.f / fmaxf(sqrtf(warp_sum(sumsq)), kClipNormEps);
  T* y = static_cast<T*>(p.y) + row * p.y_stride;
  for (int k = lane; k < p.d; k += 32) y[k] = from_float<T>(to_float(x[k]) * rnorm);
  if (lane == 0) p.rnorm[row] = rnorm;
}

// Threads 0..kBM-1 walk rows of a tile, threads kBM..kBM+kBN-1 its columns.
static_assert(kThreads == kBM + kBN, "stats_kernel: one thread per tile row and per tile column");

template <typename T>
__global__ void __launch_bounds__(kThreads) stats_kernel(const ClipStatsParams p) {
  __shared__ clip::TileSmem<T> smem;
  __shared__ float tile[kBM][kBN + 1];  // +1: row-wise and column-wise walks avoid bank conflicts
  const float scale = *p.scale;
  const clip::Operand<T> image{static_cast<const T*>(p.image), p.image_stride, 1, p.n_rows, p.d};
  const clip::Operand<T> text{static_cast<const T*>(p.text), p.text_stride, 1, p.n_cols, p.d};
  const int tid = threadIdx.x;
  const int64_t first_block = int64_t(blockIdx.x) * p.row_blocks_per_group;

  for (int rb = 0; rb < p.row_blocks_per_group; ++rb) {
    const int64_t row0 = (first_block + rb) * kBM;
    if (row0 >= p.n_rows) break;  // the last row group may have fewer blocks (uniform per block)
    const int64_t my_row = row0 + tid;  // meaningful for tid < kBM
    const int rows_here = p.n_rows - row0 < kBM ? static_cast<int>(p.n_rows - row0) : kBM;
    float m_row = -INFINITY, sum_row = 0.f, diag = 0.f;
    bool has_diag = false;

    for (int jb = 0; jb < p.blocks_per_group; ++jb) {
      const int64_t col0 = (int64_t(blockIdx.y) * p.blocks_per_group + jb) * kBN;
      if (col0 >= p.n_cols) break;  // the last group may have fewer blocks (uniform per block)
      clip::Acc acc;
      clip::tile_matmul(acc, smem, image, text, row0, col0);
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
          for (int e = 0; e < 4; ++e) tile[clip::Acc::row(mi, e)][clip::Acc::col(ni, e)] = acc.v[mi][ni][e] * scale;
      __syncthreads();
      const int cols_here = p.n_cols - col0 < kBN ? static_cast<int>(p.n_cols - col0) : kBN;
      if (tid < kBM) {
        if (tid < rows_here) {
          float m_tile = -INFINITY;
          for (int c = 0; c < cols_here; ++c) m_tile = fmaxf(m_tile, tile[tid][c]);
          const float m_new = fmaxf(m_row, m_tile);
          float s = sum_row * __expf(m_row - m_new);  // exp(-inf) = 0 on the first tile
          for (int c = 0; c < cols_here; ++c) s += __expf(tile[tid][c] - m_new);
          m_row = m_new;
          sum_row = s;
          const int64_t diag_col = my_row + p.diag_offset - col0;
          if (diag_col >= 0 && diag_col < cols_here) {
            diag = tile[tid][diag_col];
            has_diag = true;
          }
        }
      } else {
        const int c = tid - kBM;
        if (c < cols_here) {
          float m = -INFINITY;
          for (int r = 0; r < rows_here; ++r) m = fmaxf(m, tile[r][c]);
          float s = 0.f;
          for (int r = 0; r < rows_here; ++r) s += __expf(tile[r][c] - m);
          float lse = m + logf(s);  // finite: rows_here >= 1
          const int64_t out = int64_t(blockIdx.x) * p.n_cols + col0 + c;
          if (rb > 0) {  // merge with the row group's earlier row blocks (finite too)
            const float earlier = p.col_part[out], top = fmaxf(earlier, lse);
            lse = top + logf(__expf(earlier - top) + __expf(lse - top));
            if (p.col_part_max) m = fmaxf(m, p.col_part_max[out]);
          }
          p.col_part[out] = lse;
          if (p.col_part_max) p.col_part_max[out] = m;
        }
      }
      __syncthreads();  // the tile is rewritten by the next iteration
    }
    if (tid < rows_here) {  // tid < kBM
      const int64_t out = int64_t(blockIdx.y) * p.n_rows + my_row;
      p.row_part[out] = m_row + logf(sum_row);
      if (p.row_part_max) p.row_part_max[out] = m_row;
      if (has_diag) p.diag[my_row] = diag;
    }
  }
}

__global__ void merge_lse_kernel(const ClipMergeParams p) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= p.n) return;
  float m = -INFINITY, sum = 0.f, mx = -INFINITY;
  for (int part = 0; part < p.parts; ++part) {
    const float v = p.part[int64_t(part) * p.n + j];
    const float m_new = fmaxf(m, v);
    const float shift = m_new == -INFINITY ? 0.f : m_new;
    sum = sum * expf(m - shift) + expf(v - shift);
    m = m_new;
    if (p.part_max) mx = fmaxf(mx, p.part_max[int64_t(part) * p.n + j]);
  }
  p.lse[j] = (m == -INFINITY ? 0.f : m) + logf(sum);
  if (p.max) p.max[j] = mx;
}

}  // namespace

cudaError_t clip_normalize_rows(const ClipNormalizeParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  VTK_DISPATCH_DTYPE(p.dtype, [&] { normalize_rows_kernel<scalar_t><<<ceil_div(p.rows, 4), 128, 0, stream>>>(p); });
  return cudaGetLastError();
}

cudaError_t clip_stats(const ClipStatsParams& p, cudaStream_t stream) {
  if (p.n_rows == 0 || p.n_cols == 0) return cudaSuccess;
  const dim3 grid(p.row_groups, p.groups);
  if (p.dtype == DType::kFloat16) {
    stats_kernel<__half><<<grid, kThreads, 0, stream>>>(p);
  } else if (p.dtype == DType::kBFloat16) {
    stats_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(p);
  } else {
    return cudaErrorInvalidValue;  // tensor-core tiles: fp16 / bf16 only (the bindings refuse fp32)
  }
  return cudaGetLastError();
}

cudaError_t clip_merge_lse(const ClipMergeParams& p, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  merge_lse_kernel<<<ceil_div(p.n, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace vtk
