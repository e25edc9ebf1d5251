// Torch-facing entry points of the attention op.
#pragma once

#include <torch/extension.h>

namespace vtk_torch {

void bind_attention(pybind11::module_& m);

}  // namespace vtk_torch
