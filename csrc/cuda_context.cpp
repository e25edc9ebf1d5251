#include "cuda_context.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAStream.h>

namespace vtk_torch {

cudaStream_t current_stream(const at::Tensor& tensor) {
  return at::cuda::getCurrentCUDAStream(tensor.device().index()).stream();
}

int sm_count(const at::Tensor& tensor) {
  return at::cuda::getDeviceProperties(tensor.device().index())->multiProcessorCount;
}

DeviceGuard::DeviceGuard(const at::Tensor& tensor) {
  cudaGetDevice(&previous_);
  cudaSetDevice(tensor.device().index());
}

DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0) cudaSetDevice(previous_);
}

}  // namespace vtk_torch
