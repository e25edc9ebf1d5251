#include "bindings/palette.h"

#include "cuda_context.h"
#include "palette/palette.h"
#include "torch_checks.h"

namespace vtk_torch {
namespace {

void check_clusters(const at::Tensor& clusters, const at::Tensor& like) {
  TORCH_CHECK(on_kernel_device(clusters) && clusters.device() == like.device(), "clusters must be a CUDA tensor on ",
              like.device(), ", got ", clusters.device());
  TORCH_CHECK(clusters.dim() == 2 && clusters.size(1) == 3 && clusters.size(0) > 0,
              "clusters must have shape (K, 3) with K >= 1, got ", clusters.sizes());
  TORCH_CHECK(clusters.is_contiguous(), "clusters must be contiguous");
  TORCH_CHECK(clusters.size(0) <= INT32_MAX, "clusters: too many clusters (", clusters.size(0), ")");
}

// The kernels put the batch on gridDim.y (at most 65535).
void check_batch(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.size(0) <= 65535, name, ": batch of ", t.size(0), " > 65535 for the CUDA kernel");
}

at::Tensor palette_quantize(const at::Tensor& pixels, const at::Tensor& clusters) {
  TORCH_CHECK(on_kernel_device(pixels), "pixels must be a CUDA tensor, got ", pixels.device());
  TORCH_CHECK(pixels.scalar_type() == at::kByte, "pixels must be uint8, got ", pixels.scalar_type());
  TORCH_CHECK(pixels.dim() == 3 && pixels.size(2) == 3, "pixels must have shape (B, N, 3), got ", pixels.sizes());
  check_clusters(clusters, pixels);
  check_batch(pixels, "pixels");
  DeviceGuard guard(pixels);
  at::Tensor tokens = at::empty({pixels.size(0), pixels.size(1)}, pixels.options().dtype(at::kLong));
  vtk::PaletteQuantizeParams p{};
  p.pixels = pixels.data_ptr<uint8_t>();
  p.clusters = clusters.data_ptr();
  p.tokens = tokens.data_ptr<int64_t>();
  p.batch = pixels.size(0);
  p.n_pixels = pixels.size(1);
  p.n_clusters = static_cast<int>(clusters.size(0));
  p.stride_b = pixels.stride(0);
  p.stride_p = pixels.stride(1);
  p.stride_c = pixels.stride(2);
  p.clusters_dtype = kernel_dtype(clusters, "clusters");
  check_launch(vtk::palette_quantize(p, current_stream(pixels)), "palette_quantize");
  return tokens;
}

at::Tensor palette_dequantize(const at::Tensor& tokens, const at::Tensor& clusters, bool channels_first) {
  TORCH_CHECK(on_kernel_device(tokens), "tokens must be a CUDA tensor, got ", tokens.device());
  TORCH_CHECK(tokens.scalar_type() == at::kLong || tokens.scalar_type() == at::kInt,
              "tokens must be int64 or int32, got ", tokens.scalar_type());
  TORCH_CHECK(tokens.dim() == 2 && tokens.is_contiguous(), "tokens must be a contiguous (B, N) tensor, got ",
              tokens.sizes());
  check_clusters(clusters, tokens);
  check_batch(tokens, "tokens");
  DeviceGuard guard(tokens);
  const int64_t batch = tokens.size(0), n = tokens.size(1);
  const auto options = tokens.options().dtype(at::kByte);
  at::Tensor out = channels_first ? at::empty({batch, 3, n}, options) : at::empty({batch, n, 3}, options);
  vtk::PaletteDequantizeParams p{};
  p.tokens = tokens.data_ptr();
  p.tokens_int32 = tokens.scalar_type() == at::kInt;
  p.clusters = clusters.data_ptr();
  p.out = out.data_ptr<uint8_t>();
  p.batch = batch;
  p.n_pixels = n;
  p.n_clusters = static_cast<int>(clusters.size(0));
  p.stride_b = out.stride(0);
  p.stride_p = channels_first ? out.stride(2) : out.stride(1);
  p.stride_c = channels_first ? out.stride(1) : out.stride(2);
  p.clusters_dtype = kernel_dtype(clusters, "clusters");
  check_launch(vtk::palette_dequantize(p, current_stream(tokens)), "palette_dequantize");
  return out;
}

}  // namespace

void bind_palette(pybind11::module_& m) {
  m.def("palette_quantize", &palette_quantize, "uint8 (B, N, 3) pixels -> (B, N) int64 nearest-cluster ids",
        pybind11::arg("pixels"), pybind11::arg("clusters"));
  m.def("palette_dequantize", &palette_dequantize, "(B, N) ids -> uint8 (B, 3, N) or (B, N, 3) pixels",
        pybind11::arg("tokens"), pybind11::arg("clusters"), pybind11::arg("channels_first"));
}

}  // namespace vtk_torch
