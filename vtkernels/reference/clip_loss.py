"""Reference CLIP contrastive loss: the usual path, written for clarity (the executable spec).

``logits = min(exp(logit_scale), max_scale) * normalize(image) @ normalize(text)^T`` and the
loss is the symmetric cross-entropy ``(CE(logits, arange) + CE(logits^T, arange)) / 2``; this
materializes the n x n logits. It runs in the features' dtype (float64 inputs give the exact
answer the tests compare against).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class ClipLossOutput(NamedTuple):
    """``clip_loss(..., return_stats=True)``: the loss and detached statistics.

    ``image_to_text_accuracy``: fraction of images whose own text has the highest logit of the
    row (a tie with another text counts as a hit); ``text_to_image_accuracy`` the same over columns; ``image_logsumexp`` (n,) the
    logsumexp of each logits row, ``text_logsumexp`` (n,) of each column.
    """

    loss: torch.Tensor
    image_to_text_accuracy: torch.Tensor
    text_to_image_accuracy: torch.Tensor
    image_logsumexp: torch.Tensor
    text_logsumexp: torch.Tensor


def clip_scale(logit_scale: torch.Tensor, max_scale: float) -> torch.Tensor:
    """CLIP's temperature: ``min(exp(logit_scale), max_scale)`` (zero gradient once clamped)."""
    return logit_scale.exp().clamp(max=max_scale)


def clip_logits(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                normalize: bool = True, max_scale: float = 100.0) -> torch.Tensor:
    """The n x n logits: row i holds image i against every text."""
    if normalize:
        image_features = F.normalize(image_features, dim=-1)
        text_features = F.normalize(text_features, dim=-1)
    scale = clip_scale(logit_scale, max_scale).to(image_features.dtype)
    return scale * image_features @ text_features.T


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              normalize: bool = True, max_scale: float = 100.0, return_stats: bool = False):
    """Symmetric cross-entropy of matching image i with text i; see :class:`ClipLossOutput`."""
    logits = clip_logits(image_features, text_features, logit_scale, normalize, max_scale)
    labels = torch.arange(logits.shape[0], device=logits.device)
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    if not return_stats:
        return loss
    with torch.no_grad():  # a hit: the positive's logit is a maximum of its row / column (ties count)
        positive = logits.diagonal()
        acc_i2t = (positive >= logits.amax(1)).float().mean() if len(labels) else logits.new_tensor(float("nan"))
        acc_t2i = (positive >= logits.amax(0)).float().mean() if len(labels) else logits.new_tensor(float("nan"))
        return ClipLossOutput(loss, acc_i2t, acc_t2i, logits.logsumexp(1), logits.logsumexp(0))
