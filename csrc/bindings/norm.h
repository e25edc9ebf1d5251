// Torch-facing entry points of the norm op.
#pragma once

#include <torch/extension.h>

namespace vtk_torch {

void bind_norm(pybind11::module_& m);

}  // namespace vtk_torch
