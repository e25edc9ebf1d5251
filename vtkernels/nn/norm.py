"""Drop-in norm modules: same constructor arguments and state_dict as torch.nn.LayerNorm."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from vtkernels.ops.norm import layer_norm, rms_norm


def _hidden_size(normalized_shape) -> int:
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if len(shape) != 1:
        raise ValueError(f"vtkernels norms normalize over the last dimension only, got normalized_shape={shape}")
    return shape[0]


def _cast(param: Optional[torch.Tensor], x: torch.Tensor) -> Optional[torch.Tensor]:
    # Parameters may be kept in fp32 while activations run in bf16/fp16 (mixed precision).
    return None if param is None else param.to(x.dtype)


class LayerNorm(nn.LayerNorm):
    """torch.nn.LayerNorm on the fused kernel; ``forward(x, residual)`` returns ``(LN(x + residual), x + residual)``."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None, backend: Optional[str] = None):
        _hidden_size(normalized_shape)
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device=device, dtype=dtype)
        self.backend = backend

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None):
        return layer_norm(x, _cast(self.weight, x), _cast(self.bias, x), self.eps, residual, self.backend)


class RMSNorm(nn.Module):
    """iGPT's norm ``x / sqrt(mean(x^2) + eps) * weight``; state_dict holds ``weight`` like torch.nn.RMSNorm."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 device=None, dtype=None, backend: Optional[str] = None):
        super().__init__()
        self.normalized_shape = (_hidden_size(normalized_shape),)
        self.eps = eps
        self.backend = backend
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(self.normalized_shape, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None):
        return rms_norm(x, _cast(self.weight, x), self.eps, residual, self.backend)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.weight is not None}"
