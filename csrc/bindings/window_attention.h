// Torch-facing entry points of the Swin window attention op.
#pragma once

#include <torch/extension.h>

namespace vtk_torch {

void bind_window_attention(pybind11::module_& m);

}  // namespace vtk_torch
