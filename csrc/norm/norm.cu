// LayerNorm / RMSNorm forward and backward, with the optional fused residual add.
//
// The row layout (row groups of 32 * WPR threads, CHUNKS vectors of VEC elements per thread),
// the statistics and the backward's per-row math live in norm/row_norm.cuh; this file walks
// plain strided rows.
//
// Backward: persistent row groups walk rows with a grid stride, write dx, and keep their
// share of dweight / dbias in registers; each group stores one partial row of fp32 sums and a
// second kernel adds the partial rows per column (deterministic, no atomics).

#include "norm/norm.h"

#include "common/dtype.cuh"
#include "common/launch.h"
#include "norm/row_norm.cuh"

namespace vtk {
namespace {

static_assert(kNormMaxCols <= kMaxRowCols, "a norm row must fit one row tile");

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
    // h is stored in T, and the statistics are those of the stored h: the reference's
    // norm(x + residual) and what the backward rebuilds from h.
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c)
#pragma unroll
      for (int i = 0; i < VEC; ++i) x.v[c][i] = to_float(from_float<T>(x.v[c][i] + r.v[c][i]));
    x.store(static_cast<T*>(p.h) + row * p.h_stride, p.cols, lane);
  }

  const RowStats stats = row_statistics<WPR>(x, p.cols, lane, p.eps, p.rms, scratch);
  if (lane == 0) {
    if (!p.rms) p.mean[row] = stats.mean;
    p.rstd[row] = stats.rstd;
  }

  Tile w, b;
  w.load_or(static_cast<const T*>(p.weight), p.cols, lane, 1.f);
  b.load_or(static_cast<const T*>(p.bias), p.cols, lane, 0.f);
  apply_affine(x, stats.rstd, w, b);
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
  zero(dw_sum);
  zero(db_sum);

  // The trip count is the same for every thread of a group; with WPR > 1 a group is the block.
  for (int64_t row = group; row < p.rows; row += groups) {
    Tile xhat, dy;
    xhat.load(static_cast<const T*>(p.h) + row * p.h_stride, p.cols, lane);
    dy.load(static_cast<const T*>(p.dy) + row * p.dy_stride, p.cols, lane);
    const float mean = p.rms ? 0.f : p.mean[row];
    const float rstd = p.rstd[row];
    const RowGradMeans means =
        normalize_and_accumulate<WPR>(xhat, dy, w, mean, rstd, p.cols, lane, p.rms, scratch, dw_sum, db_sum);

    // d h (the last term LayerNorm only), plus the gradient flowing into h directly.
    Tile dx;
    dx.load_or(p.dh ? static_cast<const T*>(p.dh) + row * p.dh_stride : nullptr, p.cols, lane, 0.f);
    add_input_grad(dx, xhat, dy, w, rstd, means);
    dx.store(static_cast<T*>(p.dx) + row * p.dx_stride, p.cols, lane);
  }
  store_partial_sums(dw_sum, db_sum, p.partial, group, groups, p.cols, lane);
}

template <typename T>
RowShape bwd_shape(const NormBwdParams& p) {
  return pick_shape<T, kBwdChunks>(p.cols, {p.dy, p.dh, p.h, p.weight, p.dx}, {p.dy_stride, p.dh_stride, p.h_stride, p.dx_stride});
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
    return bwd_partial_floats(bwd_blocks(p.rows, p.sm_count, shape), shape, p.cols);
  });
}

cudaError_t norm_bwd(const NormBwdParams& p, cudaStream_t stream) {
  return VTK_DISPATCH_DTYPE(p.dtype, [&] {
    const RowShape shape = bwd_shape<scalar_t>(p);
    const int blocks = bwd_blocks(p.rows, p.sm_count, shape);
    const cudaError_t launched = with_shape<scalar_t, kBwdChunks>(shape, [&]<int VEC, int WPR, int CHUNKS>() {
      norm_bwd_kernel<scalar_t, VEC, WPR, CHUNKS><<<blocks, shape.threads(), 0, stream>>>(p);
      return cudaGetLastError();
    });
    VTK_RETURN_IF_ERROR(launched);
    return launch_column_sums<scalar_t>(p.partial, int64_t(blocks) * shape.rows_per_block(), p.cols, p.dweight,
                                        p.dbias, stream);
  });
}

}  // namespace vtk
