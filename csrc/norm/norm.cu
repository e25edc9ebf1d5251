// LayerNorm / RMSNorm forward and backward, with the optional fused residual add.
//
// A "row group" of 32 * WPR threads owns one row, held in registers as CHUNKS vectors of VEC
// elements per thread: thread `lane` holds columns (c * 32 * WPR + lane) * VEC ... + VEC - 1
// for c < CHUNKS, so each chunk is one coalesced 16-byte-per-thread sweep across the row.
// WPR == 1: four rows (four warps) per block, reductions stay in the warp. WPR > 1: one row
// per block, reductions go through shared memory. Statistics are fp32.
//
// Backward: persistent row groups walk rows with a grid stride, write dx, and keep their
// share of dweight / dbias in registers; each group stores one partial row of fp32 sums and a
// second kernel adds the partial rows per column (deterministic, no atomics).

#include "norm/norm.h"

#include "common/dtype.cuh"
#include "common/launch.h"
#include "common/reduce.cuh"

namespace vtk {
namespace {

template <int WPR>
constexpr int kRowsPerBlock = WPR == 1 ? 4 : 1;

// Backward blocks resident per SM: enough loads in flight, few partial rows to add up.
constexpr int kBwdBlocksPerSm = 4;

template <typename T, int VEC, int WPR, int CHUNKS>
struct RowTile {
  static constexpr int kGroupThreads = 32 * WPR;
  float v[CHUNKS][VEC];

  __device__ static int col(int chunk, int lane) { return (chunk * kGroupThreads + lane) * VEC; }

  // cols is a multiple of VEC, so a vector starting inside the row ends inside it.
  __device__ void load(const T* row, int cols, int lane) {
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) load_vec<T, VEC>(row + col(c, lane), col(c, lane) < cols, v[c]);
  }
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
  __device__ void store(T* row, int cols, int lane) const {
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c)
      if (col(c, lane) < cols) store_vec<T, VEC>(row + col(c, lane), v[c]);
  }
};

template <typename T, int VEC, int WPR, int CHUNKS>
__global__ void __launch_bounds__(32 * WPR * kRowsPerBlock<WPR>) norm_fwd_kernel(const NormFwdParams p) {
  using Tile = RowTile<T, VEC, WPR, CHUNKS>;
  __shared__ float scratch[WPR];
  const int lane = threadIdx.x % Tile::kGroupThreads;
  const int64_t row = int64_t(blockIdx.x) * kRowsPerBlock<WPR> + threadIdx.x / Tile::kGroupThreads;
  if (row >= p.rows) return;  // only possible with WPR == 1, which has no block barriers

  Tile x;
  x.load(static_cast<const T*>(p.x) + row * p.x_stride, p.cols, lane);
  if (p.residual) {
    Tile r;
    r.load(static_cast<const T*>(p.residual) + row * p.residual_stride, p.cols, lane);
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c)
#pragma unroll
      for (int i = 0; i < VEC; ++i) x.v[c][i] += r.v[c][i];
    x.store(static_cast<T*>(p.h) + row * p.h_stride, p.cols, lane);
  }

  float mean = 0.f;
  if (!p.rms) {
    float sum = 0.f;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c)
#pragma unroll
      for (int i = 0; i < VEC; ++i) sum += x.v[c][i];  // lanes past the row end hold zeros
    mean = row_sum<WPR>(sum, scratch) / p.cols;
  }
  float squares = 0.f;
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {
    if (Tile::col(c, lane) >= p.cols) continue;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      x.v[c][i] -= mean;
      squares += x.v[c][i] * x.v[c][i];
    }
  }
  const float rstd = rsqrtf(row_sum<WPR>(squares, scratch) / p.cols + p.eps);
  if (lane == 0) {
    if (!p.rms) p.mean[row] = mean;
    p.rstd[row] = rstd;
  }

  Tile w, b;
  w.load_or(static_cast<const T*>(p.weight), p.cols, lane, 1.f);
  b.load_or(static_cast<const T*>(p.bias), p.cols, lane, 0.f);
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c)
#pragma unroll
    for (int i = 0; i < VEC; ++i) x.v[c][i] = x.v[c][i] * rstd * w.v[c][i] + b.v[c][i];
  x.store(static_cast<T*>(p.y) + row * p.y_stride, p.cols, lane);
}

