// CLIP loss backward: the dS strip (recomputed S tiles), the strip GEMMs, the finishing pass.
//
// clip_dlogits_kernel: block (row_block, strip column block) recomputes its S tile and, straight
// from the mma fragments, writes dS = (P_row + P_col) / 2 - delta into the strip and adds up
//   sum(dS * S) = sum(dS_row * (S - lse_row) + dS_col * (S - lse_col)) / 2
// (every row of dS_row = P_row - delta and column of dS_col sums to zero, so the terms are
// P log P, not P * S: no cancellation at scale 100). One float per block goes to dt_part.

#include <algorithm>
#include <cmath>

#include "clip_loss/clip_loss.h"
#include "clip_loss/clip_tile.cuh"
#include "common/launch.h"
#include "common/reduce.cuh"

namespace vtk {
namespace {

using clip::kBM;
using clip::kBN;
using clip::kThreads;

template <typename T>
__global__ void __launch_bounds__(kThreads) dlogits_kernel(const ClipDlogitsParams p) {
  __shared__ clip::TileSmem<T> smem;
  __shared__ float warp_sums[kThreads / 32];
  const int64_t row0 = int64_t(blockIdx.x) * kBM;
  const int64_t col0 = p.col_start + int64_t(blockIdx.y) * kBN;
  const clip::Operand<T> image{static_cast<const T*>(p.image), p.image_stride, 1, p.n_rows, p.d};
  const clip::Operand<T> text{static_cast<const T*>(p.text), p.text_stride, 1, p.strip_end, p.d};
  clip::Acc acc;
  clip::tile_matmul(acc, smem, image, text, row0, col0);

  const float scale = *p.scale;
  T* ds = static_cast<T*>(p.ds);
  float dt = 0.f;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t row = row0 + clip::Acc::row(mi, 2 * half);
      if (row >= p.n_rows) continue;
      const float lse_row = p.row_lse[row];
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const int64_t col = col0 + clip::Acc::col(ni, 0);  // this thread's two adjacent columns
        float out[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          out[e] = 0.f;
          if (col + e >= p.strip_end) continue;
          const float s = acc.v[mi][ni][2 * half + e] * scale;
          const float is_pos = (col + e == row + p.diag_offset) ? 1.f : 0.f;
          const float log_p_row = s - lse_row, log_p_col = s - p.col_lse[col + e];
          const float d_row = __expf(log_p_row) - is_pos, d_col = __expf(log_p_col) - is_pos;
          out[e] = 0.5f * (d_row + d_col);
          dt += 0.5f * (d_row * log_p_row + d_col * log_p_col);
        }
        T* dst = ds + row * p.ds_stride + (col - p.col_start);
        if (col + 1 < p.strip_end) {
          dst[0] = from_float<T>(out[0] * p.ds_scale);
          dst[1] = from_float<T>(out[1] * p.ds_scale);
        } else if (col < p.strip_end) {
          dst[0] = from_float<T>(out[0] * p.ds_scale);
        }
      }
    }
  }
  dt = warp_sum(dt);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = dt;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.f;
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
    p.dt_part[int64_t(blockIdx.y) * gridDim.x + blockIdx.x] = total;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) strip_gemm_kernel(const ClipGemmParams p) {
  __shared__ clip::TileSmem<T> smem;
  const int64_t row0 = int64_t(blockIdx.x) * kBM, col0 = int64_t(blockIdx.y) * kBN;
  // This split's K range: operands shifted to its first k and cut to its length.
  const int64_t k0 = int64_t(blockIdx.z) * p.k_per_split, k_len = min(p.k - k0, p.k_per_split);
  // B^T as a (n, k) operand: element (n, k) at b + n * b_stride_n + k * b_stride_k.
  const clip::Operand<T> a{static_cast<const T*>(p.a) + k0 * p.a_stride_k, p.a_stride_m, p.a_stride_k, p.m, k_len};
  const clip::Operand<T> bt{static_cast<const T*>(p.b) + k0 * p.b_stride_k, p.b_stride_n, p.b_stride_k, p.n, k_len};
  float* const c = p.c + int64_t(blockIdx.z) * p.c_split_stride;
  clip::Acc acc;
  clip::tile_matmul(acc, smem, a, bt, row0, col0);
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t row = row0 + clip::Acc::row(mi, e), col = col0 + clip::Acc::col(ni, e);
        if (row >= p.m || col >= p.n) continue;
        float* dst = c + row * p.c_stride + col;
        const float value = p.alpha * acc.v[mi][ni][e];
        *dst = p.accumulate ? *dst + value : value;
      }
}

