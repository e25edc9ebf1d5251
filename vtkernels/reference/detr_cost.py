"""Reference DETR matching cost (HF / facebookresearch ``HungarianMatcher``), batched per image.

For image b, query q and target t (boxes in cxcywh)::

    cost[b, q, t] = bbox_weight  * || pred_box[b, q] - target_box[b, t] ||_1
                  - class_weight * softmax(logits[b, q])[target_label[b, t]]
                  - giou_weight  * GIoU(xyxy(pred_box[b, q]), xyxy(target_box[b, t]))

NaN and +-inf become the largest finite float32 (so a broken prediction is matched last, as
in HF). Targets are padded to a common T per image; the caller ignores the padded columns.
Computed in at least float32 (float64 stays float64); the result is float32 unless float64.
"""

from __future__ import annotations

import torch


def detr_match_cost(logits: torch.Tensor, pred_boxes: torch.Tensor, target_labels: torch.Tensor,
                    target_boxes: torch.Tensor, class_weight: float = 1.0, bbox_weight: float = 1.0,
                    giou_weight: float = 1.0) -> torch.Tensor:
    """logits (B, Q, C), pred_boxes (B, Q, 4), target_labels (B, T), target_boxes (B, T, 4) -> (B, Q, T)."""
    from vtkernels.models.boxes import cxcywh_to_xyxy, pairwise_generalized_iou  # lazy: no import cycle

    compute = torch.promote_types(logits.dtype, torch.float32)
    prob = logits.to(compute).softmax(-1)
    labels = target_labels.long()[:, None, :].expand(-1, logits.shape[1], -1)
    class_cost = -prob.gather(-1, labels)
    pred, target = pred_boxes.to(compute), target_boxes.to(compute)
    l1 = (pred[:, :, None, :] - target[:, None, :, :]).abs().sum(-1)
    giou = pairwise_generalized_iou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(target))
    cost = bbox_weight * l1 + class_weight * class_cost - giou_weight * giou
    big = torch.finfo(torch.float32).max
    return torch.nan_to_num(cost, nan=big, posinf=big, neginf=big)
