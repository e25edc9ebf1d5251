"""Reference LayerNorm / RMSNorm with optional fused residual add.

Statistics are computed in at least float32 (float64 inputs stay float64, so the tests can
evaluate the spec exactly); the output is cast back to the input dtype.
"""

from __future__ import annotations

from typing import Optional

import torch


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _normalize(h: torch.Tensor, weight, bias, eps: float, rms: bool) -> torch.Tensor:
    hf = h.to(_compute_dtype(h.dtype))
    if rms:
        y = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)
    else:
        centered = hf - hf.mean(-1, keepdim=True)
        y = centered * torch.rsqrt(centered.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(hf.dtype)
    if bias is not None:
        y = y + bias.to(hf.dtype)
    return y.to(h.dtype)


def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
               eps: float = 1e-5, residual: Optional[torch.Tensor] = None):
    """``LN(x)``; with ``residual``: ``h = x + residual`` and returns ``(LN(h), h)``."""
    h = x if residual is None else x + residual
    y = _normalize(h, weight, bias, eps, rms=False)
    return y if residual is None else (y, h)


def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor], eps: float = 1e-5,
             residual: Optional[torch.Tensor] = None):
    """``x / sqrt(mean(x^2) + eps) * weight``; with ``residual`` as :func:`layer_norm`."""
    h = x if residual is None else x + residual
    y = _normalize(h, weight, None, eps, rms=True)
    return y if residual is None else (y, h)
