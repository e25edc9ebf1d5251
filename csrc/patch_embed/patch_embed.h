// Fused patch embedding (Conv2d with stride = kernel = patch, flatten, cls token, position
// embedding): parameters and launchers. Plain C++ + CUDA runtime only (no torch).
//
// Images are described as a (B, C, H, W) view with arbitrary element strides, so NCHW, NHWC and
// uint8 (B, H, W, C) inputs are the same case. Kernels take fp16 / bf16 (the weight dtype T);
// images are T or uint8. Normalization is the per-channel fp32 affine x * scale[c] + shift[c].
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "common/dtype.cuh"

namespace vtk {

struct PatchGeometry {
  int batch = 0, channels = 0, patch = 0;
  int grid_w = 0, num_patches = 0;  // grid (H // p) x (W // p), N = grid_h * grid_w
  int dim = 0;                      // D
  int prefix = 0;                   // 1 with a cls token: token n of image b is row b * (N + prefix) + prefix + n
  int64_t image_stride[4] = {0, 0, 0, 0};   // b, c, h, w (elements)
  int64_t weight_stride[4] = {0, 0, 0, 0};  // d, c, ky, kx (elements) of the (D, C, p, p) weight
};

struct PatchEmbedFwdParams {
  PatchGeometry g;
  const void* images;   // T or uint8
  bool images_uint8;
  const void* weight;   // (D, C, p, p), T
  const void* bias;     // (D) or nullptr
  const void* cls;      // (D) or nullptr
  const void* pos;      // (pos_rows, D) contiguous or nullptr
  int pos_start;        // 1 when pos has a row for the cls token, else 0
  const float* scale;   // (C) or nullptr (no normalization)
  const float* shift;   // (C) or nullptr
  void* out;            // (B, prefix + N, D) contiguous, T
  DType dtype;          // T (fp16 / bf16)
};

struct PatchEmbedBwdImagesParams {
  PatchGeometry g;      // image_stride: of grad_images
  const void* grad_out; // (B, prefix + N, D) contiguous
  const void* weight;
  const float* scale;   // (C) or nullptr
  void* grad_images;    // pixels past the last full patch are not written (caller zero-fills)
  DType dtype;
};

struct PatchEmbedBwdWeightParams {
  PatchGeometry g;
  const void* grad_out;
  const void* images;
  bool images_uint8;
  const float* scale;
  const float* shift;
  float* partial;       // workspace: patch_embed_bwd_weight_workspace_floats(params) floats
  int splits;           // filled by patch_embed_bwd_weight_workspace_floats: the patches are
  int split_depth;      // summed in `splits` chunks of `split_depth` (a multiple of 32)
  int sm_count;
  void* grad_weight;    // (D, C, p, p) contiguous, T
  DType dtype;
};

cudaError_t patch_embed_fwd(const PatchEmbedFwdParams& params, cudaStream_t stream);
cudaError_t patch_embed_bwd_images(const PatchEmbedBwdImagesParams& params, cudaStream_t stream);
// Chooses params.splits (the reduction over patches is split for parallelism) and returns the
// fp32 workspace size the backward needs.
int64_t patch_embed_bwd_weight_workspace_floats(PatchEmbedBwdWeightParams& params);
cudaError_t patch_embed_bwd_weight(const PatchEmbedBwdWeightParams& params, cudaStream_t stream);

}  // namespace vtk
