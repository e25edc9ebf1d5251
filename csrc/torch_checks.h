// Validation shared by every op's bindings: each failure names the argument.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include "common/dtype.cuh"

namespace vtk_torch {

inline vtk::DType kernel_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return vtk::DType::kFloat32;
    case at::kHalf: return vtk::DType::kFloat16;
    case at::kBFloat16: return vtk::DType::kBFloat16;
    default: TORCH_CHECK(false, name, " has dtype ", t.scalar_type(), "; the CUDA kernels take float32, float16, bfloat16");
  }
}

// Whether `t` lives where the kernels run: a CUDA tensor, or a CPU one when the kernels run on
// the CPU emulator (tools/cuda_emulator).
inline bool on_kernel_device(const at::Tensor& t) {
#ifdef VTK_CUDA_EMULATOR
  return t.is_cpu();
#else
  return t.is_cuda();
#endif
}

// A CUDA tensor of `like`'s dtype and device, `dims` dimensions, unit last stride.
inline void check_operand(const at::Tensor& t, const char* name, const at::Tensor& like, int64_t dims) {
  TORCH_CHECK(on_kernel_device(t), name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.device() == like.device(), name, " is on ", t.device(), " but the input is on ", like.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " has dtype ", t.scalar_type(), " but the input has ",
              like.scalar_type());
  TORCH_CHECK(t.dim() == dims, name, " must have ", dims, " dimensions, got ", t.sizes());
  // (A last dimension of size 1 has any stride: .contiguous() leaves it so.)
  TORCH_CHECK(t.numel() == 0 || t.size(-1) == 1 || t.stride(-1) == 1, name,
              " must have unit stride in its last dimension");
}

// Row-wise kernels launch up to one block per row on the grid's x axis (at most 2^31 - 1).
inline void check_grid_rows(int64_t rows, const char* name) {
  TORCH_CHECK(rows <= INT32_MAX, name, " has ", rows, " rows; the CUDA kernels take at most 2^31 - 1");
}

inline void check_optional(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& like, int64_t dims) {
  if (t.has_value()) check_operand(*t, name, like, dims);
}

inline const void* data_or_null(const std::optional<at::Tensor>& t) { return t ? t->data_ptr() : nullptr; }
inline int64_t row_stride_or_zero(const std::optional<at::Tensor>& t) { return t ? t->stride(0) : 0; }

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, " kernel launch failed: ", cudaGetErrorString(err));
}

}  // namespace vtk_torch
