// QuickGELU forward and backward (spec: vtkernels/reference/activation.py). A grid-stride loop
// over 16-byte vectors (8 bf16 / fp16, 4 fp32 elements per thread and step); the elements past
// the last whole vector, or all of them when a pointer is not 16-byte aligned, one at a time.
#include "activation/activation.h"

#include <algorithm>

#include "common/activation.cuh"
#include "common/launch.h"

namespace vtk {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 8192;  // grid-stride beyond: enough blocks to fill any GPU

struct Forward {
  __device__ __forceinline__ float operator()(float x, float) const { return activate<Activation::kQuickGelu>(x); }
};

struct Backward {
  __device__ __forceinline__ float operator()(float x, float dy) const {
    return dy * activation_grad<Activation::kQuickGelu>(x);
  }
};

template <typename T, typename Op>
__global__ void __launch_bounds__(kThreads) elementwise_kernel(const T* x, const T* dy, T* out, int64_t n,
                                                               int64_t vectors) {
  constexpr int N = kVec16<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const Op op;
  for (int64_t i = first; i < vectors; i += stride) {
    float xs[N], gs[N], ys[N];
    load_vec<T, N>(x + i * N, true, xs);
    load_vec<T, N>(dy ? dy + i * N : nullptr, dy != nullptr, gs);
#pragma unroll
    for (int e = 0; e < N; ++e) ys[e] = op(xs[e], gs[e]);
    store_vec<T, N>(out + i * N, ys);
  }
  for (int64_t i = vectors * N + first; i < n; i += stride) {
    out[i] = from_float<T>(op(to_float(x[i]), dy ? to_float(dy[i]) : 0.f));
  }
}

bool aligned16(const void* ptr) { return ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

template <typename Op>
cudaError_t launch(const QuickGeluParams& p, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  return VTK_DISPATCH_DTYPE(p.dtype, [&] {
    constexpr int N = kVec16<scalar_t>;
    const bool vectorized = aligned16(p.x) && aligned16(p.dy) && aligned16(p.out);
    const int64_t vectors = vectorized ? p.n / N : 0;
    const int64_t work = std::max<int64_t>(vectors, p.n - vectors * N);
    const int blocks = std::min(ceil_div(work, kThreads), kMaxBlocks);
    elementwise_kernel<scalar_t, Op><<<blocks, kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(p.x), static_cast<const scalar_t*>(p.dy), static_cast<scalar_t*>(p.out), p.n,
        vectors);
    return cudaGetLastError();
  });
}

}  // namespace

cudaError_t quick_gelu_fwd(const QuickGeluParams& p, cudaStream_t stream) { return launch<Forward>(p, stream); }

cudaError_t quick_gelu_bwd(const QuickGeluParams& p, cudaStream_t stream) { return launch<Backward>(p, stream); }

}  // namespace vtk
