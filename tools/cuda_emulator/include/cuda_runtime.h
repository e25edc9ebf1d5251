// The CUDA runtime as the kernels and bindings use it, for the CPU emulator (emulator.h runs the
// kernels). Only what csrc/ calls; device queries answer as an H100 / H200 would.
#pragma once

#include "cuda_qualifiers.h"

#include <cstddef>
#include <cstdint>

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9, cudaErrorLaunchFailure = 719 };
using cudaStream_t = void*;

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount, cudaDevAttrMaxSharedMemoryPerBlockOptin };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };

struct cudaFuncAttributes {
  size_t sharedSizeBytes = 0;  // unknown here: the emulator cannot size a kernel's static shared memory
  int numRegs = 0;
};

namespace vtk_emu {
// The error of the last launch, as cudaGetLastError reports it (and clears).
inline thread_local cudaError_t last_error = cudaSuccess;
}  // namespace vtk_emu

inline cudaError_t cudaGetLastError() {
  const cudaError_t err = vtk_emu::last_error;
  vtk_emu::last_error = cudaSuccess;
  return err;
}

inline const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "the emulated kernel failed (trap, barrier deadlock or too much shared memory; see stderr)";
  }
}

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  *value = attr == cudaDevAttrMultiProcessorCount ? 132 : 232448;  // H100 SXM / H200
  return cudaSuccess;
}

template <typename F>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, F) {
  *attributes = cudaFuncAttributes{};
  return cudaSuccess;
}

template <typename F>
cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) {
  return cudaSuccess;
}
