// Device helpers shared by the attention forward and backward kernels. No torch headers.
#pragma once

#include <cmath>
#include <cstdint>

#include "attention/attention.h"
#include "common/dtype.cuh"
#include "common/mma.cuh"

namespace vtk {
namespace attention_detail {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kWarps = 4;     // every attention kernel runs 4 warps per block
constexpr int kSmemPad = 8;   // elements added to each shared-memory row: conflict-free fragment reads
constexpr int kVec = 8;       // 16-bit elements per 16-byte global load

// Causal is aligned bottom-right: query i attends key j iff j <= i + (n_kv - n_q).
__device__ __forceinline__ int causal_offset(const AttentionShape& s) { return s.n_kv - s.n_q; }

// End of the keys any query row < row_end may attend.
__device__ __forceinline__ int keys_end_for_rows(const AttentionShape& s, int row_end) {
  if (!s.causal) return s.n_kv;
  return max(0, min(s.n_kv, row_end + causal_offset(s)));
}

// First query that may attend key `key` (0 without causal).
__device__ __forceinline__ int first_query_for_key(const AttentionShape& s, int key) {
  return s.causal ? max(0, key - causal_offset(s)) : 0;
}

// Bounds and causal visibility (the padding mask is checked separately).
__device__ __forceinline__ bool key_visible(const AttentionShape& s, int row, int key) {
  return key < s.n_kv && !(s.causal && key > row + causal_offset(s));
}

// Every attention kernel runs on a (row blocks, heads, batch) grid: blockIdx.z is the batch and
// blockIdx.y the head (each <= 65535, checked by the bindings; B * H itself may exceed it).
struct BlockHead {
  int b, h;
  int64_t bh;  // b * heads + h: row of the (B, H, n_q) lse / delta
};

__device__ __forceinline__ BlockHead block_head(const AttentionShape& s) {
  const int b = blockIdx.z, h = blockIdx.y;
  return {b, h, int64_t(b) * s.heads + h};
}

inline dim3 attention_grid(int row_blocks, const AttentionShape& s) { return dim3(row_blocks, s.heads, s.batch); }

__device__ __forceinline__ const uint8_t* padding_row(const AttentionShape& s, int b) {
  return s.key_padding_mask ? s.key_padding_mask + b * s.mask_batch_stride : nullptr;
}

// Copies rows [row0, row0 + ROWS) of a (n_rows, D) operand into shared memory with the whole
// block: row-major into `rows` ([ROWS][LD]) and/or transposed into `cols` ([D][LDT]); either
// may be nullptr. Rows past n_rows are zeros (no NaN garbage ever reaches an mma).
template <typename T, int D, int ROWS, int LD, int LDT>
__device__ __forceinline__ void stage_tile(const T* src, int64_t row_stride, int row0, int n_rows,
                                           T (*rows)[LD], T (*cols)[LDT]) {
  for (int idx = threadIdx.x; idx < ROWS * (D / kVec); idx += blockDim.x) {
    const int r = idx / (D / kVec), c = (idx % (D / kVec)) * kVec;
    Vec<T, kVec> val{};
    if (row0 + r < n_rows) val = *reinterpret_cast<const Vec<T, kVec>*>(src + int64_t(row0 + r) * row_stride + c);
    if (rows) *reinterpret_cast<Vec<T, kVec>*>(&rows[r][c]) = val;
    if (cols) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) cols[c + e][r] = val.v[e];
    }
  }
}

// A fragments (see common/mma.cuh) of a warp's 16 rows [row0, row0 + 16) of a (n_rows, D)
// operand, read straight from global memory; rows past n_rows are zeros.
template <typename T, int D>
__device__ __forceinline__ void load_a_fragments(uint32_t (&a)[D / 16][4], const T* src, int64_t row_stride, int row0,
                                                 int n_rows) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = row0 + g + 8 * half;
    const bool ok = row < n_rows;
    const T* p = src + int64_t(ok ? row : 0) * row_stride;
#pragma unroll
    for (int c = 0; c < D / 16; ++c) {
      a[c][half] = ok ? load_pair(p + c * 16 + 2 * t) : 0u;
      a[c][half + 2] = ok ? load_pair(p + c * 16 + 2 * t + 8) : 0u;
    }
  }
}

// acc[n] += A (16 x 16*K_CHUNKS, fragments `a`) * B^T where B is the shared-memory tile whose row
// n_base + 8n + g holds the k-th column of B^T at [k]: the pattern of S = Q K^T (tile = K rows).
template <typename T, int K_CHUNKS, int N_TILES, int LD>
__device__ __forceinline__ void mma_rows(float (&acc)[N_TILES][4], const uint32_t (&a)[K_CHUNKS][4],
                                         const T (*tile)[LD]) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int n = 0; n < N_TILES; ++n)
#pragma unroll
    for (int c = 0; c < K_CHUNKS; ++c)
      mma_m16n8k16<T>(acc[n], a[c], load_pair(&tile[n * 8 + g][c * 16 + 2 * t]),
                      load_pair(&tile[n * 8 + g][c * 16 + 2 * t + 8]));
}

// acc[n] += P * tile^T where P (16 x 16*K_CHUNKS) sits in accumulator layout in `p`
// (2 * K_CHUNKS n-tiles), repacked to A fragments: the pattern of O += P V (tile = V^T rows).
template <typename T, int K_CHUNKS, int N_TILES, int LD>
__device__ __forceinline__ void mma_from_accumulators(float (&acc)[N_TILES][4], const float (&p)[2 * K_CHUNKS][4],
                                                      const T (*tile)[LD]) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int c = 0; c < K_CHUNKS; ++c) {
    const uint32_t a[4] = {pack2<T>(p[2 * c][0], p[2 * c][1]), pack2<T>(p[2 * c][2], p[2 * c][3]),
                           pack2<T>(p[2 * c + 1][0], p[2 * c + 1][1]), pack2<T>(p[2 * c + 1][2], p[2 * c + 1][3])};
#pragma unroll
    for (int n = 0; n < N_TILES; ++n)
      mma_m16n8k16<T>(acc[n], a, load_pair(&tile[n * 8 + g][c * 16 + 2 * t]),
                      load_pair(&tile[n * 8 + g][c * 16 + 2 * t + 8]));
  }
}

// Stores a warp's 16 x D accumulator tile (rows row0 .. row0 + 15) times `factor`, as T pairs.
template <typename T, int D>
__device__ __forceinline__ void store_accumulators(const float (&acc)[D / 8][4], T* dst, int64_t row_stride, int row0,
                                                   int n_rows, const float (&factor)[2]) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = row0 + g + 8 * half;
    if (row >= n_rows) continue;
    T* p = dst + int64_t(row) * row_stride;
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      *reinterpret_cast<uint32_t*>(p + n * 8 + 2 * t) =
          pack2<T>(acc[n][2 * half] * factor[half], acc[n][2 * half + 1] * factor[half]);
  }
}

// Calls launch.template operator()<D>() for the runtime head_dim.
template <typename Launch>
cudaError_t with_head_dim(int head_dim, Launch&& launch) {
  switch (head_dim) {
    case 32: return launch.template operator()<32>();
    case 64: return launch.template operator()<64>();
    case 80: return launch.template operator()<80>();
    case 96: return launch.template operator()<96>();
    case 128: return launch.template operator()<128>();
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace attention_detail
}  // namespace vtk
