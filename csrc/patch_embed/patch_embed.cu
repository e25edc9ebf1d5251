// Fused patch embedding, forward and backward, as three gather GEMMs (common/gather_gemm.cuh).
//
// Patch row m -> (b, n) = (m / N, m % N), grid cell (py, px) = (n / Wp, n % Wp); column
// k -> (c, ky, kx) = (k / p^2, (k / p) % p, k % p), the Conv2d weight's own flat order, so
//   A[m, k] = image[b, c, py * p + ky, px * p + kx]     (normalized: x * scale[c] + shift[c])
//   token row of m = b * (N + prefix) + prefix + n       (row 0 of each image is the cls token)
// Forward:      tokens[m, d]  = sum_k A[m, k] W[d, k] + bias[d] + pos[pos_start + n, d]
// d images:     dimg[m, k]    = sum_d dY[m, d] W[d, k] * scale[c]  (patches do not overlap)
// d weight:     dW[d, k]      = sum_m dY[m, d] A[m, k], the sum over m split across blockIdx.y
//               into fp32 partials, added by a second kernel (deterministic, no atomics).

#include "patch_embed/patch_embed.h"

#include <algorithm>
#include <cstdint>

#include "common/dtype.cuh"
#include "common/launch.h"
#include "common/gather_gemm.cuh"

namespace vtk {
namespace {

using gather_gemm::kBK;

__device__ __forceinline__ float pixel_to_float(uint8_t v) { return static_cast<float>(v); }
template <typename T>
__device__ __forceinline__ float pixel_to_float(T v) { return to_float(v); }

// Index math shared by the three problems. Pixel offset of A[m, k] = patch_base(m) + pixel_col(k).
struct PatchIndex {
  PatchGeometry g;

  __host__ __device__ int patch_rows() const { return g.batch * g.num_patches; }
  __host__ __device__ int patch_cols() const { return g.channels * g.patch * g.patch; }

  __device__ void k_coords(int k, int& c, int& ky, int& kx) const {
    const int area = g.patch * g.patch;
    c = k / area;
    ky = (k % area) / g.patch;
    kx = k % g.patch;
  }
  // Row of patch m in the (B, prefix + N, D) token tensor.
  __device__ int64_t token_row(int m) const {
    const int b = m / g.num_patches, n = m % g.num_patches;
    return int64_t(b) * (g.num_patches + g.prefix) + g.prefix + n;
  }
  // Offset of patch m's top-left pixel.
  __device__ int64_t patch_base(int m) const {
    const int b = m / g.num_patches, n = m % g.num_patches;
    const int py = n / g.grid_w, px = n % g.grid_w;
    const int64_t* s = g.image_stride;
    return int64_t(b) * s[0] + int64_t(py) * g.patch * s[2] + int64_t(px) * g.patch * s[3];
  }
  struct PixelCol {
    int64_t offset;  // c * sc + ky * sh + kx * sw
    int channel;
  };
  __device__ PixelCol pixel_col(int k) const {
    int c, ky, kx;
    k_coords(k, c, ky, kx);
    const int64_t* s = g.image_stride;
    return {int64_t(c) * s[1] + int64_t(ky) * s[2] + int64_t(kx) * s[3], c};
  }
  // Weight offset of (d, k) = d * s[0] + weight_col(k).
  __device__ int64_t weight_col(int k) const {
    int c, ky, kx;
    k_coords(k, c, ky, kx);
    const int64_t* s = g.weight_stride;
    return int64_t(c) * s[1] + int64_t(ky) * s[2] + int64_t(kx) * s[3];
  }
  __device__ int64_t weight_row(int d) const { return int64_t(d) * g.weight_stride[0]; }
};

template <typename Pixel>
__device__ __forceinline__ float load_pixel(const Pixel* images, const float* scale, const float* shift,
                                            int64_t base, PatchIndex::PixelCol col) {
  const float v = pixel_to_float(images[base + col.offset]);
  return scale ? v * scale[col.channel] + shift[col.channel] : v;
}

// tokens = A W^T + bias + pos: M = patches, N = D, K = C p p.
template <typename T, typename Pixel>
struct FwdProblem {
  static constexpr bool kAKFast = true;  // a patch row's pixels run along k
  static constexpr bool kBKFast = true;  // the weight is contiguous along k
  PatchIndex idx;
  const Pixel* images;
  const T* weight;
  const T* bias;
  const T* pos;
  const float* scale;
  const float* shift;
  T* out;
  int pos_start;
  int k_chunk;

