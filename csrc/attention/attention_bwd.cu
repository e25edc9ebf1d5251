// Attention backward, FlashAttention-2 style, atomic-free; never materializes N x N.
//
// With P = softmax(S), S = scale * Q K^T recomputed tile by tile from the saved logsumexp:
//   dV = P^T dO,  dP = dO V^T,  dS = P * (dP - delta) with delta = rowsum(dO * O),
//   dQ = scale * dS K,  dK = scale * dS^T Q.
// 1. delta_kernel: one warp per query row.
// 2. dkdv (fp16 / bf16, mma.sync): a block of 4 warps owns 64 keys, warp w keys 16w .. 16w + 15
//    with K and V as A fragments in registers. It walks query tiles of 32 (causal: from the
//    first query that sees its keys), staging Q and dO both row-major and transposed:
//      S^T = K Q^T -> P^T = exp2(S^T * scale log2 e - lse log2 e) -> dV += P^T dO;
//      dP^T = V dO^T -> dS^T = P^T (dP^T - delta) -> dK += dS^T Q.
//    Masked entries (bounds, causal, padding) get P = 0; rows with no key have lse = +inf, so 0.
// 3. dq (fp16 / bf16, mma.sync): a block owns 64 queries (Q and dO as A fragments) and walks key
//    tiles of 32 (K row-major and transposed, V row-major): S = Q K^T, dP = dO V^T, dQ += dS K.
// fp32: exact scalar kernels, one warp per key row (dK, dV) or query row (dQ), lanes split
// head_dim and each (query, key) dot product is a warp sum.

#include <type_traits>

#include "attention/attention.h"
#include "attention/attention_common.cuh"
#include "common/launch.h"
#include "common/reduce.cuh"

