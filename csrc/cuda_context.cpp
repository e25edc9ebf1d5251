#include "cuda_context.h"

// Only c10's stream header and the CUDA runtime: ATen/cuda/CUDAContext.h pulls in the cuBLAS and
// cuSPARSE headers, which a minimal CUDA toolkit lacks.
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

namespace vtk_torch {

cudaStream_t current_stream(const at::Tensor& tensor) {
  return c10::cuda::getCurrentCUDAStream(tensor.device().index()).stream();
}

int sm_count(const at::Tensor& tensor) {
  int count = 0;
  cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, tensor.device().index());
  return count;
}

DeviceGuard::DeviceGuard(const at::Tensor& tensor) {
  cudaGetDevice(&previous_);
  cudaSetDevice(tensor.device().index());
}

DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0) cudaSetDevice(previous_);
}

}  // namespace vtk_torch
