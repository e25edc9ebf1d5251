#include "bindings/patch_merging.h"

#include "cuda_context.h"
#include "norm/norm.h"
#include "patch_merging/patch_merging.h"
#include "torch_checks.h"

namespace vtk_torch {
namespace {

using OptTensor = std::optional<at::Tensor>;

// Geometry of x (B, H, W, C); the merged row of 4C elements must fit the norm's row tiles.
vtk::MergeGeometry merge_geometry(const at::Tensor& x, const char* name) {
  const int64_t channels = x.size(3);
  TORCH_CHECK(channels > 0 && 4 * channels <= vtk::kNormMaxCols, name, ": 4 * channels must be in [4, ",
              vtk::kNormMaxCols, "], got channels = ", channels);
  TORCH_CHECK(x.size(1) <= INT32_MAX && x.size(2) <= INT32_MAX, name, ": height and width must fit in int32, got ",
              x.sizes());
  return {x.size(0), static_cast<int>(x.size(1)), static_cast<int>(x.size(2)), static_cast<int>(channels)};
}

vtk::PixelStrides pixel_strides(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

void check_row_length(const OptTensor& t, const char* name, int64_t cols) {
  if (t) TORCH_CHECK(t->size(0) == cols, name, " must have ", cols, " elements (4 * channels), got ", t->sizes());
}

void check_stats(const at::Tensor& t, const char* name, int64_t rows, const at::Tensor& like) {
  TORCH_CHECK(t.device() == like.device() && t.scalar_type() == at::kFloat && t.numel() == rows && t.is_contiguous(),
              name, " must be a contiguous float32 tensor of ", rows, " elements on ", like.device());
}

std::vector<at::Tensor> patch_merging_fwd(const at::Tensor& x, const OptTensor& weight, const OptTensor& bias,
                                          double eps) {
  check_operand(x, "x", x, 4);
  check_optional(weight, "weight", x, 1);
  check_optional(bias, "bias", x, 1);
  const vtk::MergeGeometry shape = merge_geometry(x, "x");
  const int64_t cols = 4 * int64_t(shape.channels);
  check_row_length(weight, "weight", cols);
  check_row_length(bias, "bias", cols);
  TORCH_CHECK(eps > 0, "eps must be > 0, got ", eps);

  DeviceGuard guard(x);
  const int64_t rows = vtk::patch_merging_rows(shape);
  check_grid_rows(rows, "x (merged)");
  at::Tensor y = at::empty({shape.batch, (shape.height + 1) / 2, (shape.width + 1) / 2, cols}, x.options());
  const auto stats = x.options().dtype(at::kFloat);
  at::Tensor mean = at::empty({rows}, stats);
  at::Tensor rstd = at::empty({rows}, stats);

  vtk::PatchMergingFwdParams p{};
  p.x = x.data_ptr();
  p.weight = data_or_null(weight);
  p.bias = data_or_null(bias);
  p.y = y.data_ptr();
  p.mean = mean.data_ptr<float>();
  p.rstd = rstd.data_ptr<float>();
  p.shape = shape;
  p.x_strides = pixel_strides(x);
  p.eps = static_cast<float>(eps);
  p.dtype = kernel_dtype(x, "x");
  check_launch(vtk::patch_merging_fwd(p, current_stream(x)), "patch_merging_fwd");
  return {y, mean, rstd};
}

std::vector<at::Tensor> patch_merging_bwd(const at::Tensor& dy, const at::Tensor& x, const OptTensor& weight,
                                          const at::Tensor& mean, const at::Tensor& rstd, bool has_bias) {
  check_operand(x, "x", x, 4);
  check_operand(dy, "dy", x, 4);
  check_optional(weight, "weight", x, 1);
  const vtk::MergeGeometry shape = merge_geometry(x, "x");
  const int64_t cols = 4 * int64_t(shape.channels);
  const std::vector<int64_t> merged{shape.batch, (shape.height + 1) / 2, (shape.width + 1) / 2, cols};
  TORCH_CHECK(dy.sizes() == at::IntArrayRef(merged), "dy must have shape ", merged, ", got ", dy.sizes());
  TORCH_CHECK(dy.is_contiguous(), "dy must be contiguous");
  check_row_length(weight, "weight", cols);
  const int64_t rows = vtk::patch_merging_rows(shape);
  check_stats(mean, "mean", rows, x);
  check_stats(rstd, "rstd", rows, x);

  DeviceGuard guard(x);
  at::Tensor dx = at::empty(x.sizes(), x.options());
  at::Tensor dweight = at::empty({weight ? cols : 0}, x.options());
  at::Tensor dbias = at::empty({has_bias ? cols : 0}, x.options());

  vtk::PatchMergingBwdParams p{};
  p.dy = dy.data_ptr();
  p.x = x.data_ptr();
  p.weight = data_or_null(weight);
  p.mean = mean.data_ptr<float>();
  p.rstd = rstd.data_ptr<float>();
  p.dx = dx.data_ptr();
  p.dweight = weight ? dweight.data_ptr() : nullptr;
  p.dbias = has_bias ? dbias.data_ptr() : nullptr;
  p.shape = shape;
  p.x_strides = pixel_strides(x);
  p.dx_strides = pixel_strides(dx);
  p.sm_count = sm_count(x);
  p.dtype = kernel_dtype(x, "x");
  at::Tensor partial = at::empty({vtk::patch_merging_bwd_workspace_floats(p)}, x.options().dtype(at::kFloat));
  p.partial = partial.data_ptr<float>();
  check_launch(vtk::patch_merging_bwd(p, current_stream(x)), "patch_merging_bwd");
  return {dx, dweight, dbias};
}

}  // namespace

void bind_patch_merging(pybind11::module_& m) {
  m.def("patch_merging_fwd", &patch_merging_fwd,
        "Swin patch merging (2x2 gather + LayerNorm(4C)) forward: returns [y, mean, rstd]", pybind11::arg("x"),
        pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("eps"));
  m.def("patch_merging_bwd", &patch_merging_bwd, "Swin patch merging backward: returns [dx, dweight, dbias]",
        pybind11::arg("dy"), pybind11::arg("x"), pybind11::arg("weight"), pybind11::arg("mean"), pybind11::arg("rstd"),
        pybind11::arg("has_bias"));
}

}  // namespace vtk_torch
