// Torch-facing entry points of the QuickGELU activation op.
#pragma once

#include <torch/extension.h>

namespace vtk_torch {

void bind_activation(pybind11::module_& m);

}  // namespace vtk_torch
