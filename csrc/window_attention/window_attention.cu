// Swin (shifted-)window attention, forward and backward: one block per (batch * head, window), or
// per (batch * head, group of consecutive windows) in the backward.
//
// The block gathers its window's q/k/v rows straight from (B, H, W, 3C) into shared memory
// (fp32), so nothing is materialized. For window w and token p = (pr, pc) of it:
//
//   (r, c) = (w / nWw * M + pr, w % nWw * M + pc)     position in the rolled, padded map
//   timm (roll, pad): real = r < H && c < W;   pixel ((r + s) % H, (c + s) % W)
//   HF   (pad, roll): (r', c') = ((r + s) % Hp, (c + s) % Wp);  real = r' < H && c' < W
//
//         c:  0 .. Wp-M-1 | Wp-M .. Wp-s-1 | Wp-s .. Wp-1      shift regions per axis: tokens
//   region:       0       |       1        |      2            of different regions were not
//                                                              neighbours before the roll
//   score(i, j) = q_i.k_j * scale + table[(pr_i - pr_j + Mt - 1) * (2Mt - 1) + pc_i - pc_j + Mt - 1][h]
//                 + (mask_value if region_i != region_j)
//
// A padding token (not real) has the q/k/v of `pad_qkv` (the qkv Linear's bias) or zeros; its
// output is dropped. Forward: a warp per query row, lanes over keys (softmax via warp
// reductions, exact: the whole window is on chip), then lanes over head_dim for P V.
// Backward, per window of the block's group: phase 1, a warp per query row recomputes P, adds dS
// to the block's bias partial and writes dQ, and keeps the row's softmax statistics; phase 2, a
// warp per key row recomputes its column of P and dS from them and sums dK, dV over the window's
// queries (no (N, N) tile in shared memory, so 12x12 windows fit). Every real token belongs to one
// window, and each partial element is only ever updated by one thread, window after window: no
// atomics anywhere; the bias fold below is a fixed-order sum.

#include "window_attention/window_attention.h"

#include <algorithm>
#include <cfloat>

#include "common/dtype.cuh"
#include "common/launch.h"
#include "common/reduce.cuh"

