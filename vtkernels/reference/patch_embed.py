"""Reference patch embedding: the timm / HF path (Conv2d, flatten, cat cls, add pos), the spec.

``images`` is (B, C, H, W), or (B, H, W, C) with ``channels_last``; uint8 images are always
(B, H, W, C). Normalization (uint8: ``(u8 / 255 - mean) / std`` like torchvision ToTensor +
Normalize; float: ``(x - mean) / std``) is computed in ``promote(weight.dtype, float32)`` and the
result is cast to ``weight.dtype`` before the convolution, as a data loader feeding a bf16 model
would do. Without normalization, float images go into the convolution as they are.

``pos_embed`` follows timm: (1, N + 1, D) (or (N + 1, D)) with a cls token adds ``pos[0]`` to the
cls row; (1, N, D) adds to the patch tokens only (timm's ``no_embed_class``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def images_as_nchw(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """(B, C, H, W) view of the images (uint8 and ``channels_last`` inputs are (B, H, W, C))."""
    if images.dtype == torch.uint8 or channels_last:
        return images.permute(0, 3, 1, 2)
    return images


def normalized_images(images: torch.Tensor, dtype: torch.dtype, channels_last: bool = False,
                      mean: Optional[torch.Tensor] = None, std: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The (B, C, H, W) images the convolution sees, in ``dtype``."""
    x = images_as_nchw(images, channels_last)
    if images.dtype != torch.uint8 and mean is None and std is None:
        return x
    compute = _compute_dtype(dtype)
    x = x.to(compute)
    if images.dtype == torch.uint8:
        x = x / 255
    if mean is not None:
        x = x - mean.to(compute)[:, None, None]
    if std is not None:
        x = x / std.to(compute)[:, None, None]
    return x.to(dtype)


def patch_embed(images: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], patch_size: int,
                cls_token: Optional[torch.Tensor] = None, pos_embed: Optional[torch.Tensor] = None,
                mean: Optional[torch.Tensor] = None, std: Optional[torch.Tensor] = None,
                channels_last: bool = False) -> torch.Tensor:
    """Tokens (B, [1 +] N, D) with N = (H // p) * (W // p), in ``weight.dtype``."""
    x = normalized_images(images, weight.dtype, channels_last, mean, std)
    tokens = F.conv2d(x, weight, bias, stride=patch_size).flatten(2).transpose(1, 2)  # (B, N, D)
    batch, num_patches, dim = tokens.shape
    pos = None if pos_embed is None else pos_embed.reshape(-1, dim)
    if pos is not None and pos.shape[0] == num_patches:
        tokens = tokens + pos  # no_embed_class: the cls token (if any) gets no position
        pos = None
    if cls_token is not None:
        tokens = torch.cat([cls_token.reshape(1, 1, dim).expand(batch, 1, dim), tokens], dim=1)
    if pos is not None:
        tokens = tokens + pos
    return tokens


def resample_pos_embed(pos_embed: torch.Tensor, new_grid, old_grid=None, num_prefix_tokens: int = 1,
                       antialias: bool = True, mode: str = "bicubic") -> torch.Tensor:
    """Position embedding (1, prefix + Ho*Wo, D) or (prefix + Ho*Wo, D) resampled to ``new_grid``.

    ``antialias=True`` matches timm's ``resample_abs_pos_embed``; ``antialias=False`` matches HF
    transformers' ``interpolate_pos_encoding``. Interpolates in float32 (float64 stays float64)
    and returns ``pos_embed.dtype``. ``old_grid`` defaults to the square grid of the tokens.
    """
    squeeze = pos_embed.dim() == 2
    pos = pos_embed.unsqueeze(0) if squeeze else pos_embed
    if pos.dim() != 3 or pos.shape[0] != 1:
        raise ValueError(f"pos_embed must have shape (1, L, D) or (L, D), got {tuple(pos_embed.shape)}")
    new_grid = (new_grid, new_grid) if isinstance(new_grid, int) else tuple(new_grid)
    num_grid_tokens = pos.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = int(round(num_grid_tokens ** 0.5))
        old_grid = (side, side)
    old_grid = (old_grid, old_grid) if isinstance(old_grid, int) else tuple(old_grid)
    if old_grid[0] * old_grid[1] != num_grid_tokens:
        raise ValueError(f"old_grid {old_grid} does not hold the {num_grid_tokens} grid tokens of pos_embed")
    if new_grid == old_grid:
        return pos_embed
    dim = pos.shape[-1]
    prefix, grid = pos[:, :num_prefix_tokens], pos[:, num_prefix_tokens:]
    grid = grid.to(_compute_dtype(pos.dtype)).reshape(1, *old_grid, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_grid, mode=mode, antialias=antialias, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos.dtype)
    out = torch.cat([prefix, grid], dim=1)
    return out.squeeze(0) if squeeze else out
