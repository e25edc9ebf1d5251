// DETR Hungarian-matching cost (class + L1 + GIoU) in one pass: parameters and launcher.
// Plain C++ + CUDA runtime only (no torch), so nvcc alone compiles the kernels.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "common/dtype.cuh"

namespace vtk {

// logits (B, Q, C), pred_boxes (B, Q, 4), target_boxes (B, T, 4): unit last stride, batch and
// row strides in elements; target_labels (B, T) int64 contiguous; cost (B, Q, T) fp32 contiguous.
struct DetrCostParams {
  const void* logits;
  const void* pred_boxes;
  const int64_t* target_labels;
  const void* target_boxes;
  float* cost;
  int batch, n_queries, n_classes, n_targets;
  int64_t logits_stride_b, logits_stride_q, pred_stride_b, pred_stride_q, target_stride_b, target_stride_t;
  float class_weight, bbox_weight, giou_weight;
  DType dtype;
};

cudaError_t detr_match_cost(const DetrCostParams& p, cudaStream_t stream);

}  // namespace vtk
