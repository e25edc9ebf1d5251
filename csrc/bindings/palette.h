// Torch-facing entry points of the iGPT palette op.
#pragma once

#include <torch/extension.h>

namespace vtk_torch {

void bind_palette(pybind11::module_& m);

}  // namespace vtk_torch
