"""Box-format helpers (DETR): conversions, areas, pairwise IoU / generalized IoU, batched.

Formats: ``cxcywh`` (centre x, centre y, width, height; DETR's predictions and targets,
normalized to the image) and ``xyxy`` (corners x0, y0, x1, y1). Every function works on
(..., 4) tensors; the pairwise ones take (..., N, 4) and (..., M, 4) and return (..., N, M).
"""

from __future__ import annotations

import torch


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def scale_boxes(boxes_xyxy: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
    """Normalized xyxy boxes (B, N, 4) -> pixels, with ``image_sizes`` (B, 2) as (height, width)."""
    height, width = image_sizes.unbind(-1)
    scale = torch.stack((width, height, width, height), dim=-1).to(boxes_xyxy.dtype)
    return boxes_xyxy * scale[:, None, :]


def box_area(boxes_xyxy: torch.Tensor) -> torch.Tensor:
    return (boxes_xyxy[..., 2] - boxes_xyxy[..., 0]) * (boxes_xyxy[..., 3] - boxes_xyxy[..., 1])


def pairwise_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """xyxy (..., N, 4), (..., M, 4) -> (IoU, union), each (..., N, M)."""
    a = boxes1[..., :, None, :]
    b = boxes2[..., None, :, :]
    wh = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1)[..., :, None] + box_area(boxes2)[..., None, :] - inter
    return inter / union, union


def pairwise_generalized_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Generalized IoU (Rezatofighi et al. 2019) of xyxy boxes: (..., N, 4), (..., M, 4) -> (..., N, M)."""
    iou, union = pairwise_iou(boxes1, boxes2)
    a = boxes1[..., :, None, :]
    b = boxes2[..., None, :, :]
    wh = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing


def generalized_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Element-wise GIoU of matched xyxy boxes (..., 4), (..., 4) -> (...)."""
    return pairwise_generalized_iou(boxes1[..., None, :], boxes2[..., None, :])[..., 0, 0]
