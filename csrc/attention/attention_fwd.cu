// Attention forward, FlashAttention-2 style: one pass over the keys with an online softmax.
//
// fp16 / bf16 (tensor cores, mma.sync m16n8k16; fragment layouts in common/mma.cuh): a block of
// 4 warps owns kBlockM = 64 queries of one (batch, head); warp w owns queries m0 + 16w ..
// m0 + 16w + 15, and lane (g, t) holds rows g and g + 8 of that slice. Q stays in registers as
// A fragments for the whole kernel. Per key block of kBlockN = 64:
//   1. the block stages K row-major ([key][dim]) and V transposed ([dim][key]) in shared
//      memory, zero-filling keys past n_kv, plus the block's padding-mask bytes;
//   2. S = Q K^T;
//   3. scores -> log2 units (scale * log2 e), masked to -inf (bounds, causal, padding); each
//      row's max over its 4 lanes (shuffles over t); running m, l and O rescaled by exp2;
//   4. O += P V, P repacked from the S accumulators into A fragments.
// The row sum l is kept per lane (its share of the row) and reduced over the 4 lanes once at
// the end; every lane of a row shares m, so the rescaling stays consistent.
//
// fp32 (exact, no tensor cores): a warp owns one query row; lanes take keys lane, lane + 32, ...
// each with its own online-softmax state, merged across the warp at the end.

#include <type_traits>

#include "attention/attention.h"
#include "attention/attention_common.cuh"
#include "common/launch.h"
#include "common/reduce.cuh"

namespace vtk {
namespace {

using namespace attention_detail;

constexpr int kBlockM = 16 * kWarps;
constexpr int kBlockN = 64;

template <typename T, int D>
__global__ void __launch_bounds__(32 * kWarps) attention_fwd_mma_kernel(const AttentionFwdParams p) {
  constexpr int kKeyTiles = kBlockN / 8;
  __shared__ alignas(16) T k_tile[kBlockN][D + kSmemPad];
  __shared__ alignas(16) T vt_tile[D][kBlockN + kSmemPad];
  __shared__ uint8_t padded[kBlockN];

  const AttentionShape& s = p.shape;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const auto [b, h, bh] = block_head(s);
  const int m0 = blockIdx.x * kBlockM;
  const int rows[2] = {m0 + warp * 16 + g, m0 + warp * 16 + g + 8};
  const T* k = p.k.at<T>(b, h);
  const T* v = p.v.at<T>(b, h);
  const uint8_t* mask = padding_row(s, b);

  uint32_t qa[D / 16][4];
  load_a_fragments<T, D>(qa, p.q.at<T>(b, h), p.q.row_stride, m0 + warp * 16, s.n_q);

  float o[D / 8][4] = {};
  float m[2] = {-INFINITY, -INFINITY};
  float l[2] = {0.f, 0.f};
  const float scale_log2 = s.scale * kLog2e;
  const int keys_end = keys_end_for_rows(s, min(m0 + kBlockM, s.n_q));

  for (int n0 = 0; n0 < keys_end; n0 += kBlockN) {
    __syncthreads();  // the previous tiles are consumed
    stage_tile<T, D, kBlockN, D + kSmemPad, kBlockN + kSmemPad>(k, p.k.row_stride, n0, s.n_kv, k_tile, nullptr);
    stage_tile<T, D, kBlockN, D + kSmemPad, kBlockN + kSmemPad>(v, p.v.row_stride, n0, s.n_kv, nullptr, vt_tile);
    if (threadIdx.x < kBlockN) padded[threadIdx.x] = (mask && n0 + threadIdx.x < s.n_kv) ? mask[n0 + threadIdx.x] : 0;
    __syncthreads();

    float sc[kKeyTiles][4] = {};
    mma_rows<T, D / 16, kKeyTiles, D + kSmemPad>(sc, qa, k_tile);

    float row_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < kKeyTiles; ++nt)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int key = n0 + nt * 8 + 2 * t + (r & 1);
        const bool ok = key_visible(s, rows[r / 2], key) && padded[key - n0] == 0;
        sc[nt][r] = ok ? sc[nt][r] * scale_log2 : -INFINITY;
        row_max[r / 2] = fmaxf(row_max[r / 2], sc[nt][r]);
      }
    float shift[2], alpha[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      row_max[i] = fmaxf(row_max[i], __shfl_xor_sync(0xffffffffu, row_max[i], 1));
      row_max[i] = fmaxf(row_max[i], __shfl_xor_sync(0xffffffffu, row_max[i], 2));
      const float m_new = fmaxf(m[i], row_max[i]);
      shift[i] = m_new == -INFINITY ? 0.f : m_new;  // a row with only masked keys so far: exp2 -> 0
      alpha[i] = exp2f(m[i] - shift[i]);
      m[i] = m_new;
      l[i] *= alpha[i];
    }
#pragma unroll
    for (int nt = 0; nt < kKeyTiles; ++nt)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        sc[nt][r] = exp2f(sc[nt][r] - shift[r / 2]);
        l[r / 2] += sc[nt][r];
      }
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
      for (int r = 0; r < 4; ++r) o[dt][r] *= alpha[r / 2];
    mma_from_accumulators<T, kBlockN / 16, D / 8, kBlockN + kSmemPad>(o, sc, vt_tile);
  }

  float inv[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    inv[i] = l[i] > 0.f ? 1.f / l[i] : 0.f;  // no key at all: zeros
    if (t == 0 && rows[i] < s.n_q)
      p.lse[bh * s.n_q + rows[i]] = l[i] > 0.f ? (m[i] + log2f(l[i])) * kLn2 : INFINITY;
  }
  store_accumulators<T, D>(o, p.out.at<T>(b, h), p.out.row_stride, m0 + warp * 16, s.n_q, inv);
}

