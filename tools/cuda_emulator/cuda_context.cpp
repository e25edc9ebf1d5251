// csrc/cuda_context.cpp for the CPU emulator: no streams or devices; the SM count of an H100 /
// H200, so the kernels' grid sizing is the GPU's.
#include "cuda_context.h"

namespace vtk_torch {

cudaStream_t current_stream(const at::Tensor&) { return nullptr; }

int sm_count(const at::Tensor&) { return 132; }

DeviceGuard::DeviceGuard(const at::Tensor&) {}

DeviceGuard::~DeviceGuard() {}

}  // namespace vtk_torch