template <typename T, int VEC, int WPR, int CHUNKS>
__global__ void __launch_bounds__(32 * WPR * kRowsPerBlock<WPR>) norm_bwd_kernel(const NormBwdParams p) {
  using Tile = RowTile<T, VEC, WPR, CHUNKS>;
  constexpr int kGroups = kRowsPerBlock<WPR>;
  __shared__ float scratch[WPR];
  const int lane = threadIdx.x % Tile::kGroupThreads;
  const int group = blockIdx.x * kGroups + threadIdx.x / Tile::kGroupThreads;
  const int64_t groups = int64_t(gridDim.x) * kGroups;

  Tile w, dw_sum, db_sum;
  w.load_or(static_cast<const T*>(p.weight), p.cols, lane, 1.f);
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c)
#pragma unroll
    for (int i = 0; i < VEC; ++i) dw_sum.v[c][i] = db_sum.v[c][i] = 0.f;

  // The trip count is the same for every thread of a group; with WPR > 1 a group is the block.
  for (int64_t row = group; row < p.rows; row += groups) {
    Tile xhat, dy;
    xhat.load(static_cast<const T*>(p.h) + row * p.h_stride, p.cols, lane);
    dy.load(static_cast<const T*>(p.dy) + row * p.dy_stride, p.cols, lane);
    const float mean = p.rms ? 0.f : p.mean[row];
    const float rstd = p.rstd[row];
    float dot = 0.f, sum = 0.f;  // sum(w*dy * xhat), sum(w*dy)
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const bool valid = Tile::col(c, lane) < p.cols;
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        xhat.v[c][i] = valid ? (xhat.v[c][i] - mean) * rstd : 0.f;
        const float wdy = w.v[c][i] * dy.v[c][i];
        dot += wdy * xhat.v[c][i];
        sum += wdy;
        dw_sum.v[c][i] += dy.v[c][i] * xhat.v[c][i];
        db_sum.v[c][i] += dy.v[c][i];
      }
    }
    const float mean_dot = row_sum<WPR>(dot, scratch) / p.cols;
    const float mean_sum = p.rms ? 0.f : row_sum<WPR>(sum, scratch) / p.cols;

    // d h = rstd * (w*dy - xhat * mean(w*dy*xhat) - mean(w*dy)), the last term LayerNorm only.
    Tile dx;
    dx.load_or(p.dh ? static_cast<const T*>(p.dh) + row * p.dh_stride : nullptr, p.cols, lane, 0.f);
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c)
#pragma unroll
      for (int i = 0; i < VEC; ++i)
        dx.v[c][i] += rstd * (w.v[c][i] * dy.v[c][i] - xhat.v[c][i] * mean_dot - mean_sum);
    dx.store(static_cast<T*>(p.dx) + row * p.dx_stride, p.cols, lane);
  }

  // Partial rows: [0, groups) hold dweight sums, [groups, 2 * groups) dbias sums.
  float* dw_row = p.partial + int64_t(group) * p.cols;
  float* db_row = p.partial + (groups + group) * p.cols;
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {
    const int col = Tile::col(c, lane);
    if (col >= p.cols) continue;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
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

// The register layout for one row: vector width, warps per row, chunks per thread.
struct RowShape {
  int vec, wpr, chunks;
  int rows_per_block() const { return wpr == 1 ? 4 : 1; }
  int threads() const { return 32 * wpr * rows_per_block(); }
};

// Vectors per thread: the backward keeps five row tiles live, so it spreads a row over more threads.
constexpr int kFwdChunks = 4;
constexpr int kBwdChunks = 2;

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// 16-byte vectors when every row start is 16-byte aligned; else the scalar fallback
// (one 512-thread block per row, 16 scalars per thread).
template <typename T, int CHUNKS>
RowShape pick_shape(int cols, std::initializer_list<const void*> ptrs, std::initializer_list<int64_t> strides) {
  constexpr int vec = kVec16<T>;
  bool fast = cols % vec == 0;
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
  if (shape.vec == 1) return launch.template operator()<1, 16, 16>();
  switch (shape.wpr) {
    case 1: return launch.template operator()<V, 1, CHUNKS>();
    case 2: return launch.template operator()<V, 2, CHUNKS>();
    case 4: return launch.template operator()<V, 4, CHUNKS>();
    case 8: return launch.template operator()<V, 8, CHUNKS>();
    default: return launch.template operator()<V, 16, CHUNKS>();
  }
}

template <typename T>
RowShape bwd_shape(const NormBwdParams& p) {
  return pick_shape<T, kBwdChunks>(p.cols, {p.dy, p.dh, p.h, p.weight, p.dx}, {p.dy_stride, p.dh_stride, p.h_stride, p.dx_stride});
}

int bwd_blocks(const NormBwdParams& p, const RowShape& shape) {
  const int needed = ceil_div(p.rows, shape.rows_per_block());
  const int resident = p.sm_count * kBwdBlocksPerSm * (shape.wpr == 1 ? 1 : 2);
  return needed < resident ? (needed > 0 ? needed : 1) : resident;
}

}  // namespace

