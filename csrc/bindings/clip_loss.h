// Torch-facing entry points of the clip_loss op.
#pragma once

#include <torch/extension.h>

namespace vtk_torch {

void bind_clip_loss(pybind11::module_& m);

}  // namespace vtk_torch
