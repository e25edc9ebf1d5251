// DETR matching cost (see vtkernels/reference/detr_cost.py for the formula).
//
// Grid: (query tiles of kQueries, images); block: kQueries warps. Phase 1: warp w computes the
// softmax statistics (max, 1 / sum exp) of query w's logits row and stages its box corners in
// shared memory. Phase 2: the block walks the (kQueries x T) tile, one cost per thread per step:
// the probability of the target's label is one gathered logit turned into a probability with
// the row statistics; L1 and GIoU come from the staged corners. NaN / inf -> FLT_MAX.
#include "detr_cost/detr_cost.h"

#include <cfloat>

#include "common/launch.h"

namespace vtk {
namespace {

constexpr int kQueries = 8;  // queries (= warps) per block
constexpr int kThreads = 32 * kQueries;

struct Box {
  float cx, cy, w, h, x0, y0, x1, y1, area;
};

template <typename T>
__device__ __forceinline__ Box load_box(const T* ptr) {
  Box b;
  b.cx = to_float(ptr[0]);
  b.cy = to_float(ptr[1]);
  b.w = to_float(ptr[2]);
  b.h = to_float(ptr[3]);
  b.x0 = b.cx - 0.5f * b.w;
  b.y0 = b.cy - 0.5f * b.h;
  b.x1 = b.cx + 0.5f * b.w;
  b.y1 = b.cy + 0.5f * b.h;
  b.area = (b.x1 - b.x0) * (b.y1 - b.y0);
  return b;
}

__device__ __forceinline__ float generalized_iou(const Box& a, const Box& b) {
  const float inter = fmaxf(fminf(a.x1, b.x1) - fmaxf(a.x0, b.x0), 0.f) * fmaxf(fminf(a.y1, b.y1) - fmaxf(a.y0, b.y0), 0.f);
  const float uni = a.area + b.area - inter;
  const float hull = fmaxf(fmaxf(a.x1, b.x1) - fminf(a.x0, b.x0), 0.f) * fmaxf(fmaxf(a.y1, b.y1) - fminf(a.y0, b.y0), 0.f);
  return inter / uni - (hull - uni) / hull;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) detr_cost_kernel(DetrCostParams p) {
  __shared__ float row_max[kQueries], row_inv_sum[kQueries];
  __shared__ Box boxes[kQueries];
  const int b = blockIdx.y;
  const int q0 = blockIdx.x * kQueries;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const T* logits = static_cast<const T*>(p.logits) + b * p.logits_stride_b;

  // Phase 1: softmax statistics and box of query q0 + warp.
  const int q = q0 + warp;
  if (q < p.n_queries) {
    const T* row = logits + q * p.logits_stride_q;
    float m = -__int_as_float(0x7f800000);  // -inf
    for (int c = lane; c < p.n_classes; c += 32) m = fmaxf(m, to_float(row[c]));
    for (int offset = 16; offset > 0; offset /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
    float s = 0.f;
    for (int c = lane; c < p.n_classes; c += 32) s += expf(to_float(row[c]) - m);
    for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffffu, s, offset);
    if (lane == 0) {
      row_max[warp] = m;
      row_inv_sum[warp] = 1.f / s;
      boxes[warp] = load_box(static_cast<const T*>(p.pred_boxes) + b * p.pred_stride_b + q * p.pred_stride_q);
    }
  }
  __syncthreads();

  // Phase 2: the (kQueries x T) tile of costs.
  const int rows = min(kQueries, p.n_queries - q0);
  const int64_t* labels = p.target_labels + static_cast<int64_t>(b) * p.n_targets;
  const T* targets = static_cast<const T*>(p.target_boxes) + b * p.target_stride_b;
  for (int i = threadIdx.x; i < rows * p.n_targets; i += kThreads) {
    const int r = i / p.n_targets, t = i % p.n_targets;
    const Box pred = boxes[r];
    const Box target = load_box(targets + t * p.target_stride_t);
    const int64_t label = labels[t];  // the op checks the range; an invalid id gives FLT_MAX, never a wild read
    const float picked =
        (label >= 0 && label < p.n_classes) ? to_float(logits[(q0 + r) * p.logits_stride_q + label]) : NAN;
    const float prob = expf(picked - row_max[r]) * row_inv_sum[r];
    const float l1 = fabsf(pred.cx - target.cx) + fabsf(pred.cy - target.cy) + fabsf(pred.w - target.w) +
                     fabsf(pred.h - target.h);
    float cost = p.bbox_weight * l1 - p.class_weight * prob - p.giou_weight * generalized_iou(pred, target);
    if (!isfinite(cost)) cost = FLT_MAX;
    p.cost[(static_cast<int64_t>(b) * p.n_queries + q0 + r) * p.n_targets + t] = cost;
  }
}

}  // namespace

cudaError_t detr_match_cost(const DetrCostParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.n_queries == 0 || p.n_targets == 0) return cudaSuccess;
  const dim3 grid(ceil_div(p.n_queries, kQueries), static_cast<unsigned>(p.batch));
  VTK_DISPATCH_DTYPE(p.dtype, [&] { detr_cost_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(p); });
  return cudaGetLastError();
}

}  // namespace vtk
