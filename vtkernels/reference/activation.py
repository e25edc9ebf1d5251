"""Reference activations and MLP: the spec of the fused kernels behind them.

Activations, by the names every vtkernels op and model uses:

* ``gelu``: exact GELU ``0.5 x (1 + erf(x / sqrt(2)))`` (timm's and HF's default);
* ``gelu_tanh``: ``0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))`` (HF ``gelu_new``);
* ``quick_gelu``: ``x * sigmoid(1.702 x)`` (OpenAI CLIP, iGPT; HF ``quick_gelu``);
* ``relu`` (DETR's feed-forward).

The MLP is ``fc2(act(fc1(x)))`` with ``torch.nn.functional.linear`` (``weight`` (out, in)).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

QUICK_GELU_ALPHA = 1.702
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu", "relu")


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(QUICK_GELU_ALPHA * x)


def activation(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "gelu":
        return F.gelu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if name == "quick_gelu":
        return quick_gelu(x)
    if name == "relu":
        return F.relu(x)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def mlp(x: torch.Tensor, fc1_weight: torch.Tensor, fc1_bias: Optional[torch.Tensor], fc2_weight: torch.Tensor,
        fc2_bias: Optional[torch.Tensor], activation_name: str) -> torch.Tensor:
    return F.linear(activation(F.linear(x, fc1_weight, fc1_bias), activation_name), fc2_weight, fc2_bias)
