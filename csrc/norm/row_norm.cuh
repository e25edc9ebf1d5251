// Row machinery of the norm kernels, shared with kernels that normalize rows they assemble
// themselves (Swin patch merging): the register layout of one row (RowTile), the choice of that
// layout (RowShape, pick_shape, with_shape), the LayerNorm / RMSNorm statistics, the backward's
// per-row input gradient, and its deterministic dweight / dbias partial sums (column_sum_kernel).
//
// A "row group" of 32 * WPR threads owns one row, held in registers as CHUNKS vectors of VEC
// elements per thread: thread `lane` holds columns (c * 32 * WPR + lane) * VEC ... + VEC - 1
// for c < CHUNKS, so each chunk is one coalesced 16-byte-per-thread sweep across the row.
// WPR == 1: four rows (four warps) per block, reductions stay in the warp. WPR > 1: one row
// per block, reductions go through shared memory. Statistics are fp32.
//
// Where a row lives is a small addressing policy with `ptr(col)`, the address of columns
// col .. col + VEC - 1 (a vector never straddles two pieces of a row). A plain `T*` row start is
// the contiguous case; a policy with kHasHoles may return nullptr for columns that are implicit
// zeros (padding): loads read zeros there and stores skip them.
//
// Everything here has internal linkage on purpose: each kernel file gets its own copies of these
// kernels and helpers (kernels are not shared across translation units without -rdc).
#pragma once

#include <cstdint>
#include <initializer_list>

#include "common/dtype.cuh"
#include "common/launch.h"
#include "common/reduce.cuh"

namespace vtk {
namespace {

template <int WPR>
constexpr int kRowsPerBlock = WPR == 1 ? 4 : 1;

// Backward blocks resident per SM: enough loads in flight, few partial rows to add up.
constexpr int kBwdBlocksPerSm = 4;

// Longest row any layout holds: the scalar fallback's 512 threads * 16 columns.
constexpr int kMaxRowCols = 32 * 16 * 16;

// Vectors per thread: the backward keeps five row tiles live, so it spreads a row over more threads.
constexpr int kFwdChunks = 4;
constexpr int kBwdChunks = 2;

// A row stored contiguously from `start`.
template <typename T>
struct ContiguousRow {
  static constexpr bool kHasHoles = false;
  T* start;
  __device__ T* ptr(int col) const { return start + col; }
};

template <typename T, int VEC, int WPR, int CHUNKS>
struct RowTile {
  static constexpr int kGroupThreads = 32 * WPR;
  static constexpr int kVec = VEC;
  static constexpr int kChunks = CHUNKS;
  float v[CHUNKS][VEC];

  __device__ static int col(int chunk, int lane) { return (chunk * kGroupThreads + lane) * VEC; }

  // Columns past the row end (and holes) read as zeros.
  template <class Row>
  __device__ void load(const Row& row, int cols, int lane) {
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const int k = col(c, lane);
      if constexpr (Row::kHasHoles) {
        const T* ptr = k < cols ? row.ptr(k) : nullptr;
        load_vec<T, VEC>(ptr, ptr != nullptr, v[c]);
      } else {
        load_vec<T, VEC>(row.ptr(k), k < cols, v[c]);
      }
    }
  }
  // cols is a multiple of VEC, so a vector starting inside the row ends inside it.
  __device__ void load(const T* row, int cols, int lane) { load(ContiguousRow<const T>{row}, cols, lane); }

  __device__ void load_or(const T* row, int cols, int lane, float fallback) {
    if (row) {
      load(row, cols, lane);
      return;
    }
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c)
#pragma unroll
      for (int i = 0; i < VEC; ++i) v[c][i] = fallback;
  }

  template <class Row>
  __device__ void store(const Row& row, int cols, int lane) const {
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const int k = col(c, lane);
      if (k >= cols) continue;
      T* ptr = row.ptr(k);
      if constexpr (Row::kHasHoles) {
        if (ptr == nullptr) continue;
      }
      store_vec<T, VEC>(ptr, v[c]);
    }
  }
  __device__ void store(T* row, int cols, int lane) const { store(ContiguousRow<T>{row}, cols, lane); }
};

struct RowStats {
  float mean, rstd;  // mean is 0 for RMSNorm
};

