// Torch-facing entry points of the MLP op's fused GEMMs.
#pragma once

#include <torch/extension.h>

namespace vtk_torch {

void bind_mlp(pybind11::module_& m);

}  // namespace vtk_torch
