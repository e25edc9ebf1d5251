// The MLP's two fused GEMMs (spec: vtkernels/reference/activation.py: mlp). Plain C++ + CUDA
// runtime only (no torch).
//
//   linear_act:      pre = A W^T + bias,  out = act(pre)  (and pre stored when `pre` is set)
//                    A = x (M, K), W = fc1's weight (N, K)
//   matmul_act_grad: out = (A W) * act'(pre)               (d pre of the MLP's backward)
//                    A = d out (M, K), W = fc2's weight (K, N), pre the saved pre-activation
// fp16 / bf16 operands (tensor-core MMA), fp32 accumulation and epilogue.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "common/activation.cuh"
#include "common/dtype.cuh"

namespace vtk {

struct MlpGemmParams {
  const void* a;        // (M, K), row stride lda, unit column stride
  int64_t lda;
  const void* weight;   // contiguous: (N, K) for linear_act, (K, N) for matmul_act_grad
  const void* bias;     // (N) or nullptr (linear_act only)
  void* pre;            // (M, N) contiguous: written by linear_act when not nullptr, read by matmul_act_grad
  void* out;            // (M, N) contiguous
  int m, n, k;
  Activation activation;
  DType dtype;          // fp16 / bf16
};

cudaError_t mlp_linear_act(const MlpGemmParams& params, cudaStream_t stream);
cudaError_t mlp_matmul_act_grad(const MlpGemmParams& params, cudaStream_t stream);

}  // namespace vtk