// Statistics of the row in `x`, which LayerNorm leaves centered (x - mean) in place; lanes past
// the row end keep their zeros. Every thread of the row group calls it (it may have barriers).
template <int WPR, class Tile>
__device__ __forceinline__ RowStats row_statistics(Tile& x, int cols, int lane, float eps, bool rms, float* scratch) {
  float mean = 0.f;
  if (!rms) {
    float sum = 0.f;
#pragma unroll
    for (int c = 0; c < Tile::kChunks; ++c)
#pragma unroll
      for (int i = 0; i < Tile::kVec; ++i) sum += x.v[c][i];  // lanes past the row end hold zeros
    mean = row_sum<WPR>(sum, scratch) / cols;
  }
  float squares = 0.f;
#pragma unroll
  for (int c = 0; c < Tile::kChunks; ++c) {
    if (Tile::col(c, lane) >= cols) continue;
#pragma unroll
    for (int i = 0; i < Tile::kVec; ++i) {
      x.v[c][i] -= mean;
      squares += x.v[c][i] * x.v[c][i];
    }
  }
  return {mean, rsqrtf(row_sum<WPR>(squares, scratch) / cols + eps)};
}

// y = centered * rstd * w + b, in place.
template <class Tile>
__device__ __forceinline__ void apply_affine(Tile& x, float rstd, const Tile& w, const Tile& b) {
#pragma unroll
  for (int c = 0; c < Tile::kChunks; ++c)
#pragma unroll
    for (int i = 0; i < Tile::kVec; ++i) x.v[c][i] = x.v[c][i] * rstd * w.v[c][i] + b.v[c][i];
}

struct RowGradMeans {
  float dot, sum;  // mean(w*dy * xhat), mean(w*dy) (0 for RMSNorm)
};

// Backward, first half of a row: turns the raw row in `xhat` into (x - mean) * rstd (zeros past
// the row end), adds the row's dweight / dbias terms (dy * xhat, dy) to dw_sum / db_sum, and
// returns the two row means the input gradient needs.
template <int WPR, class Tile>
__device__ __forceinline__ RowGradMeans normalize_and_accumulate(Tile& xhat, const Tile& dy, const Tile& w, float mean,
                                                                 float rstd, int cols, int lane, bool rms,
                                                                 float* scratch, Tile& dw_sum, Tile& db_sum) {
  float dot = 0.f, sum = 0.f;
#pragma unroll
  for (int c = 0; c < Tile::kChunks; ++c) {
    const bool valid = Tile::col(c, lane) < cols;
#pragma unroll
    for (int i = 0; i < Tile::kVec; ++i) {
      xhat.v[c][i] = valid ? (xhat.v[c][i] - mean) * rstd : 0.f;
      const float wdy = w.v[c][i] * dy.v[c][i];
      dot += wdy * xhat.v[c][i];
      sum += wdy;
      dw_sum.v[c][i] += dy.v[c][i] * xhat.v[c][i];
      db_sum.v[c][i] += dy.v[c][i];
    }
  }
  const float mean_dot = row_sum<WPR>(dot, scratch) / cols;
  const float mean_sum = rms ? 0.f : row_sum<WPR>(sum, scratch) / cols;
  return {mean_dot, mean_sum};
}

// Backward, second half: dx += rstd * (w*dy - xhat * mean(w*dy*xhat) - mean(w*dy)).
template <class Tile>
__device__ __forceinline__ void add_input_grad(Tile& dx, const Tile& xhat, const Tile& dy, const Tile& w, float rstd,
                                               RowGradMeans means) {
#pragma unroll
  for (int c = 0; c < Tile::kChunks; ++c)
#pragma unroll
    for (int i = 0; i < Tile::kVec; ++i)
      dx.v[c][i] += rstd * (w.v[c][i] * dy.v[c][i] - xhat.v[c][i] * means.dot - means.sum);
}

template <class Tile>
__device__ __forceinline__ void zero(Tile& t) {
#pragma unroll
  for (int c = 0; c < Tile::kChunks; ++c)
#pragma unroll
    for (int i = 0; i < Tile::kVec; ++i) t.v[c][i] = 0.f;
}

// One partial row of fp32 sums per row group: rows [0, groups) of `partial` hold the dweight
// sums, [groups, 2 * groups) the dbias sums; column_sum_kernel adds them up.
template <class Tile>
__device__ __forceinline__ void store_partial_sums(const Tile& dw_sum, const Tile& db_sum, float* partial,
                                                   int64_t group, int64_t groups, int cols, int lane) {
  float* dw_row = partial + group * cols;
  float* db_row = partial + (groups + group) * cols;
#pragma unroll
  for (int c = 0; c < Tile::kChunks; ++c) {
    const int col = Tile::col(c, lane);
    if (col >= cols) continue;
#pragma unroll
    for (int i = 0; i < Tile::kVec; ++i) {
      dw_row[col + i] = dw_sum.v[c][i];
      db_row[col + i] = db_sum.v[c][i];
    }
  }
}

