"""Drop-in multi-head self-attention: the attributes and state_dict of timm's ``Attention``.

``qkv`` (Linear(dim, 3 * dim)) produces (B, N, 3, H, d), which the fused op reads in place (no
permute, no copy) and whose gradient its backward writes in one piece (``attention_qkv``).
The op returns (B, N, H, d) contiguous, which is (B, N, dim) as a view for ``proj``.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from vtkernels.ops.attention import attention, attention_qkv


def pick_rows(t: torch.Tensor, rows: Union[int, torch.Tensor]) -> torch.Tensor:
    """Row ``rows[b]`` (or the row ``rows``, an index) of each sample b of t (B, N, ...): (B, ...)."""
    if isinstance(rows, int):
        return t[:, rows]
    return t[torch.arange(t.shape[0], device=t.device), rows]


class Attention(nn.Module):
    """timm ``Attention`` (same ``qkv`` / ``proj`` Linear layers and state_dict keys) on the fused op.

    ``causal=True`` gives iGPT / CLIP-text attention. ``forward(x, key_padding_mask)`` takes a
    bool (B, N) mask, True marking padding tokens to ignore as keys.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, proj_bias: bool = True,
                 causal: bool = False, backend: Optional[str] = None):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.causal = causal
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.num_heads, self.head_dim)
        out = attention_qkv(qkv, causal=self.causal, key_padding_mask=key_padding_mask, scale=self.scale,
                            backend=self.backend)
        return self.proj(out.reshape(batch, tokens, dim))

    def forward_row(self, x: torch.Tensor, rows: Union[int, torch.Tensor],
                    key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The output (B, dim) of one query row per sample, ``rows`` (an index, or a (B,) tensor of
        them), against every key of ``x``: what ``forward(x)`` gives at those rows, without the
        other queries' attention and projection (a model that pools one token in its last block).
        Causal: the row's keys up to itself, as a padding mask on the keys after it."""
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.num_heads, self.head_dim).unbind(2)
        if self.causal:
            limit = rows if isinstance(rows, int) else rows[:, None]
            later = (torch.arange(tokens, device=x.device) > limit).expand(batch, tokens)
            key_padding_mask = later if key_padding_mask is None else key_padding_mask | later
        out = attention(pick_rows(q, rows)[:, None], k, v, key_padding_mask=key_padding_mask, scale=self.scale,
                        backend=self.backend, layout="bnhd")
        return self.proj(out.reshape(batch, dim))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}, causal={self.causal}"
