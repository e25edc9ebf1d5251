// Torch-facing entry points of the patch embedding op.
#pragma once

#include <torch/extension.h>

namespace vtk_torch {

void bind_patch_embed(pybind11::module_& m);

}  // namespace vtk_torch