cudaError_t norm_fwd(const NormFwdParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  return VTK_DISPATCH_DTYPE(p.dtype, [&] {
    const RowShape shape = pick_shape<scalar_t, kFwdChunks>(p.cols, {p.x, p.residual, p.weight, p.bias, p.y, p.h},
                                                {p.x_stride, p.residual_stride, p.y_stride, p.h_stride});
    const int blocks = ceil_div(p.rows, shape.rows_per_block());
    return with_shape<scalar_t, kFwdChunks>(shape, [&]<int VEC, int WPR, int CHUNKS>() {
      norm_fwd_kernel<scalar_t, VEC, WPR, CHUNKS><<<blocks, shape.threads(), 0, stream>>>(p);
      return cudaGetLastError();
    });
  });
}

int64_t norm_bwd_workspace_floats(const NormBwdParams& p) {
  return VTK_DISPATCH_DTYPE(p.dtype, [&] {
    const RowShape shape = bwd_shape<scalar_t>(p);
    return int64_t(2) * bwd_blocks(p, shape) * shape.rows_per_block() * p.cols;
  });
}

cudaError_t norm_bwd(const NormBwdParams& p, cudaStream_t stream) {
  return VTK_DISPATCH_DTYPE(p.dtype, [&] {
    const RowShape shape = bwd_shape<scalar_t>(p);
    const int blocks = bwd_blocks(p, shape);
    const cudaError_t launched = with_shape<scalar_t, kBwdChunks>(shape, [&]<int VEC, int WPR, int CHUNKS>() {
      norm_bwd_kernel<scalar_t, VEC, WPR, CHUNKS><<<blocks, shape.threads(), 0, stream>>>(p);
      return cudaGetLastError();
    });
    VTK_RETURN_IF_ERROR(launched);
    const int64_t partial_rows = int64_t(blocks) * shape.rows_per_block();
    const dim3 sum_block(32, 8);
    const int sum_blocks = ceil_div(p.cols, 32);
    if (p.dweight) {
      column_sum_kernel<scalar_t><<<sum_blocks, sum_block, 0, stream>>>(
          p.partial, partial_rows, p.cols, static_cast<scalar_t*>(p.dweight));
      VTK_RETURN_IF_ERROR(cudaGetLastError());
    }
    if (p.dbias) {
      column_sum_kernel<scalar_t><<<sum_blocks, sum_block, 0, stream>>>(
          p.partial + partial_rows * p.cols, partial_rows, p.cols, static_cast<scalar_t*>(p.dbias));
      VTK_RETURN_IF_ERROR(cudaGetLastError());
    }
    return cudaSuccess;
  });
}

}  // namespace vtk
