"""Reference iGPT colour palette: uint8 RGB pixels <-> token ids of the nearest colour cluster.

iGPT (and HF ``ImageGPTImageProcessor``) maps a uint8 pixel ``p`` to ``p / 127.5 - 1`` in
[-1, 1] and gives it the id of the nearest cluster (squared Euclidean distance over R, G, B;
ties go to the lowest id). The inverse maps an id to ``rint(127.5 * (cluster + 1))`` as uint8.

Pixels are viewed as ``(B, N, 3)`` (N = H * W) whatever the image layout; see
:func:`vtkernels.ops.palette.palette_quantize` for the public function.
"""

from __future__ import annotations

import torch

# p / 127.5 - 1, written as a product so that every backend rounds the same way.
PIXEL_SCALE = 2.0 / 255.0


def pixels_to_unit(pixels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 pixels -> values in [-1, 1]."""
    return pixels.to(dtype) * torch.tensor(PIXEL_SCALE, dtype=dtype) - 1.0


def squared_distances(pixels: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) uint8 pixels, (K, 3) clusters -> (B, N, K) squared distances in at least fp32.

    Summed channel by channel, left to right (R, then G, then B), the order the kernels use.
    """
    compute = torch.promote_types(clusters.dtype, torch.float32)
    x = pixels_to_unit(pixels, compute)[..., None, :]  # (B, N, 1, 3)
    diff = x - clusters.to(compute)                    # (B, N, K, 3)
    return diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1] + diff[..., 2] * diff[..., 2]


def palette_quantize(pixels: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) uint8 pixels -> (B, N) int64 ids of the nearest cluster (lowest id on a tie)."""
    return squared_distances(pixels, clusters).argmin(-1)


def palette_dequantize(tokens: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
    """(B, N) ids -> (B, N, 3) uint8 pixels ``rint(127.5 * (cluster + 1))``, clamped to [0, 255]."""
    compute = torch.promote_types(clusters.dtype, torch.float32)
    colours = clusters.to(compute)[tokens.long()]
    return torch.round((colours + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)