namespace vtk {
namespace {

using namespace attention_detail;

constexpr int kKeysPerBlock = 16 * kWarps;     // dkdv
constexpr int kQueryTile = 32;                 // dkdv inner tile
constexpr int kQueriesPerBlock = 16 * kWarps;  // dq
constexpr int kKeyTile = 32;                   // dq inner tile

template <int D>
constexpr int kLanesDims = (D + 31) / 32;  // dims per lane in the scalar kernels

// delta[bh][i] = sum_d dO[i][d] * O[i][d] in fp32; warp per row.
template <typename T>
__global__ void __launch_bounds__(32 * kWarps) attention_bwd_delta_kernel(const AttentionBwdParams p) {
  const AttentionShape& s = p.shape;
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * kWarps + threadIdx.x / 32;
  const auto [b, h, bh] = block_head(s);
  if (row >= s.n_q) return;
  const T* o = p.out.at<T>(b, h) + int64_t(row) * p.out.row_stride;
  const T* d_o = p.dout.at<T>(b, h) + int64_t(row) * p.dout.row_stride;
  float sum = 0.f;
  for (int d = lane; d < s.head_dim; d += 32) sum += to_float(o[d]) * to_float(d_o[d]);
  sum = warp_sum(sum);
  if (lane == 0) p.delta[bh * s.n_q + row] = sum;
}

template <typename T, int D>
__global__ void __launch_bounds__(32 * kWarps) attention_bwd_dkdv_mma_kernel(const AttentionBwdParams p) {
  constexpr int kLd = D + kSmemPad, kLdT = kQueryTile + kSmemPad, kQTiles = kQueryTile / 8;
  __shared__ alignas(16) T q_tile[kQueryTile][kLd];
  __shared__ alignas(16) T qt_tile[D][kLdT];
  __shared__ alignas(16) T do_tile[kQueryTile][kLd];
  __shared__ alignas(16) T dot_tile[D][kLdT];
  __shared__ float lse_log2[kQueryTile], delta[kQueryTile];

  const AttentionShape& s = p.shape;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const auto [b, h, bh] = block_head(s);
  const int k0 = blockIdx.x * kKeysPerBlock, warp_k0 = k0 + warp * 16;
  const int keys[2] = {warp_k0 + g, warp_k0 + g + 8};
  const uint8_t* mask = padding_row(s, b);
  bool key_ok[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) key_ok[i] = keys[i] < s.n_kv && !(mask && mask[keys[i]]);

  uint32_t ka[D / 16][4], va[D / 16][4];
  load_a_fragments<T, D>(ka, p.k.at<T>(b, h), p.k.row_stride, warp_k0, s.n_kv);
  load_a_fragments<T, D>(va, p.v.at<T>(b, h), p.v.row_stride, warp_k0, s.n_kv);
  float dk[D / 8][4] = {}, dv[D / 8][4] = {};
  const float scale_log2 = s.scale * kLog2e;
  const T* q = p.q.at<T>(b, h);
  const T* d_o = p.dout.at<T>(b, h);
  const float* lse = p.lse + bh * s.n_q;
  const float* dlt = p.delta + bh * s.n_q;

  const int q_begin = (first_query_for_key(s, k0) / kQueryTile) * kQueryTile;
  for (int q0 = q_begin; q0 < s.n_q; q0 += kQueryTile) {
    __syncthreads();
    stage_tile<T, D, kQueryTile, kLd, kLdT>(q, p.q.row_stride, q0, s.n_q, q_tile, qt_tile);
    stage_tile<T, D, kQueryTile, kLd, kLdT>(d_o, p.dout.row_stride, q0, s.n_q, do_tile, dot_tile);
    if (threadIdx.x < kQueryTile) {
      const int row = q0 + threadIdx.x;
      lse_log2[threadIdx.x] = row < s.n_q ? lse[row] * kLog2e : INFINITY;
      delta[threadIdx.x] = row < s.n_q ? dlt[row] : 0.f;
    }
    __syncthreads();

    float pt[kQTiles][4] = {};  // S^T, then P^T
    mma_rows<T, D / 16, kQTiles, kLd>(pt, ka, q_tile);
#pragma unroll
    for (int nt = 0; nt < kQTiles; ++nt)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int col = nt * 8 + 2 * t + (r & 1);
        const bool ok = key_ok[r / 2] && key_visible(s, q0 + col, keys[r / 2]);
        pt[nt][r] = ok ? exp2f(pt[nt][r] * scale_log2 - lse_log2[col]) : 0.f;
      }
    mma_from_accumulators<T, kQueryTile / 16, D / 8, kLdT>(dv, pt, dot_tile);

    float dst[kQTiles][4] = {};  // dP^T, then dS^T
    mma_rows<T, D / 16, kQTiles, kLd>(dst, va, do_tile);
#pragma unroll
    for (int nt = 0; nt < kQTiles; ++nt)
#pragma unroll
      for (int r = 0; r < 4; ++r) dst[nt][r] = pt[nt][r] * (dst[nt][r] - delta[nt * 8 + 2 * t + (r & 1)]);
    mma_from_accumulators<T, kQueryTile / 16, D / 8, kLdT>(dk, dst, qt_tile);
  }

