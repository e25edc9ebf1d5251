// iGPT colour palette: uint8 RGB pixels -> nearest-cluster ids, and ids -> uint8 pixels.
// Plain C++ + CUDA runtime only (no torch), so nvcc alone compiles the kernels.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "common/dtype.cuh"

namespace vtk {

// pixels: logical (batch, n_pixels, 3) uint8 with element strides; clusters: (n_clusters, 3)
// contiguous; tokens: (batch, n_pixels) contiguous int64.
struct PaletteQuantizeParams {
  const uint8_t* pixels;
  const void* clusters;
  int64_t* tokens;
  int64_t batch, n_pixels;
  int n_clusters;
  int64_t stride_b, stride_p, stride_c;
  DType clusters_dtype;
};

// tokens: (batch, n_pixels) contiguous int32 or int64; out: logical (batch, n_pixels, 3) uint8
// with element strides (channels-first or channels-last storage).
struct PaletteDequantizeParams {
  const void* tokens;
  bool tokens_int32;
  const void* clusters;
  uint8_t* out;
  int64_t batch, n_pixels;
  int n_clusters;
  int64_t stride_b, stride_p, stride_c;
  DType clusters_dtype;
};

cudaError_t palette_quantize(const PaletteQuantizeParams& p, cudaStream_t stream);
cudaError_t palette_dequantize(const PaletteDequantizeParams& p, cudaStream_t stream);

}  // namespace vtk
