#include "bindings/patch_embed.h"

#include <limits>

#include "cuda_context.h"
#include "patch_embed/patch_embed.h"
#include "torch_checks.h"

namespace vtk_torch {
namespace {

using OptTensor = std::optional<at::Tensor>;

// Checks images (a (B, C, H, W) view, any strides, weight's dtype or uint8) against the
// (D, C, p, p) weight; returns the geometry the kernels take.
vtk::PatchGeometry geometry(const at::Tensor& images, const at::Tensor& weight, int64_t prefix) {
  TORCH_CHECK(on_kernel_device(weight), "weight must be a CUDA tensor, got ", weight.device());
  TORCH_CHECK(weight.scalar_type() == at::kHalf || weight.scalar_type() == at::kBFloat16,
              "weight has dtype ", weight.scalar_type(), "; the CUDA patch embedding takes float16 / bfloat16");
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == weight.size(3) && weight.numel() > 0,
              "weight must have a non-empty shape (D, C, p, p), got ", weight.sizes());
  TORCH_CHECK(on_kernel_device(images) && images.device() == weight.device(), "images must be on ", weight.device(), ", got ",
              images.device());
  TORCH_CHECK(images.scalar_type() == weight.scalar_type() || images.scalar_type() == at::kByte, "images has dtype ",
              images.scalar_type(), " but weight has ", weight.scalar_type(), " (uint8 images are also accepted)");
  TORCH_CHECK(images.dim() == 4 && images.size(1) == weight.size(1), "images must be a (B, ", weight.size(1),
              ", H, W) view, got ", images.sizes());
  const int64_t patch = weight.size(2);
  TORCH_CHECK(images.size(2) >= patch && images.size(3) >= patch, "images of ", images.size(2), "x", images.size(3),
              " pixels are smaller than the patch size ", patch);
  const int64_t grid_w = images.size(3) / patch, num_patches = (images.size(2) / patch) * grid_w;
  const int64_t int_max = std::numeric_limits<int>::max();
  TORCH_CHECK(images.size(0) * (num_patches + prefix) < int_max && weight.numel() < int_max,
              "images: too many patches for 32-bit row indices");
  vtk::PatchGeometry g;
  g.batch = static_cast<int>(images.size(0));
  g.channels = static_cast<int>(weight.size(1));
  g.patch = static_cast<int>(patch);
  g.grid_w = static_cast<int>(grid_w);
  g.num_patches = static_cast<int>(num_patches);
  g.dim = static_cast<int>(weight.size(0));
  g.prefix = static_cast<int>(prefix);
  for (int i = 0; i < 4; ++i) {
    g.image_stride[i] = images.stride(i);
    g.weight_stride[i] = weight.stride(i);
  }
  return g;
}

void check_vector(const OptTensor& t, const char* name, const at::Tensor& like, int64_t size, at::ScalarType dtype) {
  if (!t) return;
  TORCH_CHECK(on_kernel_device(*t) && t->device() == like.device(), name, " must be on ", like.device());
  TORCH_CHECK(t->scalar_type() == dtype, name, " has dtype ", t->scalar_type(), ", expected ", dtype);
  TORCH_CHECK(t->numel() == size && t->is_contiguous(), name, " must be a contiguous tensor of ", size, " elements");
}

void check_grad_out(const at::Tensor& grad_out, const vtk::PatchGeometry& g, const at::Tensor& weight) {
  TORCH_CHECK(on_kernel_device(grad_out) && grad_out.device() == weight.device() && grad_out.scalar_type() == weight.scalar_type(),
              "grad_out must be a ", weight.scalar_type(), " tensor on ", weight.device());
  TORCH_CHECK(grad_out.dim() == 3 && grad_out.size(0) == g.batch && grad_out.size(1) >= g.num_patches &&
                  grad_out.size(1) <= g.num_patches + 1 && grad_out.size(2) == g.dim && grad_out.is_contiguous(),
              "grad_out must be a contiguous (", g.batch, ", [1 +] ", g.num_patches, ", ", g.dim, ") tensor, got ",
              grad_out.sizes());
}

// Geometry of a backward call: images and weight checked, the cls prefix (0 or 1) read from
// grad_out's token count.
vtk::PatchGeometry backward_geometry(const at::Tensor& grad_out, const at::Tensor& images, const at::Tensor& weight) {
  vtk::PatchGeometry g = geometry(images, weight, 0);
  check_grad_out(grad_out, g, weight);
  g.prefix = static_cast<int>(grad_out.size(1) - g.num_patches);
  return g;
}

void check_affine(const OptTensor& scale, const OptTensor& shift, const at::Tensor& images, int64_t channels) {
  TORCH_CHECK(scale.has_value() == shift.has_value(), "scale and shift come together");
  TORCH_CHECK(scale || images.scalar_type() != at::kByte, "uint8 images need scale / shift (normalization)");
  check_vector(scale, "scale", images, channels, at::kFloat);
  check_vector(shift, "shift", images, channels, at::kFloat);
}

const float* float_or_null(const OptTensor& t) { return t ? t->data_ptr<float>() : nullptr; }

at::Tensor patch_embed_fwd(const at::Tensor& images, const at::Tensor& weight, const OptTensor& bias,
                           const OptTensor& cls_token, const OptTensor& pos_embed, const OptTensor& scale,
                           const OptTensor& shift) {
  const vtk::PatchGeometry g = geometry(images, weight, cls_token ? 1 : 0);
  check_vector(bias, "bias", weight, g.dim, weight.scalar_type());
  check_vector(cls_token, "cls_token", weight, g.dim, weight.scalar_type());
  check_affine(scale, shift, images, g.channels);
  int pos_start = 0;
  if (pos_embed) {
    const int64_t rows = pos_embed->size(0);
    TORCH_CHECK(pos_embed->dim() == 2 && pos_embed->size(1) == g.dim &&
                    (rows == g.num_patches || (cls_token && rows == g.num_patches + 1)),
                "pos_embed must have shape (N [+ 1 with a cls token], ", g.dim, ") with N = ", g.num_patches, ", got ",
                pos_embed->sizes());
    check_vector(pos_embed, "pos_embed", weight, rows * g.dim, weight.scalar_type());
    pos_start = rows == g.num_patches + 1 ? 1 : 0;
  }
  DeviceGuard guard(weight);
  at::Tensor out = at::empty({g.batch, g.prefix + g.num_patches, g.dim}, weight.options());
  vtk::PatchEmbedFwdParams p{};
  p.g = g;
  p.images = images.data_ptr();
  p.images_uint8 = images.scalar_type() == at::kByte;
  p.weight = weight.data_ptr();
  p.bias = data_or_null(bias);
  p.cls = data_or_null(cls_token);
  p.pos = data_or_null(pos_embed);
  p.pos_start = pos_start;
  p.scale = float_or_null(scale);
  p.shift = float_or_null(shift);
  p.out = out.data_ptr();
  p.dtype = kernel_dtype(weight, "weight");
  check_launch(vtk::patch_embed_fwd(p, current_stream(weight)), "patch_embed_fwd");
  return out;
}

at::Tensor patch_embed_bwd_images(const at::Tensor& grad_out, const at::Tensor& images, const at::Tensor& weight,
                                  const OptTensor& scale) {
  TORCH_CHECK(images.scalar_type() != at::kByte, "images: uint8 images have no gradient");
  vtk::PatchEmbedBwdImagesParams p{};
  p.g = backward_geometry(grad_out, images, weight);
  check_vector(scale, "scale", images, p.g.channels, at::kFloat);
  const bool covered = images.size(2) % p.g.patch == 0 && images.size(3) % p.g.patch == 0;
  DeviceGuard guard(weight);
  // Laid out like images where they are dense; pixels past the last full patch get zeros.
  at::Tensor grad = covered ? at::empty_like(images) : at::zeros_like(images);
  for (int i = 0; i < 4; ++i) p.g.image_stride[i] = grad.stride(i);  // the kernel writes grad, not images
  p.grad_out = grad_out.data_ptr();
  p.weight = weight.data_ptr();
  p.scale = float_or_null(scale);
  p.grad_images = grad.data_ptr();
  p.dtype = kernel_dtype(weight, "weight");
  check_launch(vtk::patch_embed_bwd_images(p, current_stream(weight)), "patch_embed_bwd_images");
  return grad;
}

at::Tensor patch_embed_bwd_weight(const at::Tensor& grad_out, const at::Tensor& images, const at::Tensor& weight,
                                  const OptTensor& scale, const OptTensor& shift) {
  vtk::PatchEmbedBwdWeightParams p{};
  p.g = backward_geometry(grad_out, images, weight);
  check_affine(scale, shift, images, p.g.channels);
  DeviceGuard guard(weight);
  at::Tensor grad = at::empty({weight.size(0), weight.size(1), weight.size(2), weight.size(3)}, weight.options());
  p.grad_out = grad_out.data_ptr();
  p.images = images.data_ptr();
  p.images_uint8 = images.scalar_type() == at::kByte;
  p.scale = float_or_null(scale);
  p.shift = float_or_null(shift);
  p.sm_count = sm_count(weight);
  p.grad_weight = grad.data_ptr();
  p.dtype = kernel_dtype(weight, "weight");
  at::Tensor partial = at::empty({vtk::patch_embed_bwd_weight_workspace_floats(p)}, weight.options().dtype(at::kFloat));
  p.partial = partial.data_ptr<float>();
  check_launch(vtk::patch_embed_bwd_weight(p, current_stream(weight)), "patch_embed_bwd_weight");
  return grad;
}

}  // namespace

void bind_patch_embed(pybind11::module_& m) {
  m.def("patch_embed_fwd", &patch_embed_fwd,
        "Patch embedding forward: tokens (B, [1 +] N, D) from a (B, C, H, W) image view (fp16/bf16 or uint8)",
        pybind11::arg("images"), pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("cls_token"),
        pybind11::arg("pos_embed"), pybind11::arg("scale"), pybind11::arg("shift"));
  m.def("patch_embed_bwd_images", &patch_embed_bwd_images, "Patch embedding: gradient of the images",
        pybind11::arg("grad_out"), pybind11::arg("images"), pybind11::arg("weight"), pybind11::arg("scale"));
  m.def("patch_embed_bwd_weight", &patch_embed_bwd_weight, "Patch embedding: gradient of the (D, C, p, p) weight",
        pybind11::arg("grad_out"), pybind11::arg("images"), pybind11::arg("weight"), pybind11::arg("scale"),
        pybind11::arg("shift"));
}

}  // namespace vtk_torch
