// Swin (shifted-)window attention: parameters and launchers. Plain C++ + CUDA runtime only.
// Index math (roll, partition, padding, bias index, shift regions): see window_attention.cu
// and vtkernels/triton/window_attention.py, which computes the same thing.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "common/dtype.cuh"

namespace vtk {

// Windows of up to 144 tokens (12x12) and head_dim up to 64 fit one block's shared memory in this
// SIMT version (q, k, v, dO of the window in fp32; at 144 tokens x 64 the forward takes 118,592 B
// and the backward 162,880 B, static included: sm_80 / sm_90 parts, not the 99 KB ones such as
// sm_86 / sm_89, where window_attention_shared_memory tells the op to refuse them); larger windows
// are refused by the bindings (Triton takes them).
constexpr int kWindowAttnMaxTokens = 144;
constexpr int kWindowAttnMaxHeadDim = 64;
// The backward loops a block over up to this many consecutive windows of one (batch, head), which
// share one bias / padding partial (see window_attention_bwd_group).
constexpr int kWindowAttnMaxGroup = 8;

struct WindowAttnParams {
  const void* qkv;        // (B, H, W, 3C), unit channel stride, channels (3, heads, head_dim)
  const float* table;     // ((2Mt-1)^2, heads) fp32, contiguous
  const float* pad_qkv;   // (3C) fp32: q/k/v of padding tokens, or nullptr (zeros)
  void* out;              // forward: (B, H, W, C)
  const void* dout;       // backward: (B, H, W, C), unit channel stride
  void* dqkv;             // backward: (B, H, W, 3C)
  float* dbias_partial;   // backward: (B * heads * groups, N, N), dS summed over each group's windows
  float* dpad_partial;    // backward: (B * heads * groups, 2, head_dim) or nullptr
  int batch, height, width, heads, head_dim;
  int window;             // effective window M
  int table_window;       // window the table was built for (Mt >= M)
  int shift;
  bool pad_first;         // HF order (pad, roll) instead of timm's (roll, pad)
  int window_group = 1;   // backward: G consecutive windows per block (window_attention_bwd_group)
  int64_t qkv_stride_b, qkv_stride_h, qkv_stride_w;
  int64_t out_stride_b, out_stride_h, out_stride_w;     // out (forward) or dout (backward)
  int64_t dqkv_stride_b, dqkv_stride_h, dqkv_stride_w;
  float scale, mask_value;
  DType dtype;

  __host__ __device__ int height_pad() const { return (height + window - 1) / window * window; }
  __host__ __device__ int width_pad() const { return (width + window - 1) / window * window; }
  __host__ __device__ int windows_per_row() const { return width_pad() / window; }
  __host__ __device__ int n_windows() const { return height_pad() / window * windows_per_row(); }
  // Backward blocks (and partial slabs) per (batch, head): groups of G windows, the last one ragged.
  __host__ __device__ int window_groups() const { return (n_windows() + window_group - 1) / window_group; }
};

cudaError_t window_attention_fwd(const WindowAttnParams& params, cudaStream_t stream);
cudaError_t window_attention_bwd(const WindowAttnParams& params, cudaStream_t stream);

// Shared memory one forward (backward) block needs for this window and head_dim, static + dynamic
// (*needed), and the most one block may opt in to on `device` (*available), in bytes.
cudaError_t window_attention_shared_memory(int window, int head_dim, bool backward, int device, size_t* needed,
                                           size_t* available);

// Windows per backward block G in [1, kWindowAttnMaxGroup]: as many as leave a grid of at least
// 4 blocks per SM (G = 1 when even that needs every window).
int window_attention_bwd_group(int batch_heads, int n_windows, int sm_count);

// dtable[t, h] = sum of per_pair[h, p, q] over the token pairs (p, q) at table row t.
// per_pair: (heads, N, N) fp32; dtable: ((2Mt-1)^2, heads) fp32.
cudaError_t window_attention_fold_bias_grad(const float* per_pair, float* dtable, int heads, int window,
                                            int table_window, cudaStream_t stream);

}  // namespace vtk
