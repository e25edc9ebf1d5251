// The only torch-facing file of the extension besides cuda_context.cpp: validation, tensor
// allocation, Params filling, and the pybind11 module. Kernels live in csrc/<op>/ and know
// nothing of torch.
#include <torch/extension.h>

#include "bindings/norm.h"
#include "bindings/patch_embed.h"
#include "bindings/clip_loss.h"
#include "bindings/attention.h"
#include "bindings/palette.h"
#include "bindings/detr_cost.h"
#include "bindings/window_attention.h"
#include "bindings/patch_merging.h"
#include "bindings/activation.h"
#include "bindings/mlp.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vtkernels CUDA kernels";
  vtk_torch::bind_norm(m);
  vtk_torch::bind_patch_embed(m);
  vtk_torch::bind_clip_loss(m);
  vtk_torch::bind_attention(m);
  vtk_torch::bind_palette(m);
  vtk_torch::bind_detr_cost(m);
  vtk_torch::bind_window_attention(m);
  vtk_torch::bind_patch_merging(m);
  vtk_torch::bind_activation(m);
  vtk_torch::bind_mlp(m);
}
