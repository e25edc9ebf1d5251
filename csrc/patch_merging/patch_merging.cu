// Swin patch merging: the 2x2 gather and LayerNorm(4C) in one pass, forward and backward.
//
// Merged row r = (b, i, j) of the (rows, 4C) output, column k = s * C + c, reads
// x[b, 2i + s % 2, 2j + s / 2, c]: timm's order x0 = (0, 0), x1 = (1, 0), x2 = (0, 1),
// x3 = (1, 1) as (row offset, column offset). A pixel past an odd bottom / right edge is the
// zero padding timm and HF add; it counts in the row's statistics.
//
// The normalization is the norm op's code (norm/row_norm.cuh): the rows are only addressed
// differently (MergedRow). The backward scatters dx straight back to the pixels (each pixel
// belongs to exactly one merged row, so no atomics; padding gets no dx) and reduces dweight /
// dbias through the norm's deterministic partial rows.

#include "patch_merging/patch_merging.h"

#include "common/dtype.cuh"
#include "common/launch.h"
#include "norm/norm.h"
#include "norm/row_norm.cuh"

namespace vtk {
namespace {

// The bindings accept 4 * channels <= kNormMaxCols.
static_assert(kNormMaxCols <= kMaxRowCols, "a merged row must fit one row tile");

__host__ __device__ inline int half_up(int n) { return (n + 1) / 2; }

__host__ __device__ inline int64_t merged_rows(const MergeGeometry& g) {
  return g.batch * half_up(g.height) * half_up(g.width);
}

// Row addressing policy (see row_norm.cuh) of merged row (b, i, j). T may be const.
template <typename T>
struct MergedRow {
  static constexpr bool kHasHoles = true;
  T* pixel[4];  // channel 0 of pixels (2i, 2j), (2i+1, 2j), (2i, 2j+1), (2i+1, 2j+1); nullptr: padding
  int channels;

