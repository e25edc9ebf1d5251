// Error handling shared by every launcher: launchers return the launch's cudaError_t.
#pragma once

#include <cuda_runtime.h>

#define VTK_RETURN_IF_ERROR(expr)            \
  do {                                       \
    const cudaError_t vtk_err_ = (expr);     \
    if (vtk_err_ != cudaSuccess) return vtk_err_; \
  } while (0)

namespace vtk {

inline int ceil_div(long long a, long long b) { return static_cast<int>((a + b - 1) / b); }

}  // namespace vtk
