// iGPT colour palette kernels (see vtkernels/reference/palette.py for the spec).
//
// Quantize: one thread per pixel. The block stages the cluster table in shared memory, a chunk
// of kChunk clusters at a time (as fp32), and every thread scans it keeping the first minimum.
// Every product and sum uses an explicit round-to-nearest intrinsic (no FMA contraction), in
// the reference's order, so the ids equal the fp32 reference bit for bit.
//
// Dequantize: one thread per pixel: gather the cluster, rint(127.5 * (c + 1)), clamp, store.
#include "palette/palette.h"

#include "common/launch.h"

namespace vtk {
namespace {

constexpr int kThreads = 256;
constexpr int kChunk = 512;                    // clusters staged per pass (6 KB of shared memory)
constexpr float kPixelScale = 2.0f / 255.0f;  // p / 127.5 - 1 as a product, like the reference

template <typename C>
__global__ void __launch_bounds__(kThreads) palette_quantize_kernel(PaletteQuantizeParams p) {
  __shared__ float table[3][kChunk];
  const C* clusters = static_cast<const C*>(p.clusters);
  const int64_t b = blockIdx.y;
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const bool valid = pixel < p.n_pixels;

  float rgb[3] = {0.f, 0.f, 0.f};
  if (valid) {
    const uint8_t* px = p.pixels + b * p.stride_b + pixel * p.stride_p;
#pragma unroll
    for (int c = 0; c < 3; ++c) rgb[c] = __fadd_rn(__fmul_rn(static_cast<float>(px[c * p.stride_c]), kPixelScale), -1.f);
  }

  float best = __int_as_float(0x7f800000);  // +inf
  int best_id = 0;
  for (int start = 0; start < p.n_clusters; start += kChunk) {
    const int count = min(kChunk, p.n_clusters - start);
    __syncthreads();  // the previous chunk is no longer read
    for (int i = threadIdx.x; i < 3 * count; i += kThreads) {
      table[i % 3][i / 3] = to_float(clusters[3 * start + i]);
    }
    __syncthreads();
    for (int k = 0; k < count; ++k) {
      const float d0 = __fsub_rn(rgb[0], table[0][k]);
      const float d1 = __fsub_rn(rgb[1], table[1][k]);
      const float d2 = __fsub_rn(rgb[2], table[2][k]);
      const float dist = __fadd_rn(__fadd_rn(__fmul_rn(d0, d0), __fmul_rn(d1, d1)), __fmul_rn(d2, d2));
      if (dist < best) {  // strict: ties keep the lowest id
        best = dist;
        best_id = start + k;
      }
    }
  }
  if (valid) p.tokens[b * p.n_pixels + pixel] = best_id;
}

template <typename C, typename Id>
__global__ void __launch_bounds__(kThreads) palette_dequantize_kernel(PaletteDequantizeParams p) {
  const int64_t b = blockIdx.y;
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (pixel >= p.n_pixels) return;
  int64_t id = static_cast<const Id*>(p.tokens)[b * p.n_pixels + pixel];
  id = id < 0 ? 0 : (id >= p.n_clusters ? p.n_clusters - 1 : id);  // the op checks the range; never read out of bounds
  const C* colour = static_cast<const C*>(p.clusters) + 3 * id;
  uint8_t* out = p.out + b * p.stride_b + pixel * p.stride_p;
#pragma unroll
  for (int c = 0; c < 3; ++c) {
    const float v = rintf(__fmul_rn(__fadd_rn(to_float(colour[c]), 1.f), 127.5f));
    out[c * p.stride_c] = static_cast<uint8_t>(fminf(fmaxf(v, 0.f), 255.f));
  }
}

}  // namespace

cudaError_t palette_quantize(const PaletteQuantizeParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.n_pixels == 0) return cudaSuccess;
  const dim3 grid(ceil_div(p.n_pixels, kThreads), static_cast<unsigned>(p.batch));
  VTK_DISPATCH_DTYPE(p.clusters_dtype, [&] { palette_quantize_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(p); });
  return cudaGetLastError();
}

cudaError_t palette_dequantize(const PaletteDequantizeParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.n_pixels == 0) return cudaSuccess;
  const dim3 grid(ceil_div(p.n_pixels, kThreads), static_cast<unsigned>(p.batch));
  VTK_DISPATCH_DTYPE(p.clusters_dtype, [&] {
    if (p.tokens_int32) {
      palette_dequantize_kernel<scalar_t, int32_t><<<grid, kThreads, 0, stream>>>(p);
    } else {
      palette_dequantize_kernel<scalar_t, int64_t><<<grid, kThreads, 0, stream>>>(p);
    }
  });
  return cudaGetLastError();
}

}  // namespace vtk
