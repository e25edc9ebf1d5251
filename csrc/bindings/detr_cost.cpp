#include "bindings/detr_cost.h"

#include "cuda_context.h"
#include "detr_cost/detr_cost.h"
#include "torch_checks.h"

namespace vtk_torch {
namespace {

at::Tensor detr_match_cost(const at::Tensor& logits, const at::Tensor& pred_boxes, const at::Tensor& target_labels,
                           const at::Tensor& target_boxes, double class_weight, double bbox_weight,
                           double giou_weight) {
  check_operand(logits, "logits", logits, 3);
  check_operand(pred_boxes, "pred_boxes", logits, 3);
  check_operand(target_boxes, "target_boxes", logits, 3);
  const int64_t batch = logits.size(0), queries = logits.size(1), classes = logits.size(2);
  TORCH_CHECK(classes > 0, "logits must have at least one class, got ", logits.sizes());
  TORCH_CHECK(on_kernel_device(target_labels) && target_labels.device() == logits.device(),
              "target_labels must be a CUDA tensor on ", logits.device());
  TORCH_CHECK(target_labels.scalar_type() == at::kLong && target_labels.dim() == 2 && target_labels.is_contiguous() &&
                  target_labels.size(0) == batch,
              "target_labels must be a contiguous int64 (", batch, ", T) tensor, got ", target_labels.sizes());
  const int64_t targets = target_labels.size(1);
  TORCH_CHECK(pred_boxes.size(0) == batch && pred_boxes.size(1) == queries && pred_boxes.size(2) == 4,
              "pred_boxes must have shape (", batch, ", ", queries, ", 4), got ", pred_boxes.sizes());
  TORCH_CHECK(target_boxes.size(0) == batch && target_boxes.size(1) == targets && target_boxes.size(2) == 4,
              "target_boxes must have shape (", batch, ", ", targets, ", 4), got ", target_boxes.sizes());
  TORCH_CHECK(batch <= 65535 && queries <= INT32_MAX && classes <= INT32_MAX && targets <= INT32_MAX,
              "detr_match_cost: sizes too large for the CUDA kernel");

  DeviceGuard guard(logits);
  at::Tensor cost = at::empty({batch, queries, targets}, logits.options().dtype(at::kFloat));
  vtk::DetrCostParams p{};
  p.logits = logits.data_ptr();
  p.pred_boxes = pred_boxes.data_ptr();
  p.target_labels = target_labels.data_ptr<int64_t>();
  p.target_boxes = target_boxes.data_ptr();
  p.cost = cost.data_ptr<float>();
  p.batch = static_cast<int>(batch);
  p.n_queries = static_cast<int>(queries);
  p.n_classes = static_cast<int>(classes);
  p.n_targets = static_cast<int>(targets);
  p.logits_stride_b = logits.stride(0);
  p.logits_stride_q = logits.stride(1);
  p.pred_stride_b = pred_boxes.stride(0);
  p.pred_stride_q = pred_boxes.stride(1);
  p.target_stride_b = target_boxes.stride(0);
  p.target_stride_t = target_boxes.stride(1);
  p.class_weight = static_cast<float>(class_weight);
  p.bbox_weight = static_cast<float>(bbox_weight);
  p.giou_weight = static_cast<float>(giou_weight);
  p.dtype = kernel_dtype(logits, "logits");
  check_launch(vtk::detr_match_cost(p, current_stream(logits)), "detr_match_cost");
  return cost;
}

}  // namespace

void bind_detr_cost(pybind11::module_& m) {
  m.def("detr_match_cost", &detr_match_cost, "DETR matching cost (B, Q, T): class + L1 + GIoU terms",
        pybind11::arg("logits"), pybind11::arg("pred_boxes"), pybind11::arg("target_labels"),
        pybind11::arg("target_boxes"), pybind11::arg("class_weight"), pybind11::arg("bbox_weight"),
        pybind11::arg("giou_weight"));
}

}  // namespace vtk_torch
