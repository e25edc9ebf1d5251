// Swin patch merging fused with its LayerNorm(4C): parameters and launchers.
// Plain C++ + CUDA runtime only (no torch), so nvcc alone compiles the kernels.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "common/dtype.cuh"

namespace vtk {

// x is (batch, height, width, channels) with unit channel stride; the merged output has
// ceil(height / 2) * ceil(width / 2) rows per image, each 4 * channels long.
struct MergeGeometry {
  int64_t batch;
  int height, width, channels;
};

// Element strides of an image tensor's batch, height and width dimensions.
struct PixelStrides {
  int64_t b, h, w;
};

struct PatchMergingFwdParams {
  const void* x;       // (batch, height, width, channels)
  const void* weight;  // (4 * channels) or nullptr
  const void* bias;    // (4 * channels) or nullptr
  void* y;             // (rows, 4 * channels) contiguous
  float* mean;         // (rows)
  float* rstd;         // (rows)
  MergeGeometry shape;
  PixelStrides x_strides;
  float eps;
  DType dtype;
};

struct PatchMergingBwdParams {
  const void* dy;      // (rows, 4 * channels) contiguous
  const void* x;       // (batch, height, width, channels)
  const void* weight;  // (4 * channels) or nullptr
  const float* mean;   // (rows)
  const float* rstd;   // (rows)
  void* dx;            // (batch, height, width, channels): every pixel is written
  void* dweight;       // (4 * channels) or nullptr
  void* dbias;         // (4 * channels) or nullptr
  float* partial;      // workspace: patch_merging_bwd_workspace_floats() floats
  MergeGeometry shape;
  PixelStrides x_strides, dx_strides;
  int sm_count;
  DType dtype;
};

// Merged rows: batch * ceil(height / 2) * ceil(width / 2).
int64_t patch_merging_rows(const MergeGeometry& shape);

cudaError_t patch_merging_fwd(const PatchMergingFwdParams& params, cudaStream_t stream);

// fp32 workspace the backward needs for the per-block dweight / dbias partial sums.
int64_t patch_merging_bwd_workspace_floats(const PatchMergingBwdParams& params);
cudaError_t patch_merging_bwd(const PatchMergingBwdParams& params, cudaStream_t stream);

}  // namespace vtk
