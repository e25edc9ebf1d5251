// Fused attention forward and backward: parameters and launchers. Plain C++ + CUDA runtime (no torch).
//
// Tensors are logical (B, H, N, head_dim) with any batch / head / row strides (in elements) and
// unit stride along head_dim, so both the (B, H, N, d) and the (B, N, H, d) layouts are read in
// place. Semantics follow vtkernels/reference/attention.py: causal is aligned bottom-right
// (query i attends key j iff j <= i + n_kv - n_q), nonzero key_padding_mask bytes mark keys to
// ignore, and a query row with no key left stores zeros and lse = +inf.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "common/dtype.cuh"

namespace vtk {

// One (B, H, N, d) operand: data and its batch / head / row strides in elements.
struct BhndView {
  void* data = nullptr;
  int64_t batch_stride = 0, head_stride = 0, row_stride = 0;

  template <typename T>
  __host__ __device__ T* at(int b, int h) const {
    return static_cast<T*>(data) + b * batch_stride + h * head_stride;
  }
};

struct AttentionShape {
  int batch, heads, n_q, n_kv, head_dim;
  float scale;
  bool causal;
  const uint8_t* key_padding_mask;  // (B, n_kv), unit stride along keys, or nullptr
  int64_t mask_batch_stride;
  DType dtype;
};

struct AttentionFwdParams {
  AttentionShape shape;
  BhndView q, k, v;  // (B, H, n_q or n_kv, d), read
  BhndView out;      // (B, H, n_q, d), written
  float* lse;        // (B, H, n_q) contiguous: natural-log logsumexp of the scaled scores
};

struct AttentionBwdParams {
  AttentionShape shape;
  BhndView q, k, v, out, dout;  // read
  BhndView dq, dk, dv;          // written
  const float* lse;             // (B, H, n_q) from the forward
  float* delta;                 // (B, H, n_q) workspace: rowsum(dout * out)
};

// head_dim values the kernels are compiled for.
bool attention_head_dim_supported(int head_dim);

// fp16 / bf16: tensor-core (mma.sync) FlashAttention-2 forward; needs 16-byte aligned q, k, v,
// out pointers and row / head / batch strides that are multiples of 8 elements (the bindings
// copy a tensor that is not). fp32: an exact scalar kernel (one warp per query row).
cudaError_t attention_fwd(const AttentionFwdParams& params, cudaStream_t stream);

// dq, dk, dv without materializing N x N (FlashAttention-2 backward: delta, then one kernel for
// dK / dV over key blocks and one for dQ over query blocks; no atomics). Same dtype paths and
// alignment needs as the forward.
cudaError_t attention_bwd(const AttentionBwdParams& params, cudaStream_t stream);

}  // namespace vtk
