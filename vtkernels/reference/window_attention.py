"""Reference Swin (shifted-)window attention and patch merging: the paper's procedure, step by step.

Shapes: ``qkv`` is (B, H, W, 3C) token-major as the qkv Linear writes it, channels ordered
(3, heads, head_dim) like timm's ``qkv.reshape(..., 3, num_heads, head_dim)``; the output is
(B, H, W, C) in image order, ready for the proj Linear.

The procedure (timm's SwinTransformerBlock; HF differs only in padding before the roll):

    roll by (-shift, -shift)  ->  pad bottom/right to a multiple of the window  ->
    partition into windows    ->  softmax(q k^T * scale + bias[rel_index] + shift_mask) v  ->
    reverse the partition     ->  crop the padding  ->  roll back by (+shift, +shift)

Padded tokens are those timm/HF create by zero-padding the *input* of the qkv Linear, so their
q/k/v equal the Linear's bias: pass it as ``pad_qkv`` (None means zeros, a Linear without bias).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def effective_window(height: int, width: int, window_size: int, shift_size: int) -> tuple[int, int]:
    """(window, shift) actually used: a window that does not fit the map shrinks to it, unshifted.

    Rule of HF's SwinLayer and timm's SwinTransformerBlock (before per-axis windows): if
    ``min(H, W) <= window_size`` the window becomes ``min(H, W)`` and the shift 0.
    """
    if min(height, width) <= window_size:
        return max(1, min(height, width)), 0
    return window_size, shift_size


def relative_position_index(window: int, table_window: Optional[int] = None) -> torch.Tensor:
    """(N, N) index into the ((2Mt-1)^2, heads) table for a window of M = ``window`` tokens a side.

    Token i at (r_i, c_i) attends to token j at (r_j, c_j); its bias sits at row
    ``(r_i - r_j + Mt - 1) * (2Mt - 1) + (c_i - c_j + Mt - 1)`` of the table built for windows of
    Mt = ``table_window`` (defaults to M; a shrunk window reads the central part of the table).
    """
    table_window = window if table_window is None else table_window
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]  # 2, N, N
    return (rel[0] + table_window - 1) * (2 * table_window - 1) + (rel[1] + table_window - 1)


def shift_mask(height_pad: int, width_pad: int, window: int, shift: int, mask_value: float = -100.0,
               device=None, dtype=torch.float32) -> torch.Tensor:
    """(nW, N, N) additive mask: ``mask_value`` between tokens of different shift regions, else 0.

    After the roll, each axis of the padded map has three regions, [0, P - M), [P - M, P - shift)
    and [P - shift, P); tokens from different regions were not neighbours before the roll.
    """
    rows = torch.arange(height_pad, device=device)
    cols = torch.arange(width_pad, device=device)
    row_region = (rows >= height_pad - window).long() + (rows >= height_pad - shift).long()
    col_region = (cols >= width_pad - window).long() + (cols >= width_pad - shift).long()
    region = (row_region[:, None] * 3 + col_region[None, :])[None, :, :, None]
    region = window_partition(region, window).reshape(-1, window * window)  # nW, N
    different = region[:, None, :] != region[:, :, None]
    zeros = torch.zeros(different.shape, device=device, dtype=dtype)
    return zeros.masked_fill(different, mask_value)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, Hp, Wp, C) -> (B * nW, M, M, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """(B * nW, M, M, C) -> (B, H, W, C), the inverse of :func:`window_partition`."""
    c = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def _pad(x: torch.Tensor, pad_h: int, pad_w: int, pad_qkv: Optional[torch.Tensor]) -> torch.Tensor:
    """Pads (B, H, W, 3C) at the bottom/right with the padded tokens' qkv (zeros if None)."""
    if pad_h == 0 and pad_w == 0:
        return x
    if pad_qkv is None:
        return F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    b, h, w, c3 = x.shape
    fill = pad_qkv.to(x.dtype)
    x = torch.cat([x, fill.expand(b, h, pad_w, c3)], dim=2)
    return torch.cat([x, fill.expand(b, pad_h, w + pad_w, c3)], dim=1)


def window_attention(qkv: torch.Tensor, rel_pos_table: torch.Tensor, num_heads: int, window_size: int,
                     shift_size: int = 0, scale: Optional[float] = None, mask_value: float = -100.0,
                     pad_qkv: Optional[torch.Tensor] = None, pad_first: bool = False) -> torch.Tensor:
    """Swin window attention on (B, H, W, 3C) -> (B, H, W, C); see the module docstring.

    ``pad_first=True`` pads before the roll (HF transformers' SwinLayer); the default rolls first
    (timm). Scores and softmax are computed in at least float32, products in the input dtype.
    """
    b, height, width, c3 = qkv.shape
    channels = c3 // 3
    head_dim = channels // num_heads
    scale = head_dim ** -0.5 if scale is None else scale
    window, shift = effective_window(height, width, window_size, shift_size)
    height_pad, width_pad = math.ceil(height / window) * window, math.ceil(width / window) * window
    pad_h, pad_w = height_pad - height, width_pad - width
    tokens = window * window

    x = qkv
    if pad_first:
        x = _pad(x, pad_h, pad_w, pad_qkv)
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    if not pad_first:
        x = _pad(x, pad_h, pad_w, pad_qkv)
    windows = window_partition(x, window).reshape(-1, tokens, 3, num_heads, head_dim)
    q, k, v = windows.permute(2, 0, 3, 1, 4).unbind(0)  # each (B * nW, heads, N, head_dim)

    compute = torch.promote_types(qkv.dtype, torch.float32)
    scores = (q @ k.transpose(-2, -1)).to(compute) * scale
    index = relative_position_index(window, window_size).to(qkv.device)
    bias = rel_pos_table[index.reshape(-1)].reshape(tokens, tokens, num_heads).permute(2, 0, 1)
    scores = scores + bias.to(compute)
    if shift:
        mask = shift_mask(height_pad, width_pad, window, shift, mask_value, qkv.device, compute)
        scores = (scores.view(b, -1, num_heads, tokens, tokens) + mask[None, :, None]).view_as(scores)
    probs = torch.softmax(scores, dim=-1).to(qkv.dtype)

    out = (probs @ v).transpose(1, 2).reshape(-1, window, window, channels)
    out = window_reverse(out, window, height_pad, width_pad)
    if not pad_first:
        out = out[:, :height, :width]
    if shift:
        out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
    return out[:, :height, :width].contiguous()


def patch_merging_gather(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 4C): [x(2i,2j), x(2i+1,2j), x(2i,2j+1), x(2i+1,2j+1)].

    Odd H or W is zero-padded first (timm / HF PatchMerging).
    """
    b, h, w, c = x.shape
    x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    # (B, H/2, row parity, W/2, col parity, C) -> (B, H/2, W/2, col parity, row parity, C)
    return x.reshape(b, h2, 2, w2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(b, h2, w2, 4 * c)


def patch_merging_norm(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                       eps: float = 1e-5) -> torch.Tensor:
    """Swin patch merging before the reduction Linear: 2x2 gather then LayerNorm(4C)."""
    from vtkernels.reference.norm import layer_norm

    return layer_norm(patch_merging_gather(x), weight, bias, eps)
