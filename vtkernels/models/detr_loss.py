"""DETR set loss: Hungarian matching on the fused cost matrix, then class / L1 / GIoU losses.

Matching (no gradient): :func:`vtkernels.detr_match_cost` builds every image's (Q, T) cost in one
pass on the device (targets padded to a common T); one copy brings it to the host, where
``scipy.optimize.linear_sum_assignment`` solves each image. The losses follow HF's ``ImageLoss``
(facebookresearch/detr): cross-entropy with a down-weighted no-object class, L1 and 1 - GIoU on
the matched boxes divided by the number of target boxes, and the cardinality error (logged,
not differentiated). With decoder ``intermediate`` states the same losses are added per layer.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from vtkernels.models.boxes import cxcywh_to_xyxy, generalized_iou
from vtkernels.ops.detr_cost import detr_match_cost


def pad_targets(targets: Sequence[dict], device) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """list of {"class_labels": (n_i,), "boxes": (n_i, 4)} -> labels (B, T), boxes (B, T, 4), sizes."""
    sizes = [len(t["class_labels"]) for t in targets]
    width = max(sizes, default=0)
    labels = torch.zeros(len(targets), width, dtype=torch.long, device=device)
    boxes = torch.full((len(targets), width, 4), 0.5, device=device)  # padding: any valid box
    for i, t in enumerate(targets):
        labels[i, : sizes[i]] = t["class_labels"]
        boxes[i, : sizes[i]] = t["boxes"]
    return labels, boxes, sizes


@torch.no_grad()
def hungarian_match(logits: torch.Tensor, pred_boxes: torch.Tensor, targets: Sequence[dict], class_cost: float = 1.0,
                    bbox_cost: float = 5.0, giou_cost: float = 2.0, backend: Optional[str] = None
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image, (query indices, target indices) of the minimum-cost one-to-one matching."""
    from scipy.optimize import linear_sum_assignment

    labels, boxes, sizes = pad_targets(targets, logits.device)
    cost = detr_match_cost(logits, pred_boxes, labels, boxes.to(pred_boxes.dtype), class_cost, bbox_cost, giou_cost,
                           backend=backend).float().cpu()
    matches = []
    for i, n in enumerate(sizes):
        rows, cols = linear_sum_assignment(cost[i, :, :n].numpy())
        matches.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
    return matches


class DetrSetLoss(nn.Module):
    """HF ``ForObjectDetectionLoss`` for DETR: returns (weighted total, dict of the terms)."""

    def __init__(self, num_labels: int, eos_coefficient: float = 0.1, class_cost: float = 1.0, bbox_cost: float = 5.0,
                 giou_cost: float = 2.0, bbox_loss_coefficient: float = 5.0, giou_loss_coefficient: float = 2.0,
                 backend: Optional[str] = None):
        super().__init__()
        self.num_labels = num_labels
        self.costs = (class_cost, bbox_cost, giou_cost)
        self.weights = {"loss_ce": 1.0, "loss_bbox": bbox_loss_coefficient, "loss_giou": giou_loss_coefficient}
        self.backend = backend
        class_weight = torch.ones(num_labels + 1)
        class_weight[-1] = eos_coefficient
        self.register_buffer("class_weight", class_weight, persistent=False)

    def _terms(self, logits, pred_boxes, targets, num_boxes: float) -> dict:
        matches = hungarian_match(logits, pred_boxes, targets, *self.costs, backend=self.backend)
        batch_idx = torch.cat([torch.full_like(rows, i) for i, (rows, _) in enumerate(matches)]).to(logits.device)
        query_idx = torch.cat([rows for rows, _ in matches]).to(logits.device)
        matched_labels = torch.cat([t["class_labels"][cols.to(t["class_labels"].device)]
                                    for t, (_, cols) in zip(targets, matches)]).to(logits.device)
        target_classes = torch.full(logits.shape[:2], self.num_labels, dtype=torch.long, device=logits.device)
        target_classes[batch_idx, query_idx] = matched_labels
        compute = torch.promote_types(logits.dtype, torch.float32)
        loss_ce = nn.functional.cross_entropy(logits.transpose(1, 2).to(compute), target_classes,
                                              self.class_weight.to(logits.device, compute))
        src = pred_boxes[batch_idx, query_idx].to(compute)
        tgt = torch.cat([t["boxes"][cols.to(t["boxes"].device)] for t, (_, cols) in zip(targets, matches)])
        tgt = tgt.to(src.device, src.dtype)
        loss_bbox = (src - tgt).abs().sum() / num_boxes
        loss_giou = (1 - generalized_iou(cxcywh_to_xyxy(src), cxcywh_to_xyxy(tgt))).sum() / num_boxes
        with torch.no_grad():
            lengths = torch.as_tensor([len(t["class_labels"]) for t in targets], device=logits.device).float()
            predicted = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1).float()
            cardinality = (predicted - lengths).abs().mean()
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou, "cardinality_error": cardinality}

    def forward(self, logits: torch.Tensor, pred_boxes: torch.Tensor, targets: Sequence[dict],
                intermediate_logits: Optional[torch.Tensor] = None,
                intermediate_boxes: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict]:
        """``targets``: per image {"class_labels": (n,), "boxes": (n, 4) cxcywh in [0, 1]} (HF labels).

        ``intermediate_*`` (layers, B, Q, ...): auxiliary losses of the decoder layers before the last.
        """
        num_boxes = max(float(sum(len(t["class_labels"]) for t in targets)), 1.0)
        terms = self._terms(logits, pred_boxes, targets, num_boxes)
        if intermediate_logits is not None:
            for layer in range(intermediate_logits.shape[0] - 1):
                aux = self._terms(intermediate_logits[layer], intermediate_boxes[layer], targets, num_boxes)
                terms.update({f"{k}_{layer}": v for k, v in aux.items()})
        total = sum(value * self.weights[key.rsplit("_", 1)[0] if key[-1].isdigit() else key]
                    for key, value in terms.items() if not key.startswith("cardinality"))
        return total, terms

    @classmethod
    def from_hf_config(cls, hf_config, backend: Optional[str] = None) -> "DetrSetLoss":
        return cls(hf_config.num_labels, hf_config.eos_coefficient, hf_config.class_cost, hf_config.bbox_cost,
                   hf_config.giou_cost, hf_config.bbox_loss_coefficient, hf_config.giou_loss_coefficient, backend)
