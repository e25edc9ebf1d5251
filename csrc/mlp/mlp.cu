// The MLP's fused GEMMs as gather-GEMM problems (common/gather_gemm.cuh): plain row-major
// operands, the bias and activation (forward) or the activation's derivative (backward) applied
// to the fp32 accumulator in the store. Correct everywhere, not tuned: the Triton kernels are the
// fast path (see vtkernels/ops/mlp.py).
#include "mlp/mlp.h"

#include <type_traits>

#include "common/gather_gemm.cuh"

namespace vtk {
namespace {

// What both problems share: A (M, K) read row by row through row stride lda; C is (M, N).
template <typename T>
struct RowMajorA {
  static constexpr bool kAKFast = true;  // A rows are contiguous along k
  const T* a_ptr;
  int64_t lda;
  int m, n, k;
  int k_chunk;

  __host__ __device__ int rows() const { return m; }
  __host__ __device__ int cols() const { return n; }
  __host__ __device__ int depth() const { return k; }
  __device__ int64_t a_row(int r) const { return r * lda; }
  __device__ int a_col(int kk) const { return kk; }
  __device__ float a(int64_t row, int col) const { return to_float(a_ptr[row + col]); }
};

// A = x: pre = x W^T + bias, out = act(pre); N = hidden, K = dim, W (N, K) is fc1's weight.
template <typename T, Activation A>
struct LinearActProblem : RowMajorA<T> {
  static constexpr bool kBKFast = true;  // W rows are contiguous along k
  const T* weight;
  const T* bias;
  T* pre;
  T* out;

  __device__ int64_t b_row(int c) const { return int64_t(c) * this->k; }
  __device__ int b_col(int kk) const { return kk; }
  __device__ float b(int64_t row, int col) const { return to_float(weight[row + col]); }
  __device__ void store(int r, int c, float v) const {
    if (bias) v += to_float(bias[c]);
    const int64_t offset = int64_t(r) * this->n + c;
    if (pre) pre[offset] = from_float<T>(v);
    out[offset] = from_float<T>(activate<A>(v));
  }
};

// A = d out: out = (d out W) * act'(pre); N = hidden, K = dim_out, W (K, N) is fc2's weight.
template <typename T, Activation A>
struct ActGradProblem : RowMajorA<T> {
  static constexpr bool kBKFast = false;  // W[k, :] is contiguous along the output column
  const T* weight;
  const T* pre;
  T* out;

  __device__ int b_row(int c) const { return c; }  // the column part of W's offset kk * n + c
  __device__ int64_t b_col(int kk) const { return int64_t(kk) * this->n; }
  __device__ float b(int c, int64_t row) const { return to_float(weight[row + c]); }
  __device__ void store(int r, int c, float v) const {
    const int64_t offset = int64_t(r) * this->n + c;
    out[offset] = from_float<T>(v * activation_grad<A>(to_float(pre[offset])));
  }
};

template <typename T>
RowMajorA<T> row_major_a(const MlpGemmParams& p) {
  return {static_cast<const T*>(p.a), p.lda, p.m, p.n, p.k, gather_gemm::whole_depth(p.k)};
}

// Launches the problem make(T{}, activation tag) builds, for p's 16-bit type and activation.
template <typename Make>
cudaError_t launch(const MlpGemmParams& p, cudaStream_t stream, Make&& make) {
  return gather_gemm::dispatch_16bit(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    return dispatch_activation(p.activation, [&](auto act) {
      const auto problem = make(tag, act);
      return gather_gemm::launch_gemm<std::remove_const_t<decltype(problem)>, T>(problem, stream);
    });
  });
}

}  // namespace

cudaError_t mlp_linear_act(const MlpGemmParams& p, cudaStream_t stream) {
  return launch(p, stream, [&](auto tag, auto act) {
    using T = decltype(tag);
    return LinearActProblem<T, decltype(act)::value>{row_major_a<T>(p), static_cast<const T*>(p.weight),
                                                     static_cast<const T*>(p.bias), static_cast<T*>(p.pre),
                                                     static_cast<T*>(p.out)};
  });
}

cudaError_t mlp_matmul_act_grad(const MlpGemmParams& p, cudaStream_t stream) {
  return launch(p, stream, [&](auto tag, auto act) {
    using T = decltype(tag);
    return ActGradProblem<T, decltype(act)::value>{row_major_a<T>(p), static_cast<const T*>(p.weight),
                                                   static_cast<const T*>(p.pre), static_cast<T*>(p.out)};
  });
}

}  // namespace vtk
