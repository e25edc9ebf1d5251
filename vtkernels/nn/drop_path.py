"""Stochastic depth (Huang et al. 2016; timm's ``DropPath``) on a residual branch."""

from __future__ import annotations

import torch


def drop_path(branch: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """In training, zero each sample's ``branch`` with probability ``p`` and scale the kept ones by
    1 / (1 - p); otherwise ``branch`` itself. Draws one Bernoulli per sample (dim 0), as timm does,
    so the same seed drops the same samples."""
    if p == 0.0 or not training:
        return branch
    keep = branch.new_empty((branch.shape[0],) + (1,) * (branch.dim() - 1)).bernoulli_(1.0 - p)
    return branch * keep / (1.0 - p)
