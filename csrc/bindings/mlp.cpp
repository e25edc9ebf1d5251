#include "bindings/mlp.h"

#include <limits>
#include <string>

#include "cuda_context.h"
#include "mlp/mlp.h"
#include "torch_checks.h"

namespace vtk_torch {
namespace {

using OptTensor = std::optional<at::Tensor>;

// Names in the order of vtkernels.reference.activation.ACTIVATIONS = the vtk::Activation codes.
vtk::Activation activation_code(const std::string& name) {
  const char* names[] = {"gelu", "gelu_tanh", "quick_gelu", "relu"};
  for (int i = 0; i < 4; ++i) {
    if (name == names[i]) return static_cast<vtk::Activation>(i);
  }
  TORCH_CHECK(false, "activation must be one of gelu, gelu_tanh, quick_gelu, relu; got ", name);
}

// a (M, K) with unit column stride, fp16 / bf16 on CUDA; weight 2-D contiguous of a's dtype.
void check_gemm_operands(const at::Tensor& a, const char* a_name, const at::Tensor& weight) {
  check_operand(a, a_name, a, 2);
  TORCH_CHECK(a.scalar_type() == at::kHalf || a.scalar_type() == at::kBFloat16, a_name, " has dtype ",
              a.scalar_type(), "; the CUDA MLP takes float16 / bfloat16");
  check_operand(weight, "weight", a, 2);
  TORCH_CHECK(weight.is_contiguous(), "weight must be contiguous");
  const int64_t int_max = std::numeric_limits<int>::max();
  TORCH_CHECK(a.size(0) < int_max && weight.numel() < int_max, a_name, ": too many rows for 32-bit indices");
}

vtk::MlpGemmParams params(const at::Tensor& a, const at::Tensor& weight, int64_t n, const std::string& activation) {
  vtk::MlpGemmParams p{};
  p.a = a.data_ptr();
  p.lda = a.stride(0);
  p.weight = weight.data_ptr();
  p.m = static_cast<int>(a.size(0));
  p.n = static_cast<int>(n);
  p.k = static_cast<int>(a.size(1));
  p.activation = activation_code(activation);
  p.dtype = kernel_dtype(a, "a");
  return p;
}

std::tuple<at::Tensor, at::Tensor> linear_act(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias,
                                              const std::string& activation, bool save_pre) {
  check_gemm_operands(x, "x", weight);
  TORCH_CHECK(weight.size(1) == x.size(1) && x.size(1) > 0, "weight must have shape (N, ", x.size(1), "), got ",
              weight.sizes());
  const int64_t n = weight.size(0);
  check_optional(bias, "bias", x, 1);
  TORCH_CHECK(!bias || (bias->numel() == n && bias->is_contiguous()), "bias must be a contiguous (", n, ") tensor");
  DeviceGuard guard(x);
  at::Tensor h = at::empty({x.size(0), n}, x.options());
  at::Tensor pre = save_pre ? at::empty({x.size(0), n}, x.options()) : at::empty({0}, x.options());
  vtk::MlpGemmParams p = params(x, weight, n, activation);
  p.bias = data_or_null(bias);
  p.pre = save_pre ? pre.data_ptr() : nullptr;
  p.out = h.data_ptr();
  check_launch(vtk::mlp_linear_act(p, current_stream(x)), "mlp_linear_act");
  return {h, pre};
}

at::Tensor matmul_act_grad(const at::Tensor& d_out, const at::Tensor& weight, const at::Tensor& pre,
                           const std::string& activation) {
  check_gemm_operands(d_out, "dout", weight);
  TORCH_CHECK(weight.size(0) == d_out.size(1) && d_out.size(1) > 0, "weight must have shape (", d_out.size(1),
              ", N), got ", weight.sizes());
  const int64_t n = weight.size(1);
  check_operand(pre, "pre", d_out, 2);
  TORCH_CHECK(pre.size(0) == d_out.size(0) && pre.size(1) == n && pre.is_contiguous(),
              "pre must be a contiguous (", d_out.size(0), ", ", n, ") tensor, got ", pre.sizes());
  DeviceGuard guard(d_out);
  at::Tensor d_pre = at::empty_like(pre);
  vtk::MlpGemmParams p = params(d_out, weight, n, activation);
  p.pre = const_cast<void*>(pre.data_ptr());
  p.out = d_pre.data_ptr();
  check_launch(vtk::mlp_matmul_act_grad(p, current_stream(d_out)), "mlp_matmul_act_grad");
  return d_pre;
}

}  // namespace

void bind_mlp(pybind11::module_& m) {
  m.def("mlp_linear_act", &linear_act,
        "(act(x W^T + bias), the pre-activation or an empty tensor): x (M, K), W (N, K)", pybind11::arg("x"),
        pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("activation"), pybind11::arg("save_pre"));
  m.def("mlp_matmul_act_grad", &matmul_act_grad, "(dout W) * act'(pre): dout (M, K), W (K, N), pre (M, N)",
        pybind11::arg("dout"), pybind11::arg("weight"), pybind11::arg("pre"), pybind11::arg("activation"));
}

}  // namespace vtk_torch
