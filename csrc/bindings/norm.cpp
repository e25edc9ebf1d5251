#include "bindings/norm.h"

#include <torch/csrc/autograd/custom_function.h>

#include "cuda_context.h"
#include "norm/norm.h"
#include "torch_checks.h"

namespace vtk_torch {
namespace {

using OptTensor = std::optional<at::Tensor>;

void check_row_length(const OptTensor& t, const char* name, int64_t cols) {
  if (t) TORCH_CHECK(t->size(-1) == cols, name, " must have ", cols, " elements per row, got ", t->sizes());
}

std::vector<at::Tensor> norm_fwd(const at::Tensor& x, const OptTensor& residual, const OptTensor& weight,
                                 const OptTensor& bias, double eps, bool rms) {
  check_operand(x, "x", x, 2);
  check_optional(residual, "residual", x, 2);
  check_optional(weight, "weight", x, 1);
  check_optional(bias, "bias", x, 1);
  const int64_t rows = x.size(0), cols = x.size(1);
  TORCH_CHECK(cols > 0 && cols <= vtk::kNormMaxCols, "x: normalized size must be in [1, ", vtk::kNormMaxCols, "], got ", cols);
  check_grid_rows(rows, "x");
  TORCH_CHECK(eps > 0, "eps must be > 0, got ", eps);
  if (residual) TORCH_CHECK(residual->sizes() == x.sizes(), "residual must have shape ", x.sizes(), ", got ", residual->sizes());
  check_row_length(weight, "weight", cols);
  check_row_length(bias, "bias", cols);

  DeviceGuard guard(x);
  at::Tensor y = at::empty({rows, cols}, x.options());
  at::Tensor h = residual ? at::empty({rows, cols}, x.options()) : at::empty({0}, x.options());
  const auto stats = x.options().dtype(at::kFloat);
  at::Tensor mean = at::empty({rms ? 0 : rows}, stats);
  at::Tensor rstd = at::empty({rows}, stats);

  vtk::NormFwdParams p{};
  p.x = x.data_ptr();
  p.residual = data_or_null(residual);
  p.weight = data_or_null(weight);
  p.bias = data_or_null(bias);
  p.y = y.data_ptr();
  p.h = residual ? h.data_ptr() : nullptr;
  p.mean = rms ? nullptr : mean.data_ptr<float>();
  p.rstd = rstd.data_ptr<float>();
  p.rows = rows;
  p.cols = static_cast<int>(cols);
  p.x_stride = x.stride(0);
  p.residual_stride = row_stride_or_zero(residual);
  p.y_stride = y.stride(0);
  p.h_stride = residual ? h.stride(0) : 0;
  p.eps = static_cast<float>(eps);
  p.rms = rms;
  p.dtype = kernel_dtype(x, "x");
  check_launch(vtk::norm_fwd(p, current_stream(x)), "norm_fwd");
  return {y, h, mean, rstd};
}

std::vector<at::Tensor> norm_bwd(const at::Tensor& dy, const OptTensor& dh, const at::Tensor& h, const OptTensor& weight,
                                 const at::Tensor& mean, const at::Tensor& rstd, bool rms, bool has_bias) {
  check_operand(h, "h", h, 2);
  check_operand(dy, "dy", h, 2);
  check_optional(dh, "dh", h, 2);
  check_optional(weight, "weight", h, 1);
  const int64_t rows = h.size(0), cols = h.size(1);
  TORCH_CHECK(cols > 0 && cols <= vtk::kNormMaxCols, "h: normalized size must be in [1, ", vtk::kNormMaxCols, "], got ", cols);
  TORCH_CHECK(dy.sizes() == h.sizes(), "dy must have shape ", h.sizes(), ", got ", dy.sizes());
  if (dh) TORCH_CHECK(dh->sizes() == h.sizes(), "dh must have shape ", h.sizes(), ", got ", dh->sizes());
  check_row_length(weight, "weight", cols);
  TORCH_CHECK(rstd.device() == h.device() && rstd.scalar_type() == at::kFloat && rstd.numel() == rows &&
                  rstd.is_contiguous(),
              "rstd must be a contiguous float32 tensor of ", rows, " elements on ", h.device());
  TORCH_CHECK(rms || (mean.device() == h.device() && mean.scalar_type() == at::kFloat && mean.numel() == rows &&
                      mean.is_contiguous()),
              "mean must be a contiguous float32 tensor of ", rows, " elements on ", h.device());

  DeviceGuard guard(h);
  at::Tensor dx = at::empty({rows, cols}, h.options());
  at::Tensor dweight = at::empty({weight ? cols : 0}, h.options());
  at::Tensor dbias = at::empty({has_bias ? cols : 0}, h.options());

  vtk::NormBwdParams p{};
  p.dy = dy.data_ptr();
  p.dh = data_or_null(dh);
  p.h = h.data_ptr();
  p.weight = data_or_null(weight);
  p.mean = rms ? nullptr : mean.data_ptr<float>();
  p.rstd = rstd.data_ptr<float>();
  p.dx = dx.data_ptr();
  p.dweight = weight ? dweight.data_ptr() : nullptr;
  p.dbias = has_bias ? dbias.data_ptr() : nullptr;
  p.rows = rows;
  p.cols = static_cast<int>(cols);
  p.dy_stride = dy.stride(0);
  p.dh_stride = row_stride_or_zero(dh);
  p.h_stride = h.stride(0);
  p.dx_stride = dx.stride(0);
  p.sm_count = sm_count(h);
  p.rms = rms;
  p.dtype = kernel_dtype(h, "h");
  at::Tensor partial = at::empty({vtk::norm_bwd_workspace_floats(p)}, h.options().dtype(at::kFloat));
  p.partial = partial.data_ptr<float>();
  check_launch(vtk::norm_bwd(p, current_stream(h)), "norm_bwd");
  return {dx, dweight, dbias};
}

// Eager-mode autograd in C++: the forward and its backward node without a Python frame in either
// (vtkernels/ops/norm.py calls it in plain eager mode; torch.compile and tracing get the custom
// ops). Python's autograd.Function with its backward in Python cost ~60% of a LayerNorm forward +
// backward's host time, which at ViT shapes exceeds the kernels' GPU time.
class NormAutograd : public torch::autograd::Function<NormAutograd> {
 public:
  // x, residual: (rows, cols). Returns [y, h] (h empty without residual).
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const OptTensor& residual, const OptTensor& weight,
                                                const OptTensor& bias, double eps, bool rms) {
    std::vector<at::Tensor> out = norm_fwd(x, residual, weight, bias, eps, rms);  // y, h, mean, rstd
    ctx->save_for_backward({residual ? out[1] : x, weight.value_or(at::Tensor()), out[2], out[3]});
    ctx->saved_data["rms"] = rms;
    ctx->saved_data["has_residual"] = residual.has_value();
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->set_materialize_grads(false);  // an unused output's gradient stays undefined, not zeros
    return {out[0], out[1]};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "vtkernels layer_norm / rms_norm (CUDA backend): the backward is not differentiable "
                "(create_graph=True)");
    const bool has_residual = ctx->saved_data["has_residual"].toBool();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    at::Tensor dy = grads[0], dh = has_residual ? grads[1] : at::Tensor();
    if (!dy.defined() && !dh.defined()) return torch::autograd::variable_list(6);  // no gradient at all
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const at::Tensor& h = saved[0];
    const at::Tensor& weight = saved[1];
    dy = dy.defined() ? dy.contiguous() : at::zeros_like(h);  // undefined: only the residual sum h was used
    const OptTensor dh_opt = dh.defined() ? OptTensor(dh.contiguous()) : std::nullopt;
    const OptTensor weight_opt = weight.defined() ? OptTensor(weight) : std::nullopt;
    std::vector<at::Tensor> g = norm_bwd(dy, dh_opt, h, weight_opt, saved[2], saved[3],
                                         ctx->saved_data["rms"].toBool(), has_bias);  // dx, dweight, dbias
    return {g[0], has_residual ? g[0] : at::Tensor(), weight.defined() ? g[1] : at::Tensor(),
            has_bias ? g[2] : at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::vector<at::Tensor> norm_autograd(const at::Tensor& x, const OptTensor& residual, const OptTensor& weight,
                                      const OptTensor& bias, double eps, bool rms) {
  return NormAutograd::apply(x, residual, weight, bias, eps, rms);
}

}  // namespace

void bind_norm(pybind11::module_& m) {
  m.def("norm_autograd", &norm_autograd,
        "LayerNorm/RMSNorm forward recording its backward (C++ autograd, eager mode): returns [y, h]",
        pybind11::arg("x"), pybind11::arg("residual"), pybind11::arg("weight"), pybind11::arg("bias"),
        pybind11::arg("eps"), pybind11::arg("rms"));
  m.def("norm_fwd", &norm_fwd, "LayerNorm/RMSNorm forward with optional residual: returns [y, h, mean, rstd]",
        pybind11::arg("x"), pybind11::arg("residual"), pybind11::arg("weight"), pybind11::arg("bias"),
        pybind11::arg("eps"), pybind11::arg("rms"));
  m.def("norm_bwd", &norm_bwd, "LayerNorm/RMSNorm backward: returns [dx, dweight, dbias]", pybind11::arg("dy"),
        pybind11::arg("dh"), pybind11::arg("h"), pybind11::arg("weight"), pybind11::arg("mean"), pybind11::arg("rstd"),
        pybind11::arg("rms"), pybind11::arg("has_bias"));
}

}  // namespace vtk_torch