// A warp per row. g = coef * acc is the gradient w.r.t. y = x / max(||x||, eps):
// dx = (g - y <y, g>) / ||x||, or g / eps while the norm is clamped; without normalization dx = g.
template <typename T>
__global__ void __launch_bounds__(128) finish_grad_kernel(const ClipFinishParams p) {
  const int64_t row = int64_t(blockIdx.x) * 4 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= p.rows) return;
  const T* x = static_cast<const T*>(p.x) + row * p.x_stride;
  const float* acc = p.acc + row * p.d;
  const float coef = *p.coef;
  float row_coef = coef, proj = 0.f;
  if (p.normalize) {
    float sumsq = 0.f, dot = 0.f;
    for (int k = lane; k < p.d; k += 32) {
      const float v = to_float(x[k]);
      sumsq += v * v;
      dot += v * acc[k];
    }
    const float norm = sqrtf(warp_sum(sumsq));
    dot = warp_sum(dot);
    const float rnorm = 1.f / fmaxf(norm, kClipNormEps);
    proj = norm >= kClipNormEps ? dot * rnorm * rnorm : 0.f;  // <y, acc> y = x <x, acc> rnorm^2
    row_coef = coef * rnorm;
  }
  T* dx = static_cast<T*>(p.dx) + row * p.dx_stride;
  for (int k = lane; k < p.d; k += 32) dx[k] = from_float<T>(row_coef * (acc[k] - to_float(x[k]) * proj));
}

template <template <typename> class Kernel, typename P>
cudaError_t launch_16bit(const P& p, dim3 grid, int threads, cudaStream_t stream) {
  if (p.dtype == DType::kFloat16) {
    Kernel<__half>::launch(p, grid, threads, stream);
  } else if (p.dtype == DType::kBFloat16) {
    Kernel<__nv_bfloat16>::launch(p, grid, threads, stream);
  } else {
    return cudaErrorInvalidValue;  // tensor-core tiles: fp16 / bf16 only (the bindings refuse fp32)
  }
  return cudaGetLastError();
}

template <typename T>
struct Dlogits {
  static void launch(const ClipDlogitsParams& p, dim3 g, int t, cudaStream_t s) { dlogits_kernel<T><<<g, t, 0, s>>>(p); }
};
template <typename T>
struct StripGemm {
  static void launch(const ClipGemmParams& p, dim3 g, int t, cudaStream_t s) { strip_gemm_kernel<T><<<g, t, 0, s>>>(p); }
};

}  // namespace

cudaError_t clip_dlogits(const ClipDlogitsParams& p, cudaStream_t stream) {
  if (p.n_rows == 0 || p.strip_end <= p.col_start) return cudaSuccess;
  const dim3 grid(ceil_div(p.n_rows, kBM), ceil_div(p.strip_end - p.col_start, kBN));
  return launch_16bit<Dlogits>(p, grid, kThreads, stream);
}

cudaError_t clip_strip_gemm(const ClipGemmParams& params, cudaStream_t stream) {
  if (params.m == 0 || params.n == 0) return cudaSuccess;
  ClipGemmParams p = params;
  if (p.k_per_split <= 0 || p.k_per_split > p.k) p.k_per_split = std::max<int64_t>(p.k, 1);  // one range
  const dim3 grid(ceil_div(p.m, kBM), ceil_div(p.n, kBN), ceil_div(std::max<int64_t>(p.k, 1), p.k_per_split));
  return launch_16bit<StripGemm>(p, grid, kThreads, stream);
}

cudaError_t clip_finish_grad(const ClipFinishParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  VTK_DISPATCH_DTYPE(p.dtype, [&] { finish_grad_kernel<scalar_t><<<ceil_div(p.rows, 4), 128, 0, stream>>>(p); });
  return cudaGetLastError();
}

}  // namespace vtk