  const float dk_factor[2] = {s.scale, s.scale}, one[2] = {1.f, 1.f};
  store_accumulators<T, D>(dk, p.dk.at<T>(b, h), p.dk.row_stride, warp_k0, s.n_kv, dk_factor);
  store_accumulators<T, D>(dv, p.dv.at<T>(b, h), p.dv.row_stride, warp_k0, s.n_kv, one);
}

template <typename T, int D>
__global__ void __launch_bounds__(32 * kWarps) attention_bwd_dq_mma_kernel(const AttentionBwdParams p) {
  constexpr int kLd = D + kSmemPad, kLdT = kKeyTile + kSmemPad, kKTiles = kKeyTile / 8;
  __shared__ alignas(16) T k_tile[kKeyTile][kLd];
  __shared__ alignas(16) T kt_tile[D][kLdT];
  __shared__ alignas(16) T v_tile[kKeyTile][kLd];
  __shared__ uint8_t padded[kKeyTile];

  const AttentionShape& s = p.shape;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const auto [b, h, bh] = block_head(s);
  const int m0 = blockIdx.x * kQueriesPerBlock, warp_m0 = m0 + warp * 16;
  const int rows[2] = {warp_m0 + g, warp_m0 + g + 8};
  const uint8_t* mask = padding_row(s, b);

  uint32_t qa[D / 16][4], doa[D / 16][4];
  load_a_fragments<T, D>(qa, p.q.at<T>(b, h), p.q.row_stride, warp_m0, s.n_q);
  load_a_fragments<T, D>(doa, p.dout.at<T>(b, h), p.dout.row_stride, warp_m0, s.n_q);
  float lse_log2[2], delta[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const bool ok = rows[i] < s.n_q;
    lse_log2[i] = ok ? p.lse[bh * s.n_q + rows[i]] * kLog2e : INFINITY;
    delta[i] = ok ? p.delta[bh * s.n_q + rows[i]] : 0.f;
  }
  float dq[D / 8][4] = {};
  const float scale_log2 = s.scale * kLog2e;
  const T* k = p.k.at<T>(b, h);
  const T* v = p.v.at<T>(b, h);

  const int keys_end = keys_end_for_rows(s, min(m0 + kQueriesPerBlock, s.n_q));
  for (int n0 = 0; n0 < keys_end; n0 += kKeyTile) {
    __syncthreads();
    stage_tile<T, D, kKeyTile, kLd, kLdT>(k, p.k.row_stride, n0, s.n_kv, k_tile, kt_tile);
    stage_tile<T, D, kKeyTile, kLd, kLdT>(v, p.v.row_stride, n0, s.n_kv, v_tile, nullptr);
    if (threadIdx.x < kKeyTile) padded[threadIdx.x] = (mask && n0 + threadIdx.x < s.n_kv) ? mask[n0 + threadIdx.x] : 0;
    __syncthreads();

    float pr[kKTiles][4] = {};  // S, then P
    mma_rows<T, D / 16, kKTiles, kLd>(pr, qa, k_tile);
#pragma unroll
    for (int nt = 0; nt < kKTiles; ++nt)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int key = n0 + nt * 8 + 2 * t + (r & 1);
        const bool ok = key_visible(s, rows[r / 2], key) && padded[key - n0] == 0;
        pr[nt][r] = ok ? exp2f(pr[nt][r] * scale_log2 - lse_log2[r / 2]) : 0.f;
      }
    float ds[kKTiles][4] = {};  // dP, then dS
    mma_rows<T, D / 16, kKTiles, kLd>(ds, doa, v_tile);
#pragma unroll
    for (int nt = 0; nt < kKTiles; ++nt)
#pragma unroll
      for (int r = 0; r < 4; ++r) ds[nt][r] = pr[nt][r] * (ds[nt][r] - delta[r / 2]);
    mma_from_accumulators<T, kKeyTile / 16, D / 8, kLdT>(dq, ds, kt_tile);
  }
  const float factor[2] = {s.scale, s.scale};
  store_accumulators<T, D>(dq, p.dq.at<T>(b, h), p.dq.row_stride, warp_m0, s.n_q, factor);
}

