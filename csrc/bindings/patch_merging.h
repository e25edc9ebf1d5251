// Torch-facing entry points of the fused Swin patch merging op.
#pragma once

#include <torch/extension.h>

namespace vtk_torch {

void bind_patch_merging(pybind11::module_& m);

}  // namespace vtk_torch
