// The few torch-facing helpers that need c10/cuda. Kept apart from bindings.cpp because CPU
// builds of torch lack c10/cuda's generated headers: everything else passes `g++ -fsyntax-only`
// against CPU torch in CI.
#pragma once

#include <ATen/core/Tensor.h>
#include <cuda_runtime.h>

namespace vtk_torch {

// The current PyTorch stream of the tensor's device.
cudaStream_t current_stream(const at::Tensor& tensor);

// Number of streaming multiprocessors of the tensor's device.
int sm_count(const at::Tensor& tensor);

// Makes the tensor's device current for the guard's lifetime.
class DeviceGuard {
 public:
  explicit DeviceGuard(const at::Tensor& tensor);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

}  // namespace vtk_torch
