// LayerNorm / RMSNorm with optional fused residual add: parameters and launchers.
// Plain C++ + CUDA runtime only (no torch), so nvcc alone compiles the kernels.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "common/dtype.cuh"

namespace vtk {

// Row-major (rows, cols) views with unit column stride; *_stride are row strides in elements.
struct NormFwdParams {
  const void* x;         // (rows, cols)
  const void* residual;  // (rows, cols) or nullptr
  const void* weight;    // (cols) or nullptr
  const void* bias;      // (cols) or nullptr
  void* y;               // (rows, cols)
  void* h;               // (rows, cols) = x + residual; unused without residual
  float* mean;           // (rows); unused for RMSNorm
  float* rstd;           // (rows)
  int64_t rows;
  int cols;
  int64_t x_stride, residual_stride, y_stride, h_stride;
  float eps;
  bool rms;
  DType dtype;
};

struct NormBwdParams {
  const void* dy;        // (rows, cols)
  const void* dh;        // (rows, cols) gradient flowing into h directly, or nullptr
  const void* h;         // (rows, cols) the normalized input (x + residual when fused)
  const void* weight;    // (cols) or nullptr
  const float* mean;     // (rows); unused for RMSNorm
  const float* rstd;     // (rows)
  void* dx;              // (rows, cols) = d h, which is also d x and d residual
  void* dweight;         // (cols) or nullptr
  void* dbias;           // (cols) or nullptr
  float* partial;        // workspace: norm_bwd_workspace_floats() floats
  int64_t rows;
  int cols;
  int64_t dy_stride, dh_stride, h_stride, dx_stride;
  int sm_count;
  bool rms;
  DType dtype;
};

// Cols the fused kernels accept (one row lives in registers).
constexpr int kNormMaxCols = 8192;

cudaError_t norm_fwd(const NormFwdParams& params, cudaStream_t stream);

// fp32 workspace the backward needs for the per-block dweight / dbias partial sums.
int64_t norm_bwd_workspace_floats(const NormBwdParams& params);
cudaError_t norm_bwd(const NormBwdParams& params, cudaStream_t stream);

}  // namespace vtk
