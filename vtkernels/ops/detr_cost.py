"""DETR Hungarian-matching cost matrix (class + L1 + GIoU) in one fused pass.

``detr_match_cost`` returns, per image, the (Q, T) cost that ``scipy.optimize.linear_sum_assignment``
takes (see :mod:`vtkernels.reference.detr_cost` for the formula). It is computed under
``torch.no_grad`` semantics (matching is not differentiated) and behind the custom op
``vtkernels::detr_match_cost`` for the kernel backends.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from vtkernels._extension import kernel_functions
from vtkernels.backend import OpDispatcher
from vtkernels.ops import checks
from vtkernels.ops.registration import forward_call
from vtkernels.reference import detr_cost as reference_detr_cost


def _kernel_refusals(backend: str, logits: Tensor, **_) -> list[str]:
    if backend == "cuda" and logits.shape[0] > checks.MAX_GRID_Y:
        return [f"batch {logits.shape[0]} > {checks.MAX_GRID_Y} (one grid row per image)"]
    return []


dispatcher = OpDispatcher("detr_match_cost", gpu_preference=("triton", "cuda"), dtype_of="logits",
                          refusals=_kernel_refusals)


@torch.library.custom_op("vtkernels::detr_match_cost", mutates_args=())
def detr_match_cost_op(logits: Tensor, pred_boxes: Tensor, target_labels: Tensor, target_boxes: Tensor,
                       class_weight: float, bbox_weight: float, giou_weight: float, backend: str) -> Tensor:
    (forward,) = kernel_functions(backend, triton_module="vtkernels.triton.detr_cost", triton=("forward",),
                                  cuda=("detr_match_cost",))
    return forward(logits, pred_boxes, target_labels, target_boxes, class_weight, bbox_weight, giou_weight)


@detr_match_cost_op.register_fake
def _(logits, pred_boxes, target_labels, target_boxes, class_weight, bbox_weight, giou_weight, backend):
    return logits.new_empty(logits.shape[0], logits.shape[1], target_labels.shape[1], dtype=torch.float32)


call_detr_match_cost = forward_call(detr_match_cost_op)


def detr_match_cost(logits: Tensor, pred_boxes: Tensor, target_labels: Tensor, target_boxes: Tensor,
                    class_weight: float = 1.0, bbox_weight: float = 1.0, giou_weight: float = 1.0,
                    backend: Optional[str] = None) -> Tensor:
    """(B, Q, T) matching cost, float32 (float64 for float64 inputs on the reference).

    ``logits`` (B, Q, C) class logits (C includes DETR's no-object class); ``pred_boxes``
    (B, Q, 4) and ``target_boxes`` (B, T, 4) in cxcywh; ``target_labels`` (B, T) int class ids
    in [0, C). Targets are padded to a common T per image; ignore the padded columns.
    """
    checks.check_tensor("logits", logits, ndim=3)
    checks.check_tensor("pred_boxes", pred_boxes, ndim=3)
    checks.check_tensor("target_boxes", target_boxes, ndim=3)
    checks.check_tensor("target_labels", target_labels, dtypes=(torch.int64, torch.int32), ndim=2)
    checks.check_same_device("logits", logits, pred_boxes=pred_boxes, target_labels=target_labels,
                             target_boxes=target_boxes)
    checks.check_same_dtype("logits", logits, pred_boxes=pred_boxes, target_boxes=target_boxes)
    batch, n_queries, n_classes = logits.shape
    if n_classes == 0:
        raise ValueError(f"logits must have at least one class, got shape {tuple(logits.shape)}")
    checks.check_shape("pred_boxes", pred_boxes, (batch, n_queries, 4))
    checks.check_shape("target_boxes", target_boxes, (batch, target_labels.shape[1], 4))
    if target_labels.shape[0] != batch:
        raise ValueError(f"target_labels must have {batch} rows (one per image), "
                         f"got shape {tuple(target_labels.shape)}")
    checks.check_index_range("target_labels", target_labels, n_classes)
    chosen = dispatcher.choose(logits.device, backend, logits=logits)
    with torch.no_grad():
        if chosen == "reference":
            return reference_detr_cost.detr_match_cost(logits, pred_boxes, target_labels, target_boxes, class_weight,
                                                       bbox_weight, giou_weight)
        return call_detr_match_cost(checks.unit_stride(logits.detach()), checks.unit_stride(pred_boxes.detach()),
                                    target_labels.long().contiguous(), checks.unit_stride(target_boxes.detach()),
                                    float(class_weight), float(bbox_weight), float(giou_weight), chosen)


def selfcheck_cases(backend: str = "triton", dtypes=(torch.float32, torch.float16)):
    """Kernel-vs-reference checks of the (B, Q, T) cost for `python -m vtkernels selfcheck`."""
    from vtkernels.testing import assert_close, upcast, check_device

    def check(dtype):
        device = check_device()
        batch, queries, classes, targets = 2, 13, 9, 5

        def boxes(n):  # cxcywh inside the image
            return torch.cat([torch.rand(batch, n, 2, device=device) * 0.6 + 0.2,
                              torch.rand(batch, n, 2, device=device) * 0.3 + 0.05], -1).to(dtype)

        logits = torch.randn(batch, queries, classes, device=device).to(dtype)
        labels = torch.randint(0, classes, (batch, targets), device=device)
        problem = (logits, boxes(queries), labels, boxes(targets))
        out = detr_match_cost(*problem, 1.0, 5.0, 2.0, backend=backend)
        logits64, pred64, target64 = upcast(problem[0], problem[1], problem[3])
        expected = detr_match_cost(logits64, pred64, labels, target64, 1.0, 5.0, 2.0, backend="reference")
        same = detr_match_cost(*problem, 1.0, 5.0, 2.0, backend="reference")
        assert_close(out, expected, dtype, same_dtype_ref=same)

    for dtype in dtypes:
        yield f"2x13 queries, 5 targets {dtype}", (lambda d=dtype: check(d))
