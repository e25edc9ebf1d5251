// QuickGELU (OpenAI CLIP, iGPT): y = x * sigmoid(1.702 x) in one pass, math in fp32.
// Backward: dx = dy * (s + 1.702 x s (1 - s)) with s = sigmoid(1.702 x).
// Eager PyTorch runs the formula as three kernels (scale, sigmoid, product: 4 reads, 3 writes of
// the MLP's hidden activations); this reads x once and writes y once.
// Plain C++ + CUDA runtime only (no torch), so nvcc alone compiles the kernels.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "common/dtype.cuh"

namespace vtk {

// x, dy (backward only, else null) and out (y forward, dx backward): n contiguous elements.
struct QuickGeluParams {
  const void* x;
  const void* dy;
  void* out;
  int64_t n;
  DType dtype;
};

cudaError_t quick_gelu_fwd(const QuickGeluParams& p, cudaStream_t stream);
cudaError_t quick_gelu_bwd(const QuickGeluParams& p, cudaStream_t stream);

}  // namespace vtk