// out[col] = sum over rows of partial[row][col]; a block covers 32 columns with 8 row slices.
template <typename T>
__global__ void __launch_bounds__(256) column_sum_kernel(const float* partial, int64_t rows, int cols, T* out) {
  __shared__ float slices[8][33];
  const int col = blockIdx.x * 32 + threadIdx.x;
  float sum = 0.f;
  if (col < cols)
    for (int64_t r = threadIdx.y; r < rows; r += 8) sum += partial[r * cols + col];
  slices[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    float total = 0.f;
#pragma unroll
    for (int s = 0; s < 8; ++s) total += slices[s][threadIdx.x];
    out[col] = from_float<T>(total);
  }
}

// dweight / dbias (either may be nullptr) from the partial rows the backward's row groups stored.
template <typename T>
cudaError_t launch_column_sums(const float* partial, int64_t partial_rows, int cols, void* dweight, void* dbias,
                               cudaStream_t stream) {
  const dim3 sum_block(32, 8);
  const int sum_blocks = ceil_div(cols, 32);
  if (dweight) {
    column_sum_kernel<T><<<sum_blocks, sum_block, 0, stream>>>(partial, partial_rows, cols, static_cast<T*>(dweight));
    VTK_RETURN_IF_ERROR(cudaGetLastError());
  }
  if (dbias) {
    column_sum_kernel<T><<<sum_blocks, sum_block, 0, stream>>>(partial + partial_rows * cols, partial_rows, cols,
                                                               static_cast<T*>(dbias));
    VTK_RETURN_IF_ERROR(cudaGetLastError());
  }
  return cudaSuccess;
}

// The register layout for one row: vector width, warps per row, chunks per thread.
struct RowShape {
  int vec, wpr, chunks;
  int rows_per_block() const { return wpr == 1 ? 4 : 1; }
  int threads() const { return 32 * wpr * rows_per_block(); }
};

inline bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// 16-byte vectors when every vector start is 16-byte aligned (all pointers aligned, all strides
// and piece lengths multiples of the vector) and the widest vector layout holds the row; else the
// scalar fallback (one 512-thread block per row, 16 scalars per thread: kMaxRowCols columns).
// E.g. fp32 with 2 chunks holds 16 * 32 * 2 * 4 = 4096 columns, so longer fp32 rows fall back.
template <typename T, int CHUNKS>
RowShape pick_shape(int cols, std::initializer_list<const void*> ptrs, std::initializer_list<int64_t> strides) {
  constexpr int vec = kVec16<T>;
  bool fast = cols % vec == 0 && cols / vec <= 32 * 16 * CHUNKS;
  for (const void* ptr : ptrs) fast = fast && (ptr == nullptr || aligned16(ptr));
  for (int64_t stride : strides) fast = fast && stride % vec == 0;
  if (!fast) return {1, 16, 16};
  const int vectors = cols / vec;
  int wpr = 1;
  while (wpr < 16 && vectors > 32 * wpr * CHUNKS) wpr *= 2;
  return {vec, wpr, CHUNKS};
}

// Calls launch.template operator()<VEC, WPR, CHUNKS>() for the shape's instantiation.
template <typename T, int CHUNKS, typename Launch>
cudaError_t with_shape(const RowShape& shape, Launch&& launch) {
  constexpr int V = kVec16<T>;
  static_assert(32 * 16 * 16 == kMaxRowCols);
  if (shape.vec == 1) return launch.template operator()<1, 16, 16>();
  switch (shape.wpr) {
    case 1: return launch.template operator()<V, 1, CHUNKS>();
    case 2: return launch.template operator()<V, 2, CHUNKS>();
    case 4: return launch.template operator()<V, 4, CHUNKS>();
    case 8: return launch.template operator()<V, 8, CHUNKS>();
    default: return launch.template operator()<V, 16, CHUNKS>();
  }
}

// Grid of the persistent backward: one block per row group up to a few resident blocks per SM.
inline int bwd_blocks(int64_t rows, int sm_count, const RowShape& shape) {
  const int needed = ceil_div(rows, shape.rows_per_block());
  const int resident = sm_count * kBwdBlocksPerSm * (shape.wpr == 1 ? 1 : 2);
  return needed < resident ? (needed > 0 ? needed : 1) : resident;
}

// fp32 floats of the dweight + dbias partial rows for that grid.
inline int64_t bwd_partial_floats(int blocks, const RowShape& shape, int cols) {
  return int64_t(2) * blocks * shape.rows_per_block() * cols;
}

}  // namespace
}  // namespace vtk
