// CLIP contrastive loss building blocks: parameters and launchers (no torch headers).
//
// Same decomposition as vtkernels/triton/clip_loss.py (read its docstring first):
//   clip_normalize_rows   y = x / max(||x||, eps), rnorm
//   clip_stats            forward sweep over S = scale * I @ T^T tiles: row partial logsumexp per
//                         column group, column partial logsumexp per row group, the diagonal
//   clip_merge_lse        partial logsumexps (and maxima) -> final per row / per column
//   clip_dlogits          backward: one column strip of dS = (P_row + P_col) / 2 - delta, in the
//                         feature dtype, plus per-block partial sums for d logit_scale
//   clip_strip_gemm       C (fp32) (+)= alpha * A @ B with arbitrary strides (the two products),
//                         optionally split along K into fp32 partials (dT: few tiles, K = all rows)
//   clip_finish_grad      scale + normalization backward -> gradient of the raw features
// Tensor-core tiles (mma.sync m16n8k16) take fp16 / bf16 only; fp32 goes to Triton.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "common/dtype.cuh"

namespace vtk {

constexpr int kClipTileM = 64;  // rows of an S tile / a GEMM output tile
constexpr int kClipTileN = 64;  // columns of an S tile / a GEMM output tile
constexpr int kClipTileK = 32;  // depth of one K step of a tile's product
constexpr float kClipNormEps = 1e-12f;  // torch.nn.functional.normalize's default

struct ClipNormalizeParams {
  const void* x;  // (rows, d)
  void* y;        // (rows, d)
  float* rnorm;   // (rows)
  int64_t rows;
  int d;
  int64_t x_stride, y_stride;
  DType dtype;
};

struct ClipStatsParams {
  const void* image;  // (n_rows, d), unit column stride
  const void* text;   // (n_cols, d)
  const float* scale;  // (1) on the device
  float* row_part;     // (groups, n_rows) partial row logsumexp per column group
  float* row_part_max;  // (groups, n_rows) or nullptr
  float* col_part;     // (row_groups, n_cols) partial column logsumexp per row group
  float* col_part_max;  // (row_groups, n_cols) or nullptr
  float* diag;         // (n_rows) S[i, i + diag_offset] (left untouched where out of range)
  int64_t n_rows, n_cols;
  int d;
  int64_t image_stride, text_stride;
  int64_t diag_offset;
  int row_groups, row_blocks_per_group;  // grid.x: groups of consecutive 64-row blocks
  int groups, blocks_per_group;          // grid.y: groups of consecutive 64-column blocks
  DType dtype;
};

struct ClipMergeParams {
  const float* part;      // (parts, n)
  const float* part_max;  // (parts, n) or nullptr
  float* lse;             // (n)
  float* max;             // (n) or nullptr
  int parts;
  int64_t n;
};

struct ClipDlogitsParams {
  const void* image;  // (n_rows, d)
  const void* text;   // (n_cols, d)
  const float* scale;
  const float* row_lse;  // (n_rows)
  const float* col_lse;  // (n_cols)
  void* ds;              // (n_rows, >= strip_end - col_start), row stride ds_stride
  float* dt_part;        // (row_blocks * strip column blocks) sums of dS * S, see the kernel
  int64_t n_rows, n_cols;
  int d;
  int64_t image_stride, text_stride, ds_stride;
  int64_t diag_offset, col_start, strip_end;
  float ds_scale;  // the strip holds ds_scale * dS (a power of two; 1024 for fp16, 1 for bf16)
  DType dtype;
};

struct ClipGemmParams {
  const void* a;  // element (m, k) at a + m * a_stride_m + k * a_stride_k
  const void* b;  // element (k, n) at b + k * b_stride_k + n * b_stride_n
  float* c;       // element (m, n) at c + m * c_stride (fp32)
  int64_t m, n, k;
  int64_t a_stride_m, a_stride_k, b_stride_k, b_stride_n, c_stride;
  float alpha;  // C (+)= alpha * A @ B
  bool accumulate;
  DType dtype;
  // Split-K: blockIdx.z computes the K range [z * k_per_split, (z + 1) * k_per_split) into its own
  // C at c + z * c_split_stride (fp32 partials the caller sums). k_per_split <= 0: no split.
  int64_t k_per_split = 0, c_split_stride = 0;
};

struct ClipFinishParams {
  const float* acc;   // (rows, d) contiguous
  const void* x;      // (rows, d) raw features
  const float* coef;  // (1) gradient w.r.t. the normalized rows = coef * acc
  void* dx;           // (rows, d)
  int64_t rows;
  int d;
  int64_t x_stride, dx_stride;
  bool normalize;
  DType dtype;
};

cudaError_t clip_normalize_rows(const ClipNormalizeParams& p, cudaStream_t stream);
cudaError_t clip_stats(const ClipStatsParams& p, cudaStream_t stream);
cudaError_t clip_merge_lse(const ClipMergeParams& p, cudaStream_t stream);
cudaError_t clip_dlogits(const ClipDlogitsParams& p, cudaStream_t stream);
cudaError_t clip_strip_gemm(const ClipGemmParams& p, cudaStream_t stream);
cudaError_t clip_finish_grad(const ClipFinishParams& p, cudaStream_t stream);

}  // namespace vtk
