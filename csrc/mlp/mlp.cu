// The MLP's fused GEMMs as gather-GEMM problems (common/gather_gemm.cuh): plain row-major
// operands, the bias and activation (forward) or the activation's derivative (backward) applied
// to the fp32 accumulator in the store. Correct everywhere, not tuned: the Triton kernels are the
// fast path (see vtkernels/ops/mlp.py).
#include "mlp/mlp.h"

#include "common/gather_gemm.cuh"

namespace vtk {
namespace {

// pre = x W^T + bias, out = act(pre): M = rows of x, N = hidden, K = dim.
template <typename T, Activation A>
struct LinearActProblem {
  static constexpr bool kAKFast = true;  // x rows are contiguous along k
  static constexpr bool kBKFast = true;  // W (N, K) rows are contiguous along k
  const T* x;
  int64_t lda;
  const T* weight;
  const T* bias;
  T* pre;
  T* out;
  int m, n, k;
  int k_chunk;

  __host__ __device__ int rows() const { return m; }
  __host__ __device__ int cols() const { return n; }
  __host__ __device__ int depth() const { return k; }
  __device__ int64_t a_row(int r) const { return r * lda; }
  __device__ int a_col(int kk) const { return kk; }
  __device__ float a(int64_t row, int col) const { return to_float(x[row + col]); }
  __device__ int64_t b_row(int c) const { return int64_t(c) * k; }
  __device__ int b_col(int kk) const { return kk; }
  __device__ float b(int64_t row, int col) const { return to_float(weight[row + col]); }
  __device__ void store(int r, int c, float v) const {
    if (bias) v += to_float(bias[c]);
    const int64_t offset = int64_t(r) * n + c;
    if (pre) pre[offset] = from_float<T>(v);
    out[offset] = from_float<T>(activate<A>(v));
  }
};

// out = (d_out W) * act'(pre): M = rows, N = hidden, K = dim_out; W (K, N) is fc2's weight.
template <typename T, Activation A>
struct ActGradProblem {
  static constexpr bool kAKFast = true;   // d_out rows are contiguous along k
  static constexpr bool kBKFast = false;  // W[k, :] is contiguous along the output column
  const T* d_out;
  int64_t lda;
  const T* weight;
  const T* pre;
  T* out;
  int m, n, k;
  int k_chunk;

  __host__ __device__ int rows() const { return m; }
  __host__ __device__ int cols() const { return n; }
  __host__ __device__ int depth() const { return k; }
  __device__ int64_t a_row(int r) const { return r * lda; }
  __device__ int a_col(int kk) const { return kk; }
  __device__ float a(int64_t row, int col) const { return to_float(d_out[row + col]); }
  __device__ int b_row(int c) const { return c; }  // the column part of W's offset kk * n + c
  __device__ int64_t b_col(int kk) const { return int64_t(kk) * n; }
  __device__ float b(int c, int64_t row) const { return to_float(weight[row + c]); }
  __device__ void store(int r, int c, float v) const {
    const int64_t offset = int64_t(r) * n + c;
    out[offset] = from_float<T>(v * activation_grad<A>(to_float(pre[offset])));
  }
};

}  // namespace

cudaError_t mlp_linear_act(const MlpGemmParams& p, cudaStream_t stream) {
  return gather_gemm::dispatch_16bit(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    return dispatch_activation(p.activation, [&](auto act) {
      using Problem = LinearActProblem<T, decltype(act)::value>;
      const Problem problem{static_cast<const T*>(p.a), p.lda, static_cast<const T*>(p.weight),
                            static_cast<const T*>(p.bias), static_cast<T*>(p.pre), static_cast<T*>(p.out),
                            p.m, p.n, p.k, gather_gemm::whole_depth(p.k)};
      return gather_gemm::launch_gemm<Problem, T>(problem, stream);
    });
  });
}

cudaError_t mlp_matmul_act_grad(const MlpGemmParams& p, cudaStream_t stream) {
  return gather_gemm::dispatch_16bit(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    return dispatch_activation(p.activation, [&](auto act) {
      using Problem = ActGradProblem<T, decltype(act)::value>;
      const Problem problem{static_cast<const T*>(p.a), p.lda, static_cast<const T*>(p.weight),
                            static_cast<const T*>(p.pre), static_cast<T*>(p.out), p.m, p.n, p.k,
                            gather_gemm::whole_depth(p.k)};
      return gather_gemm::launch_gemm<Problem, T>(problem, stream);
    });
  });
}

}  // namespace vtk
