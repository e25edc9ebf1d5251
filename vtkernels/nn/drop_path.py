"""Stochastic depth (Huang et al. 2016; timm's ``DropPath``) on a residual branch."""

from __future__ import annotations

import torch


def drop_path(branch: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """In training, zero each sample's ``branch`` with probability ``p`` and scale the kept ones by
    1 / (1 - p); otherwise ``branch`` itself. timm's arithmetic: one Bernoulli per sample (dim 0),
    the scale applied to that per-sample factor (one full-size multiply, rounded as timm rounds in
    16-bit), so the same seed gives timm's output bit for bit; p = 1 drops everything."""
    if p == 0.0 or not training:
        return branch
    keep = branch.new_empty((branch.shape[0],) + (1,) * (branch.dim() - 1)).bernoulli_(1.0 - p)
    if p < 1.0:
        keep.div_(1.0 - p)
    return branch * keep