  __host__ __device__ int rows() const { return idx.patch_rows(); }
  __host__ __device__ int cols() const { return idx.g.dim; }
  __host__ __device__ int depth() const { return idx.patch_cols(); }
  __device__ int64_t a_row(int m) const { return idx.patch_base(m); }
  __device__ PatchIndex::PixelCol a_col(int k) const { return idx.pixel_col(k); }
  __device__ float a(int64_t base, PatchIndex::PixelCol col) const { return load_pixel(images, scale, shift, base, col); }
  __device__ int64_t b_row(int d) const { return idx.weight_row(d); }
  __device__ int64_t b_col(int k) const { return idx.weight_col(k); }
  __device__ float b(int64_t row, int64_t col) const { return to_float(weight[row + col]); }
  __device__ void store(int m, int d, float v) const {
    const int dim = idx.g.dim;
    if (bias) v += to_float(bias[d]);
    if (pos) v += to_float(pos[int64_t(pos_start + m % idx.g.num_patches) * dim + d]);
    out[idx.token_row(m) * dim + d] = from_float<T>(v);
  }
};

// d images = dY W: M = patches, N = C p p, K = D.
template <typename T>
struct BwdImagesProblem {
  static constexpr bool kAKFast = true;   // dY rows are contiguous along D
  static constexpr bool kBKFast = false;  // W[d, :] is contiguous along the output column
  PatchIndex idx;
  const T* grad_out;
  const T* weight;
  const float* scale;
  T* grad_images;
  int k_chunk;

  __host__ __device__ int rows() const { return idx.patch_rows(); }
  __host__ __device__ int cols() const { return idx.patch_cols(); }
  __host__ __device__ int depth() const { return idx.g.dim; }
  __device__ int64_t a_row(int m) const { return idx.token_row(m) * idx.g.dim; }
  __device__ int a_col(int d) const { return d; }
  __device__ float a(int64_t row, int d) const { return to_float(grad_out[row + d]); }
  __device__ int64_t b_row(int k) const { return idx.weight_col(k); }
  __device__ int64_t b_col(int d) const { return idx.weight_row(d); }
  __device__ float b(int64_t col_part, int64_t row_part) const { return to_float(weight[row_part + col_part]); }
  __device__ void store(int m, int k, float v) const {
    const PatchIndex::PixelCol col = idx.pixel_col(k);
    grad_images[idx.patch_base(m) + col.offset] = from_float<T>(scale ? v * scale[col.channel] : v);
  }
};

// Partial d weight = dY^T A over one split of the patches: M = D, N = C p p, K = patches.
template <typename T, typename Pixel>
struct BwdWeightProblem {
  static constexpr bool kAKFast = false;  // dY^T[d, m]: d is contiguous
  static constexpr bool kBKFast = false;  // A[m, k]: a patch row runs along k
  PatchIndex idx;
  const T* grad_out;
  const Pixel* images;
  const float* scale;
  const float* shift;
  float* partial;
  int k_chunk;

  __host__ __device__ int rows() const { return idx.g.dim; }
  __host__ __device__ int cols() const { return idx.patch_cols(); }
  __host__ __device__ int depth() const { return idx.patch_rows(); }
  __device__ int a_row(int d) const { return d; }
  __device__ int64_t a_col(int m) const { return idx.token_row(m) * idx.g.dim; }
  __device__ float a(int d, int64_t token) const { return to_float(grad_out[token + d]); }
  __device__ PatchIndex::PixelCol b_row(int k) const { return idx.pixel_col(k); }
  __device__ int64_t b_col(int m) const { return idx.patch_base(m); }
  // Rounded to T in shared memory: exactly the operand the forward multiplied.
  __device__ float b(PatchIndex::PixelCol col, int64_t base) const { return load_pixel(images, scale, shift, base, col); }
  __device__ void store(int d, int k, float v) const {
    partial[(int64_t(blockIdx.y) * idx.g.dim + d) * cols() + k] = v;
  }
};

template <typename T>
__global__ void cls_rows_kernel(const T* cls, const T* pos, T* out, int dim, int64_t image_stride) {
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    float v = to_float(cls[d]);
    if (pos) v += to_float(pos[d]);
    out[blockIdx.x * image_stride + d] = from_float<T>(v);
  }
}

template <typename T>
__global__ void sum_partials_kernel(const float* partial, T* out, int splits, int64_t size) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= size) return;
  float total = 0.f;
  for (int s = 0; s < splits; ++s) total += partial[s * size + i];
  out[i] = from_float<T>(total);
}