namespace vtk {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kKeysPerLane = (kWindowAttnMaxTokens + 31) / 32;
constexpr int kSlots = 32 * kKeysPerLane;  // per-warp row buffers
constexpr int kBwdMinBlocksPerSm = 4;       // backward grid wanted before windows are grouped

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Where each of the window's tokens comes from, computed once per block into shared memory.
struct WindowTokens {
  int pixel[kWindowAttnMaxTokens];   // row * W + col of the source pixel, -1 for padding
  int region[kWindowAttnMaxTokens];
};

__device__ void locate_tokens(const WindowAttnParams& p, int win, WindowTokens& tokens) {
  const int m = p.window, hp = p.height_pad(), wp = p.width_pad(), n = m * m;
  for (int t = threadIdx.x; t < n; t += blockDim.x) {
    const int r = win / p.windows_per_row() * m + t / m;
    const int c = win % p.windows_per_row() * m + t % m;
    int row, col;
    bool real;
    if (p.pad_first) {
      row = (r + p.shift) % hp;
      col = (c + p.shift) % wp;
      real = row < p.height && col < p.width;
    } else {
      real = r < p.height && c < p.width;
      row = (r + p.shift) % p.height;
      col = (c + p.shift) % p.width;
    }
    tokens.pixel[t] = real ? row * p.width + col : -1;
    tokens.region[t] = ((r >= hp - m) + (r >= hp - p.shift)) * 3 + (c >= wp - m) + (c >= wp - p.shift);
  }
}

template <typename T>
__device__ __forceinline__ int64_t pixel_offset(int b, int pixel, int width, int64_t sb, int64_t sh, int64_t sw) {
  return b * sb + int64_t(pixel / width) * sh + int64_t(pixel % width) * sw;
}

// Loads slice `part` (0 q, 1 k, 2 v) of head h for the window's tokens into rows of `dst`
// (stride ld floats); padding tokens get pad_qkv's slice (zeros for q or without pad_qkv).
template <typename T>
__device__ void load_part(const WindowAttnParams& p, const WindowTokens& tokens, int b, int h, int part, float* dst,
                          int ld) {
  const int n = p.window * p.window, d_head = p.head_dim, channels = p.heads * d_head;
  const T* qkv = static_cast<const T*>(p.qkv);
  for (int idx = threadIdx.x; idx < n * d_head; idx += blockDim.x) {
    const int t = idx / d_head, d = idx % d_head;
    const int col = part * channels + h * d_head + d;
    float v = 0.f;
    if (tokens.pixel[t] >= 0) {
      v = to_float(qkv[pixel_offset<T>(b, tokens.pixel[t], p.width, p.qkv_stride_b, p.qkv_stride_h, p.qkv_stride_w) + col]);
    } else if (p.pad_qkv && part > 0) {
      v = to_float(from_float<T>(p.pad_qkv[col]));  // the padded value as the qkv Linear would store it
    }
    dst[t * ld + d] = v;
  }
}

// score(i, j) = q_i . k_j * scale + bias + shift mask, for tokens i, j < n of the window.
__device__ __forceinline__ float score(const WindowAttnParams& p, const WindowTokens& tokens, const float* q_row,
                                       const float* k_row, int i, int j, int h) {
  const int m = p.window, mt = p.table_window;
  float dot = 0.f;
  for (int d = 0; d < p.head_dim; ++d) dot += q_row[d] * k_row[d];
  const int t = (i / m - j / m + mt - 1) * (2 * mt - 1) + (i % m - j % m + mt - 1);
  float s = dot * p.scale + p.table[t * p.heads + h];
  if (p.shift > 0 && tokens.region[i] != tokens.region[j]) s += p.mask_value;
  return s;
}

// Softmax of query row i over the window's keys; lane holds keys j = lane + 32 k (0 past the
// window). Also returns the row's max and 1 / sum, from which phase 2 of the backward recomputes P.
__device__ __forceinline__ void row_softmax(const WindowAttnParams& p, const WindowTokens& tokens, const float* q_row,
                                            const float* k, int ld, int i, int h, float (&prob)[kKeysPerLane],
                                            float& row_max, float& inv_sum) {
  const int n = p.window * p.window, lane = threadIdx.x % 32;
  row_max = -FLT_MAX;
#pragma unroll
  for (int kk = 0; kk < kKeysPerLane; ++kk) {
    const int j = lane + 32 * kk;
    prob[kk] = j < n ? score(p, tokens, q_row, k + j * ld, i, j, h) : -INFINITY;
    row_max = fmaxf(row_max, prob[kk]);
  }
  row_max = warp_max(row_max);
  float sum = 0.f;
#pragma unroll
  for (int kk = 0; kk < kKeysPerLane; ++kk) {
    prob[kk] = prob[kk] == -INFINITY ? 0.f : __expf(prob[kk] - row_max);
    sum += prob[kk];
  }
  inv_sum = 1.f / warp_sum(sum);
#pragma unroll
  for (int kk = 0; kk < kKeysPerLane; ++kk) prob[kk] *= inv_sum;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) window_attn_fwd_kernel(const WindowAttnParams p) {
  extern __shared__ float smem[];
  __shared__ WindowTokens tokens;
  const int win = blockIdx.y, b = blockIdx.x / p.heads, h = blockIdx.x % p.heads;
  const int n = p.window * p.window, ld = p.head_dim + 1;  // +1: no bank conflicts on row reads
  float* q = smem;
  float* k = q + n * ld;
  float* v = k + n * ld;
  float* probs = v + n * ld;  // kWarps rows of kSlots
  locate_tokens(p, win, tokens);
  __syncthreads();
  load_part<T>(p, tokens, b, h, 0, q, ld);
  load_part<T>(p, tokens, b, h, 1, k, ld);
  load_part<T>(p, tokens, b, h, 2, v, ld);
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* my_probs = probs + warp * kSlots;
  T* out = static_cast<T*>(p.out);
  for (int i = warp; i < n; i += kWarps) {
    if (tokens.pixel[i] < 0) continue;  // padding query: output dropped (uniform per warp)
    float prob[kKeysPerLane], row_max, inv_sum;
    row_softmax(p, tokens, q + i * ld, k, ld, i, h, prob, row_max, inv_sum);
#pragma unroll
    for (int kk = 0; kk < kKeysPerLane; ++kk) my_probs[lane + 32 * kk] = prob[kk];
    __syncwarp();
    const int64_t base = pixel_offset<T>(b, tokens.pixel[i], p.width, p.out_stride_b, p.out_stride_h, p.out_stride_w);
    for (int d = lane; d < p.head_dim; d += 32) {
      float acc = 0.f;
      for (int j = 0; j < n; ++j) acc += my_probs[j] * v[j * ld + d];
      out[base + h * p.head_dim + d] = from_float<T>(acc);
    }
    __syncwarp();
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) window_attn_bwd_kernel(const WindowAttnParams p) {
  extern __shared__ float smem[];
  __shared__ WindowTokens tokens;
  __shared__ float row_max[kWindowAttnMaxTokens], inv_sum[kWindowAttnMaxTokens], delta[kWindowAttnMaxTokens];
  const int b = blockIdx.x / p.heads, h = blockIdx.x % p.heads;
  const int n = p.window * p.window, ld = p.head_dim + 1;
  float* q = smem;
  float* k = q + n * ld;
  float* v = k + n * ld;
  float* dout = v + n * ld;
  float* warp_rows = dout + n * ld;  // kWarps x 2 rows of kSlots
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, channels = p.heads * p.head_dim;
  float* my_p = warp_rows + warp * 2 * kSlots;
  float* my_ds = my_p + kSlots;
  const T* dout_g = static_cast<const T*>(p.dout);
  T* dqkv = static_cast<T*>(p.dqkv);
  // Block (b * heads + h, g) owns windows [g G, min((g + 1) G, nW)) of (b, h) and partial slab
  // (b * heads + h) * groups + g. The first window writes the slab, the next ones add to it; an
  // element is always updated by the same thread (bias (i, j): warp i % kWarps, lane j % 32;
  // padding element idx: thread idx), so its sum runs in window order, the same every run.
  const int first = blockIdx.y * p.window_group, last = min(first + p.window_group, p.n_windows());
  const int64_t slab = int64_t(blockIdx.x) * p.window_groups() + blockIdx.y;
  float* partial = p.dbias_partial + slab * n * n;
  for (int win = first; win < last; ++win) {
    const bool add = win > first;
    if (add) __syncthreads();  // the previous window's phase 2 / padding sums are done with tokens, q, k, v
    locate_tokens(p, win, tokens);
    __syncthreads();
    load_part<T>(p, tokens, b, h, 0, q, ld);
    load_part<T>(p, tokens, b, h, 1, k, ld);
    load_part<T>(p, tokens, b, h, 2, v, ld);
    for (int idx = threadIdx.x; idx < n * p.head_dim; idx += blockDim.x) {
      const int t = idx / p.head_dim, d = idx % p.head_dim;
      float g = 0.f;  // padding rows: their outputs were cropped away
      if (tokens.pixel[t] >= 0)
        g = to_float(dout_g[pixel_offset<T>(b, tokens.pixel[t], p.width, p.out_stride_b, p.out_stride_h, p.out_stride_w) +
                            h * p.head_dim + d]);
      dout[t * ld + d] = g;
    }
    __syncthreads();

    // Phase 1, a warp per query row i: P, dP = dO V^T, delta = rowsum(P * dP), dS = P * (dP - delta)
    // (added to the bias partial's row i), dQ_i = scale * dS_i K. Keeps max, 1 / sum, delta per row.
    for (int i = warp; i < n; i += kWarps) {
      float prob[kKeysPerLane], dprob[kKeysPerLane], rmax, rinv, rdelta = 0.f;
      row_softmax(p, tokens, q + i * ld, k, ld, i, h, prob, rmax, rinv);
#pragma unroll
      for (int kk = 0; kk < kKeysPerLane; ++kk) {
        const int j = lane + 32 * kk;
        float dot = 0.f;
        if (j < n)
          for (int d = 0; d < p.head_dim; ++d) dot += dout[i * ld + d] * v[j * ld + d];
        dprob[kk] = dot;
        rdelta += prob[kk] * dot;
      }
      rdelta = warp_sum(rdelta);
#pragma unroll
      for (int kk = 0; kk < kKeysPerLane; ++kk) {
        const int j = lane + 32 * kk;
        const float ds = prob[kk] * (dprob[kk] - rdelta);
        my_ds[j] = ds;
        if (j < n) partial[i * n + j] = add ? partial[i * n + j] + ds : ds;
      }
      if (lane == 0) {
        row_max[i] = rmax;
        inv_sum[i] = rinv;
        delta[i] = rdelta;
      }
      __syncwarp();
      if (tokens.pixel[i] >= 0) {
        const int64_t base = pixel_offset<T>(b, tokens.pixel[i], p.width, p.dqkv_stride_b, p.dqkv_stride_h, p.dqkv_stride_w);
        for (int d = lane; d < p.head_dim; d += 32) {
          float acc = 0.f;
          for (int j = 0; j < n; ++j) acc += my_ds[j] * k[j * ld + d];
          dqkv[base + h * p.head_dim + d] = from_float<T>(acc * p.scale);
        }
      }
      __syncwarp();
    }
    __syncthreads();
    // Phase 2, a warp per key row j: lanes over queries recompute column j of P and dS from the
    // row statistics, then lanes over head_dim sum dK_j = scale * dS_:j^T Q, dV_j = P_:j^T dO.
    // Only this warp reads row j of K and V, so it then stores dK_j, dV_j there (padding sum below).
    for (int j = warp; j < n; j += kWarps) {
#pragma unroll
      for (int kk = 0; kk < kKeysPerLane; ++kk) {
        const int i = lane + 32 * kk;
        float pij = 0.f, dsij = 0.f;
        if (i < n) {
          const float s = score(p, tokens, q + i * ld, k + j * ld, i, j, h);
          pij = s == -INFINITY ? 0.f : __expf(s - row_max[i]) * inv_sum[i];
          float dot = 0.f;
          for (int d = 0; d < p.head_dim; ++d) dot += dout[i * ld + d] * v[j * ld + d];
          dsij = pij * (dot - delta[i]);
        }
        my_p[i] = pij;
        my_ds[i] = dsij;
      }
      __syncwarp();
      for (int d = lane; d < p.head_dim; d += 32) {
        float dk = 0.f, dv = 0.f;
        for (int i = 0; i < n; ++i) {
          dk += my_ds[i] * q[i * ld + d];
          dv += my_p[i] * dout[i * ld + d];
        }
        dk *= p.scale;
        k[j * ld + d] = dk;
        v[j * ld + d] = dv;
        if (tokens.pixel[j] >= 0) {
          const int64_t base = pixel_offset<T>(b, tokens.pixel[j], p.width, p.dqkv_stride_b, p.dqkv_stride_h, p.dqkv_stride_w);
          dqkv[base + channels + h * p.head_dim + d] = from_float<T>(dk);
          dqkv[base + 2 * channels + h * p.head_dim + d] = from_float<T>(dv);
        }
      }
      __syncwarp();
    }
    if (p.dpad_partial) {
      __syncthreads();
      float* pad_out = p.dpad_partial + slab * 2 * p.head_dim;
      for (int idx = threadIdx.x; idx < 2 * p.head_dim; idx += blockDim.x) {
        const float* rows = idx < p.head_dim ? k : v;
        const int d = idx % p.head_dim;
        float sum = 0.f;
        for (int t = 0; t < n; ++t)
          if (tokens.pixel[t] < 0) sum += rows[t * ld + d];
        pad_out[idx] = add ? pad_out[idx] + sum : sum;
      }
    }
  }
}

// One thread per table row t: sum of per_pair over the pairs at relative offset t (fixed order).
__global__ void fold_bias_grad_kernel(const float* per_pair, float* dtable, int heads, int window, int table_window) {
  const int h = blockIdx.y, rows = (2 * table_window - 1) * (2 * table_window - 1);
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= rows) return;
  const int dr = t / (2 * table_window - 1) - (table_window - 1);
  const int dc = t % (2 * table_window - 1) - (table_window - 1);
  const int n = window * window;
  float sum = 0.f;
  for (int i = 0; i < n; ++i) {
    const int jr = i / window - dr, jc = i % window - dc;
    if (jr >= 0 && jr < window && jc >= 0 && jc < window) sum += per_pair[(int64_t(h) * n + i) * n + jr * window + jc];
  }
  dtable[t * heads + h] = sum;
}

// Dynamic shared memory of a forward / backward block: the window's q, k, v (and dO) rows, fp32,
// padded by one column, plus the warps' row buffers.
size_t dynamic_smem(int window, int head_dim, bool backward) {
  const int n = window * window;
  return backward ? sizeof(float) * (4 * n * (head_dim + 1) + kWarps * 2 * kSlots)
                  : sizeof(float) * (3 * n * (head_dim + 1) + kWarps * kSlots);
}

// Grid (batch * heads, blocks_per_image): nW blocks (forward) or window groups (backward) per image.
template <typename Kernel>
cudaError_t launch(Kernel kernel, const WindowAttnParams& p, int blocks_per_image, size_t smem, cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  VTK_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  // (batch, head) fastest: blocks launched together share the same tokens' qkv rows in L2.
  const dim3 grid(p.batch * p.heads, blocks_per_image);
  kernel<<<grid, kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t window_attention_fwd(const WindowAttnParams& p, cudaStream_t stream) {
  return VTK_DISPATCH_DTYPE(p.dtype, [&] {
    return launch(window_attn_fwd_kernel<scalar_t>, p, p.n_windows(), dynamic_smem(p.window, p.head_dim, false), stream);
  });
}

cudaError_t window_attention_bwd(const WindowAttnParams& p, cudaStream_t stream) {
  return VTK_DISPATCH_DTYPE(p.dtype, [&] {
    return launch(window_attn_bwd_kernel<scalar_t>, p, p.window_groups(), dynamic_smem(p.window, p.head_dim, true),
                  stream);
  });
}

cudaError_t window_attention_shared_memory(int window, int head_dim, bool backward, int device, size_t* needed,
                                           size_t* available) {
  cudaFuncAttributes attributes{};  // the static part (token table, row statistics): the same for every dtype
  VTK_RETURN_IF_ERROR(backward ? cudaFuncGetAttributes(&attributes, window_attn_bwd_kernel<float>)
                               : cudaFuncGetAttributes(&attributes, window_attn_fwd_kernel<float>));
  int optin = 0;
  VTK_RETURN_IF_ERROR(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  *needed = attributes.sharedSizeBytes + dynamic_smem(window, head_dim, backward);
  *available = static_cast<size_t>(optin);
  return cudaSuccess;
}

int window_attention_bwd_group(int batch_heads, int n_windows, int sm_count) {
  // At least kBwdMinBlocksPerSm blocks per SM when the windows allow it: G = nW / wanted keeps
  // ceil(nW / G) >= wanted groups per (batch, head); capped at kWindowAttnMaxGroup.
  const int wanted = ceil_div(int64_t(kBwdMinBlocksPerSm) * sm_count, batch_heads > 0 ? batch_heads : 1);
  return std::max(1, std::min(kWindowAttnMaxGroup, n_windows / wanted));
}

cudaError_t window_attention_fold_bias_grad(const float* per_pair, float* dtable, int heads, int window,
                                            int table_window, cudaStream_t stream) {
  const int rows = (2 * table_window - 1) * (2 * table_window - 1);
  const dim3 grid(ceil_div(rows, 128), heads);
  fold_bias_grad_kernel<<<grid, 128, 0, stream>>>(per_pair, dtable, heads, window, table_window);
  return cudaGetLastError();
}

}  // namespace vtk
