// The only torch-facing file of the extension besides cuda_context.cpp: validation, tensor
// allocation, Params filling, and the pybind11 module. Kernels live in csrc/<op>/ and know
// nothing of torch.
#include <torch/extension.h>

#include "bindings/norm.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vtkernels CUDA kernels";
  vtk_torch::bind_norm(m);
}