using gather_gemm::dispatch_16bit;
using gather_gemm::launch_gemm;
using gather_gemm::whole_depth;

template <typename T, typename Pixel>
cudaError_t fwd_typed(const PatchEmbedFwdParams& p, cudaStream_t stream) {
  FwdProblem<T, Pixel> problem{PatchIndex{p.g}, static_cast<const Pixel*>(p.images), static_cast<const T*>(p.weight),
                               static_cast<const T*>(p.bias), static_cast<const T*>(p.pos), p.scale, p.shift,
                               static_cast<T*>(p.out), p.pos_start, 0};
  problem.k_chunk = whole_depth(problem.depth());
  VTK_RETURN_IF_ERROR((launch_gemm<FwdProblem<T, Pixel>, T>(problem, stream)));
  if (p.cls && p.g.batch > 0) {
    const T* cls_pos = p.pos && p.pos_start ? static_cast<const T*>(p.pos) : nullptr;
    cls_rows_kernel<T><<<p.g.batch, 256, 0, stream>>>(static_cast<const T*>(p.cls), cls_pos, static_cast<T*>(p.out),
                                                       p.g.dim, int64_t(p.g.num_patches + 1) * p.g.dim);
    VTK_RETURN_IF_ERROR(cudaGetLastError());
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t patch_embed_fwd(const PatchEmbedFwdParams& p, cudaStream_t stream) {
  return dispatch_16bit(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    return p.images_uint8 ? fwd_typed<T, uint8_t>(p, stream) : fwd_typed<T, T>(p, stream);
  });
}

cudaError_t patch_embed_bwd_images(const PatchEmbedBwdImagesParams& p, cudaStream_t stream) {
  return dispatch_16bit(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    BwdImagesProblem<T> problem{PatchIndex{p.g}, static_cast<const T*>(p.grad_out), static_cast<const T*>(p.weight),
                                p.scale, static_cast<T*>(p.grad_images), 0};
    problem.k_chunk = whole_depth(problem.depth());
    return launch_gemm<BwdImagesProblem<T>, T>(problem, stream);
  });
}

int64_t patch_embed_bwd_weight_workspace_floats(PatchEmbedBwdWeightParams& p) {
  const PatchIndex idx{p.g};
  const int depth = idx.patch_rows();
  const int64_t tiles = int64_t((p.g.dim + gather_gemm::kBM - 1) / gather_gemm::kBM) *
                        ((idx.patch_cols() + gather_gemm::kBN - 1) / gather_gemm::kBN);
  const int64_t wanted = (2 * int64_t(std::max(p.sm_count, 1)) + tiles - 1) / tiles;  // ~2 blocks per SM
  const int64_t k_steps = std::max<int64_t>(1, (depth + kBK - 1) / kBK);
  const int64_t splits = std::clamp<int64_t>(wanted, 1, k_steps);
  p.split_depth = static_cast<int>((k_steps + splits - 1) / splits * kBK);
  p.splits = (depth + p.split_depth - 1) / p.split_depth;
  return int64_t(std::max(p.splits, 1)) * p.g.dim * idx.patch_cols();
}

cudaError_t patch_embed_bwd_weight(const PatchEmbedBwdWeightParams& p, cudaStream_t stream) {
  return dispatch_16bit(p.dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    const PatchIndex idx{p.g};
    const int64_t size = int64_t(p.g.dim) * idx.patch_cols();
    if (idx.patch_rows() > 0) {
      auto run = [&](auto pixel_tag) {
        using Pixel = decltype(pixel_tag);
        BwdWeightProblem<T, Pixel> problem{idx, static_cast<const T*>(p.grad_out), static_cast<const Pixel*>(p.images),
                                           p.scale, p.shift, p.partial, p.split_depth};
        return launch_gemm<BwdWeightProblem<T, Pixel>, T>(problem, stream);
      };
      VTK_RETURN_IF_ERROR(p.images_uint8 ? run(uint8_t{}) : run(T{}));
    }
    const int splits = idx.patch_rows() > 0 ? p.splits : 0;
    const int threads = 256;
    sum_partials_kernel<T><<<ceil_div(size, threads), threads, 0, stream>>>(p.partial, static_cast<T*>(p.grad_weight),
                                                                            splits, size);
    return cudaGetLastError();
  });
}

}  // namespace vtk
