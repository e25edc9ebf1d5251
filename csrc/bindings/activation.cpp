#include "bindings/activation.h"

#include "activation/activation.h"
#include "cuda_context.h"
#include "torch_checks.h"

namespace vtk_torch {
namespace {

void check_input(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(on_kernel_device(t), name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.device() == like.device(), name, " is on ", t.device(), " but x is on ", like.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " has dtype ", t.scalar_type(), " but x has ",
              like.scalar_type());
  TORCH_CHECK(t.sizes() == like.sizes(), name, " must have x's shape ", like.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

at::Tensor run(const at::Tensor& x, const at::Tensor* dy, cudaError_t (*kernel)(const vtk::QuickGeluParams&, cudaStream_t),
               const char* op) {
  check_input(x, "x", x);
  if (dy) check_input(*dy, "dy", x);
  DeviceGuard guard(x);
  at::Tensor out = at::empty_like(x);
  vtk::QuickGeluParams p{};
  p.x = x.data_ptr();
  p.dy = dy ? dy->data_ptr() : nullptr;
  p.out = out.data_ptr();
  p.n = x.numel();
  p.dtype = kernel_dtype(x, "x");
  check_launch(kernel(p, current_stream(x)), op);
  return out;
}

at::Tensor quick_gelu_fwd(const at::Tensor& x) { return run(x, nullptr, vtk::quick_gelu_fwd, "quick_gelu_fwd"); }

at::Tensor quick_gelu_bwd(const at::Tensor& dy, const at::Tensor& x) {
  return run(x, &dy, vtk::quick_gelu_bwd, "quick_gelu_bwd");
}

}  // namespace

void bind_activation(pybind11::module_& m) {
  m.def("quick_gelu_fwd", &quick_gelu_fwd, "x * sigmoid(1.702 x), contiguous x", pybind11::arg("x"));
  m.def("quick_gelu_bwd", &quick_gelu_bwd, "d QuickGELU / dx given dy and x (both contiguous)", pybind11::arg("dy"),
        pybind11::arg("x"));
}

}  // namespace vtk_torch
