"""Triton DETR matching cost: class, L1 and GIoU terms in one pass, (B, Q, T) fp32 out.

Grid: (query blocks, images). A program owns ``BLOCK_Q`` queries of one image:

1. softmax statistics of its logits rows (running max / sum over class chunks of ``BLOCK_C``),
   so probabilities are never written out;
2. its predicted boxes, as four (BLOCK_Q,) coordinate vectors and their corners and areas;
3. for each block of ``BLOCK_T`` targets: the logits at the target labels are gathered straight
   from global memory (``logits[q, label[t]]``, L2-resident), turned into probabilities with the
   row statistics, and the (BLOCK_Q, BLOCK_T) tile of L1 and GIoU is computed in registers and
   stored once. NaN / inf become the largest finite fp32, as in the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from vtkernels.triton.tiling import cdiv, next_power_of_2

FLOAT32_MAX = 3.4028234663852886e38


@triton.jit
def _corners(cx, cy, w, h):
    return cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h


@triton.jit
def detr_cost_kernel(
    LOGITS, PRED, LABELS, TARGET, COST,
    n_queries, n_classes, n_targets,
    stride_lb, stride_lq, stride_pb, stride_pq, stride_yb, stride_tb, stride_tt,
    class_weight, bbox_weight, giou_weight,
    BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr, BIG: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_ok = q < n_queries
    row = LOGITS + b * stride_lb + q.to(tl.int64)[:, None] * stride_lq  # class stride is 1

    # 1. softmax statistics per query row (online over class chunks)
    m = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_Q], tl.float32)
    for c0 in range(0, n_classes, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        x = tl.load(row + c[None, :], mask=q_ok[:, None] & (c < n_classes)[None, :], other=float("-inf"))
        x = x.to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # masked rows: avoid inf - inf
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe[:, None]), axis=1)
        m = m_new
    m = tl.where(m == float("-inf"), 0.0, m)
    inv_s = 1.0 / s

    # 2. predicted boxes
    pred = PRED + b * stride_pb + q.to(tl.int64) * stride_pq
    pcx = tl.load(pred, mask=q_ok, other=0.0).to(tl.float32)
    pcy = tl.load(pred + 1, mask=q_ok, other=0.0).to(tl.float32)
    pw = tl.load(pred + 2, mask=q_ok, other=0.0).to(tl.float32)
    ph = tl.load(pred + 3, mask=q_ok, other=0.0).to(tl.float32)
    px0, py0, px1, py1 = _corners(pcx, pcy, pw, ph)
    p_area = (px1 - px0) * (py1 - py0)

    # 3. target blocks
    for t0 in range(0, n_targets, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        t_ok = t < n_targets
        ok = q_ok[:, None] & t_ok[None, :]
        label = tl.load(LABELS + b * stride_yb + t, mask=t_ok, other=0).to(tl.int64)
        picked = tl.load(row + label[None, :], mask=ok, other=0.0).to(tl.float32)
        class_cost = -tl.exp(picked - m[:, None]) * inv_s[:, None]

        tgt = TARGET + b * stride_tb + t.to(tl.int64) * stride_tt
        tcx = tl.load(tgt, mask=t_ok, other=0.0).to(tl.float32)
        tcy = tl.load(tgt + 1, mask=t_ok, other=0.0).to(tl.float32)
        tw = tl.load(tgt + 2, mask=t_ok, other=0.0).to(tl.float32)
        th = tl.load(tgt + 3, mask=t_ok, other=0.0).to(tl.float32)
        l1 = (tl.abs(pcx[:, None] - tcx[None, :]) + tl.abs(pcy[:, None] - tcy[None, :])
              + tl.abs(pw[:, None] - tw[None, :]) + tl.abs(ph[:, None] - th[None, :]))

        tx0, ty0, tx1, ty1 = _corners(tcx, tcy, tw, th)
        t_area = (tx1 - tx0) * (ty1 - ty0)
        inter_w = tl.maximum(tl.minimum(px1[:, None], tx1[None, :]) - tl.maximum(px0[:, None], tx0[None, :]), 0.0)
        inter_h = tl.maximum(tl.minimum(py1[:, None], ty1[None, :]) - tl.maximum(py0[:, None], ty0[None, :]), 0.0)
        inter = inter_w * inter_h
        union = p_area[:, None] + t_area[None, :] - inter
        hull_w = tl.maximum(tl.maximum(px1[:, None], tx1[None, :]) - tl.minimum(px0[:, None], tx0[None, :]), 0.0)
        hull_h = tl.maximum(tl.maximum(py1[:, None], ty1[None, :]) - tl.minimum(py0[:, None], ty0[None, :]), 0.0)
        hull = hull_w * hull_h
        union = tl.where(ok, union, 1.0)  # masked lanes only: keep 0 / 0 out of them
        hull = tl.where(ok, hull, 1.0)
        giou = inter / union - (hull - union) / hull

        cost = bbox_weight * l1 + class_weight * class_cost - giou_weight * giou
        cost = tl.where((cost != cost) | (tl.abs(cost) == float("inf")), BIG, cost)
        out = COST + (b * n_queries + q.to(tl.int64))[:, None] * n_targets + t[None, :]
        tl.store(out, cost, mask=ok)


def launch_config(n_targets: int) -> dict:
    # (BLOCK_Q, BLOCK_T) tiles of <= 8 fp32 per thread (a dozen live temporaries): no spills on sm_90.
    block_t = min(32, max(16, next_power_of_2(n_targets)))
    return {"BLOCK_Q": 32, "BLOCK_C": 64, "BLOCK_T": block_t, "num_warps": 4}


def forward(logits, pred_boxes, target_labels, target_boxes, class_weight: float, bbox_weight: float,
            giou_weight: float) -> torch.Tensor:
    """logits (B, Q, C) with unit class stride; boxes (.., 4) with unit coordinate stride."""
    batch, n_queries, n_classes = logits.shape
    n_targets = target_labels.shape[1]
    cost = torch.empty(batch, n_queries, n_targets, device=logits.device, dtype=torch.float32)
    if cost.numel() == 0:
        return cost
    cfg = launch_config(n_targets)
    grid = (cdiv(n_queries, cfg["BLOCK_Q"]), batch)
    detr_cost_kernel[grid](
        logits, pred_boxes, target_labels, target_boxes, cost, n_queries, n_classes, n_targets,
        logits.stride(0), logits.stride(1), pred_boxes.stride(0), pred_boxes.stride(1), target_labels.stride(0),
        target_boxes.stride(0), target_boxes.stride(1), float(class_weight), float(bbox_weight), float(giou_weight),
        BIG=FLOAT32_MAX, **cfg,
    )
    return cost


def aot_configs():
    """COCO shapes: 100 queries, 92 classes, up to 64 targets per image."""
    for dtype in ("fp32", "bf16", "fp16"):
        cfg = launch_config(64)
        options = {"num_warps": cfg.pop("num_warps")}
        sig = {"LOGITS": f"*{dtype}", "PRED": f"*{dtype}", "LABELS": "*i64", "TARGET": f"*{dtype}", "COST": "*fp32",
               "n_queries": "i32", "n_classes": "i32", "n_targets": "i32", "stride_lb": "i32", "stride_lq": "i32",
               "stride_pb": "i32", "stride_pq": "i32", "stride_yb": "i32", "stride_tb": "i32", "stride_tt": "i32",
               "class_weight": "fp32", "bbox_weight": "fp32", "giou_weight": "fp32"}
        yield detr_cost_kernel, sig, {"BIG": FLOAT32_MAX, **cfg}, options