// Exact fp32 path. KEY_ROWS: a warp owns key row `row` and accumulates dK, dV over the queries;
// otherwise it owns query row `row` and accumulates dQ over the keys. Lane owns dims lane + 32i.
template <typename T, int D, bool KEY_ROWS>
__global__ void __launch_bounds__(32 * kWarps) attention_bwd_scalar_kernel(const AttentionBwdParams p) {
  constexpr int kDims = kLanesDims<D>;
  const AttentionShape& s = p.shape;
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * kWarps + threadIdx.x / 32;
  const auto [b, h, bh] = block_head(s);
  if (row >= (KEY_ROWS ? s.n_kv : s.n_q)) return;
  const uint8_t* mask = padding_row(s, b);
  const float scale_log2 = s.scale * kLog2e;
  const float* lse = p.lse + bh * s.n_q;
  const float* dlt = p.delta + bh * s.n_q;

  auto load_row = [&](const BhndView& view, int r, float (&out)[kDims]) {
    const T* ptr = view.at<T>(b, h) + int64_t(r) * view.row_stride;
#pragma unroll
    for (int i = 0; i < kDims; ++i) out[i] = (lane + 32 * i < D) ? to_float(ptr[lane + 32 * i]) : 0.f;
  };
  auto dot = [&](const float (&x)[kDims], const float (&y)[kDims]) {
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < kDims; ++i) sum += x[i] * y[i];
    return warp_sum(sum);
  };
  float own_a[kDims], own_b[kDims], acc_a[kDims] = {}, acc_b[kDims] = {};
  float other_a[kDims], other_b[kDims];
  if constexpr (KEY_ROWS) {  // own K, V rows; walk queries
    load_row(p.k, row, own_a);
    load_row(p.v, row, own_b);
    if (!(mask && mask[row]))
      for (int i = first_query_for_key(s, row); i < s.n_q; ++i) {
        if (lse[i] == INFINITY) continue;  // a row with no key
        load_row(p.q, i, other_a);
        load_row(p.dout, i, other_b);
        const float prob = exp2f(dot(other_a, own_a) * scale_log2 - lse[i] * kLog2e);
        const float ds = prob * (dot(other_b, own_b) - dlt[i]);
#pragma unroll
        for (int d = 0; d < kDims; ++d) {
          acc_a[d] += ds * other_a[d];    // dK (times scale below)
          acc_b[d] += prob * other_b[d];  // dV
        }
      }
  } else {  // own Q, dO rows; walk keys
    load_row(p.q, row, own_a);
    load_row(p.dout, row, own_b);
    const float row_lse = lse[row] * kLog2e;
    if (lse[row] != INFINITY)
      for (int j = 0; j < keys_end_for_rows(s, row + 1); ++j) {
        if (mask && mask[j]) continue;
        load_row(p.k, j, other_a);
        load_row(p.v, j, other_b);
        const float prob = exp2f(dot(own_a, other_a) * scale_log2 - row_lse);
        const float ds = prob * (dot(own_b, other_b) - dlt[row]);
#pragma unroll
        for (int d = 0; d < kDims; ++d) acc_a[d] += ds * other_a[d];  // dQ (times scale below)
      }
  }
  auto store_row = [&](const BhndView& view, const float (&values)[kDims], float factor) {
    T* ptr = view.at<T>(b, h) + int64_t(row) * view.row_stride;
#pragma unroll
    for (int i = 0; i < kDims; ++i)
      if (lane + 32 * i < D) ptr[lane + 32 * i] = from_float<T>(values[i] * factor);
  };
  if constexpr (KEY_ROWS) {
    store_row(p.dk, acc_a, s.scale);
    store_row(p.dv, acc_b, 1.f);
  } else {
    store_row(p.dq, acc_a, s.scale);
  }
}

}  // namespace

cudaError_t attention_bwd(const AttentionBwdParams& p, cudaStream_t stream) {
  const AttentionShape& s = p.shape;
  if (s.batch == 0 || s.heads == 0) return cudaSuccess;
  const dim3 threads(32 * kWarps);
  return VTK_DISPATCH_DTYPE(s.dtype, [&] {
    if (s.n_q > 0) {
      attention_bwd_delta_kernel<scalar_t><<<attention_grid(ceil_div(s.n_q, kWarps), s), threads, 0, stream>>>(p);
      VTK_RETURN_IF_ERROR(cudaGetLastError());
    }
    return with_head_dim(s.head_dim, [&]<int D>() {
      if constexpr (std::is_same_v<scalar_t, float>) {
        attention_bwd_scalar_kernel<scalar_t, D, true><<<attention_grid(ceil_div(s.n_kv, kWarps), s), threads, 0, stream>>>(p);
        VTK_RETURN_IF_ERROR(cudaGetLastError());
        if (s.n_q > 0)
          attention_bwd_scalar_kernel<scalar_t, D, false><<<attention_grid(ceil_div(s.n_q, kWarps), s), threads, 0, stream>>>(p);
      } else {
        attention_bwd_dkdv_mma_kernel<scalar_t, D><<<attention_grid(ceil_div(s.n_kv, kKeysPerBlock), s), threads, 0, stream>>>(p);
        VTK_RETURN_IF_ERROR(cudaGetLastError());
        if (s.n_q > 0)
          attention_bwd_dq_mma_kernel<scalar_t, D><<<attention_grid(ceil_div(s.n_q, kQueriesPerBlock), s), threads, 0, stream>>>(p);
      }
      return cudaGetLastError();
    });
  });
}

}  // namespace vtk