// Exact fp32 path: warp `threadIdx.x / 32` owns one query row.
template <typename T, int D>
__global__ void __launch_bounds__(32 * kWarps) attention_fwd_scalar_kernel(const AttentionFwdParams p) {
  __shared__ float q_rows[kWarps][D];
  const AttentionShape& s = p.shape;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const auto [b, h, bh] = block_head(s);
  const int row = blockIdx.x * kWarps + warp;
  if (row >= s.n_q) return;  // no block barrier below
  const T* q = p.q.at<T>(b, h) + int64_t(row) * p.q.row_stride;
  const T* k = p.k.at<T>(b, h);
  const T* v = p.v.at<T>(b, h);
  const uint8_t* mask = padding_row(s, b);
  const float scale_log2 = s.scale * kLog2e;
  for (int d = lane; d < D; d += 32) q_rows[warp][d] = to_float(q[d]);
  __syncwarp();

  float m = -INFINITY, l = 0.f, acc[D] = {};
  const int keys_end = keys_end_for_rows(s, row + 1);
  for (int key = lane; key < keys_end; key += 32) {
    if (!key_visible(s, row, key) || (mask && mask[key])) continue;
    const T* krow = k + int64_t(key) * p.k.row_stride;
    float dot = 0.f;
#pragma unroll
    for (int d = 0; d < D; ++d) dot += q_rows[warp][d] * to_float(krow[d]);
    const float score = dot * scale_log2;
    const float m_new = fmaxf(m, score);
    const float alpha = exp2f(m - m_new), prob = exp2f(score - m_new);
    l = l * alpha + prob;
    const T* vrow = v + int64_t(key) * p.v.row_stride;
#pragma unroll
    for (int d = 0; d < D; ++d) acc[d] = acc[d] * alpha + prob * to_float(vrow[d]);
    m = m_new;
  }

  // Merge the 32 lanes' states: rescale each to the row max, then sum.
  float row_max = m;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, offset));
  const float factor = (m == -INFINITY) ? 0.f : exp2f(m - row_max);
  const float total = warp_sum(l * factor);
  const float inv = total > 0.f ? 1.f / total : 0.f;
  T* out = p.out.at<T>(b, h) + int64_t(row) * p.out.row_stride;
#pragma unroll
  for (int d = 0; d < D; ++d) {
    const float value = warp_sum(acc[d] * factor);
    if (d % 32 == lane) out[d] = from_float<T>(value * inv);
  }
  if (lane == 0) p.lse[bh * s.n_q + row] = total > 0.f ? (row_max + log2f(total)) * kLn2 : INFINITY;
}

}  // namespace

bool attention_head_dim_supported(int head_dim) {
  return head_dim == 32 || head_dim == 64 || head_dim == 80 || head_dim == 96 || head_dim == 128;
}

cudaError_t attention_fwd(const AttentionFwdParams& p, cudaStream_t stream) {
  const AttentionShape& s = p.shape;
  if (s.batch == 0 || s.heads == 0 || s.n_q == 0) return cudaSuccess;
  return VTK_DISPATCH_DTYPE(s.dtype, [&] {
    return with_head_dim(s.head_dim, [&]<int D>() {
      if constexpr (std::is_same_v<scalar_t, float>) {
        attention_fwd_scalar_kernel<scalar_t, D><<<attention_grid(ceil_div(s.n_q, kWarps), s), 32 * kWarps, 0, stream>>>(p);
      } else {
        attention_fwd_mma_kernel<scalar_t, D><<<attention_grid(ceil_div(s.n_q, kBlockM), s), 32 * kWarps, 0, stream>>>(p);
      }
      return cudaGetLastError();
    });
  });
}

}  // namespace vtk
