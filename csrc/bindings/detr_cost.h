// Torch-facing entry point of the DETR matching-cost op.
#pragma once

#include <torch/extension.h>

namespace vtk_torch {

void bind_detr_cost(pybind11::module_& m);

}  // namespace vtk_torch