  // col is a vector start and channels a multiple of the vector, so the vector is in one pixel.
  __host__ __device__ T* ptr(int col) const {
    const int s = col / channels;
    T* start = s == 0 ? pixel[0] : s == 1 ? pixel[1] : s == 2 ? pixel[2] : pixel[3];  // no local-memory indexing
    return start ? start + (col - s * channels) : nullptr;
  }
};

// Host-callable too, so the index math can be checked against the reference on a CPU.
template <typename T>
__host__ __device__ MergedRow<T> merged_row(T* image, const MergeGeometry& g, const PixelStrides& strides, int64_t row) {
  const int w2 = half_up(g.width);
  const int64_t per_image = int64_t(half_up(g.height)) * w2;
  const int64_t b = row / per_image;
  const int rest = static_cast<int>(row - b * per_image);
  const int i = rest / w2, j = rest - i * w2;
  T* corner = image + b * strides.b + int64_t(2 * i) * strides.h + int64_t(2 * j) * strides.w;
  const bool down = 2 * i + 1 < g.height, right = 2 * j + 1 < g.width;
  return {{corner, down ? corner + strides.h : nullptr, right ? corner + strides.w : nullptr,
           down && right ? corner + strides.h + strides.w : nullptr},
          g.channels};
}

// At least one block per SM: without that hint ptxas holds the fp32 scalar fallback to 64
// registers and spills.
template <typename T, int VEC, int WPR, int CHUNKS>
__global__ void __launch_bounds__(32 * WPR * kRowsPerBlock<WPR>, 1) patch_merging_fwd_kernel(const PatchMergingFwdParams p) {
  using Tile = RowTile<T, VEC, WPR, CHUNKS>;
  __shared__ float scratch[WPR];
  const int cols = 4 * p.shape.channels;
  const int lane = threadIdx.x % Tile::kGroupThreads;
  const int64_t row = int64_t(blockIdx.x) * kRowsPerBlock<WPR> + threadIdx.x / Tile::kGroupThreads;
  if (row >= merged_rows(p.shape)) return;  // only possible with WPR == 1, which has no block barriers

  Tile x;
  x.load(merged_row(static_cast<const T*>(p.x), p.shape, p.x_strides, row), cols, lane);
  const RowStats stats = row_statistics<WPR>(x, cols, lane, p.eps, /*rms=*/false, scratch);
  if (lane == 0) {
    p.mean[row] = stats.mean;
    p.rstd[row] = stats.rstd;
  }

  Tile w, b;
  w.load_or(static_cast<const T*>(p.weight), cols, lane, 1.f);
  b.load_or(static_cast<const T*>(p.bias), cols, lane, 0.f);
  apply_affine(x, stats.rstd, w, b);
  x.store(static_cast<T*>(p.y) + row * cols, cols, lane);
}

// Persistent row groups walk the merged rows with a grid stride, like the norm backward.
template <typename T, int VEC, int WPR, int CHUNKS>
__global__ void __launch_bounds__(32 * WPR * kRowsPerBlock<WPR>) patch_merging_bwd_kernel(const PatchMergingBwdParams p) {
  using Tile = RowTile<T, VEC, WPR, CHUNKS>;
  constexpr int kGroups = kRowsPerBlock<WPR>;
  __shared__ float scratch[WPR];
  const int cols = 4 * p.shape.channels;
  const int64_t rows = merged_rows(p.shape);
  const int lane = threadIdx.x % Tile::kGroupThreads;
  const int group = blockIdx.x * kGroups + threadIdx.x / Tile::kGroupThreads;
  const int64_t groups = int64_t(gridDim.x) * kGroups;

  Tile w, dw_sum, db_sum;
  w.load_or(static_cast<const T*>(p.weight), cols, lane, 1.f);
  zero(dw_sum);
  zero(db_sum);

  // The trip count is the same for every thread of a group; with WPR > 1 a group is the block.
  for (int64_t row = group; row < rows; row += groups) {
    Tile xhat, dy;
    xhat.load(merged_row(static_cast<const T*>(p.x), p.shape, p.x_strides, row), cols, lane);
    dy.load(static_cast<const T*>(p.dy) + row * cols, cols, lane);
    const float rstd = p.rstd[row];
    const RowGradMeans means =
        normalize_and_accumulate<WPR>(xhat, dy, w, p.mean[row], rstd, cols, lane, /*rms=*/false, scratch, dw_sum, db_sum);
    Tile dx;
    zero(dx);
    add_input_grad(dx, xhat, dy, w, rstd, means);
    dx.store(merged_row(static_cast<T*>(p.dx), p.shape, p.dx_strides, row), cols, lane);  // skips padding
  }
  store_partial_sums(dw_sum, db_sum, p.partial, group, groups, cols, lane);
}

// The channel count is passed as a "stride": a vector must not straddle two gathered pixels.
template <typename T>
RowShape fwd_shape(const PatchMergingFwdParams& p) {
  return pick_shape<T, kFwdChunks>(4 * p.shape.channels, {p.x, p.weight, p.bias, p.y},
                                   {p.x_strides.b, p.x_strides.h, p.x_strides.w, p.shape.channels});
}

template <typename T>
RowShape bwd_shape(const PatchMergingBwdParams& p) {
  return pick_shape<T, kBwdChunks>(4 * p.shape.channels, {p.dy, p.x, p.weight, p.dx},
                                   {p.x_strides.b, p.x_strides.h, p.x_strides.w, p.dx_strides.b, p.dx_strides.h,
                                    p.dx_strides.w, p.shape.channels});
}

}  // namespace

int64_t patch_merging_rows(const MergeGeometry& shape) { return merged_rows(shape); }

cudaError_t patch_merging_fwd(const PatchMergingFwdParams& p, cudaStream_t stream) {
  const int64_t rows = merged_rows(p.shape);
  if (rows == 0) return cudaSuccess;
  return VTK_DISPATCH_DTYPE(p.dtype, [&] {
    const RowShape shape = fwd_shape<scalar_t>(p);
    const int blocks = ceil_div(rows, shape.rows_per_block());
    return with_shape<scalar_t, kFwdChunks>(shape, [&]<int VEC, int WPR, int CHUNKS>() {
      patch_merging_fwd_kernel<scalar_t, VEC, WPR, CHUNKS><<<blocks, shape.threads(), 0, stream>>>(p);
      return cudaGetLastError();
    });
  });
}

int64_t patch_merging_bwd_workspace_floats(const PatchMergingBwdParams& p) {
  return VTK_DISPATCH_DTYPE(p.dtype, [&] {
    const RowShape shape = bwd_shape<scalar_t>(p);
    return bwd_partial_floats(bwd_blocks(merged_rows(p.shape), p.sm_count, shape), shape, 4 * p.shape.channels);
  });
}

cudaError_t patch_merging_bwd(const PatchMergingBwdParams& p, cudaStream_t stream) {
  return VTK_DISPATCH_DTYPE(p.dtype, [&] {
    const RowShape shape = bwd_shape<scalar_t>(p);
    const int blocks = bwd_blocks(merged_rows(p.shape), p.sm_count, shape);
    const cudaError_t launched = with_shape<scalar_t, kBwdChunks>(shape, [&]<int VEC, int WPR, int CHUNKS>() {
      patch_merging_bwd_kernel<scalar_t, VEC, WPR, CHUNKS><<<blocks, shape.threads(), 0, stream>>>(p);
      return cudaGetLastError();
    });
    VTK_RETURN_IF_ERROR(launched);
    return launch_column_sums<scalar_t>(p.partial, int64_t(blocks) * shape.rows_per_block(), 4 * p.shape.channels,
                                        p.dweight, p.dbias, stream);
  });
}

}  // namespace vtk
