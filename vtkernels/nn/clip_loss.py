"""CLIP's loss module: holds the learnable log-temperature like open_clip's model.logit_scale."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from vtkernels.ops.clip_loss import clip_loss


class ClipLoss(nn.Module):
    """``forward(image_features, text_features)`` -> the symmetric contrastive loss.

    ``logit_scale`` is a learnable 0-dim parameter initialised to ``log(1 / init_temperature)``
    (CLIP: log(1/0.07)); the scale used is ``min(exp(logit_scale), max_scale)``. Under
    torch.distributed each rank passes its local batch (see :func:`vtkernels.clip_loss`).
    """

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0, normalize: bool = True,
                 return_stats: bool = False, distributed: Optional[bool] = None, group=None,
                 backend: Optional[str] = None, device=None, dtype=None):
        super().__init__()
        if not init_temperature > 0:
            raise ValueError(f"init_temperature must be > 0, got {init_temperature}")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature), device=device,
                                                     dtype=dtype or torch.float32))
        self.max_scale = max_scale
        self.normalize = normalize
        self.return_stats = return_stats
        self.distributed = distributed
        self.group = group
        self.backend = backend

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor):
        return clip_loss(image_features, text_features, self.logit_scale, self.normalize, self.max_scale,
                         self.return_stats, self.backend, self.distributed, self.group)

    def extra_repr(self) -> str:
        return f"max_scale={self.max_scale}, normalize={self.normalize}"
