"""Reference activations with a fused kernel behind them.

QuickGELU, OpenAI CLIP's and iGPT's MLP activation (HF ``quick_gelu``): ``x * sigmoid(1.702 x)``.
"""

from __future__ import annotations

import torch

QUICK_GELU_ALPHA = 1.702


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(QUICK_GELU_ALPHA * x)
