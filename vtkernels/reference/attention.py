"""Reference scaled dot-product attention: an explicit softmax in plain PyTorch (not SDPA).

Semantics every backend follows:

* ``layout="bhnd"``: q (B, H, Nq, d), k and v (B, H, Nkv, d). ``layout="bnhd"``: q (B, Nq, H, d),
  k and v (B, Nkv, H, d) -- the layout a fused qkv projection produces. The output has q's shape.
* ``causal`` with ``Nq != Nkv`` is aligned bottom-right: query ``i`` attends keys
  ``j <= i + Nkv - Nq`` (the last query sees every key, as in KV-cache decoding).
* ``key_padding_mask``: bool (B, Nkv), True marks a key to ignore (torch.nn.MultiheadAttention).
* A query row with no key left to attend (every key padded, or causal with Nq > Nkv) returns
  zeros, never NaN; its gradients are zero too.

Scores and softmax are computed in at least float32 (float64 stays float64, the tests' ground
truth); the output is cast back to the input dtype.
"""

from __future__ import annotations

from typing import Optional

import torch


def allowed_keys(n_q: int, n_kv: int, causal: bool, key_padding_mask: Optional[torch.Tensor],
                 device: torch.device) -> torch.Tensor:
    """Bool mask, broadcastable to (B, H, Nq, Nkv): True where query i may attend key j."""
    allowed = torch.ones(n_q, n_kv, dtype=torch.bool, device=device)
    if causal:
        rows = torch.arange(n_q, device=device)[:, None]
        cols = torch.arange(n_kv, device=device)[None, :]
        allowed = cols <= rows + (n_kv - n_q)  # bottom-right aligned
    allowed = allowed[None, None]
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
    return allowed


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
              key_padding_mask: Optional[torch.Tensor] = None, scale: Optional[float] = None,
              layout: str = "bhnd") -> torch.Tensor:
    """``softmax(q k^T * scale + mask) v`` with ``scale`` defaulting to ``head_dim ** -0.5``."""
    if layout == "bnhd":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    compute = torch.promote_types(q.dtype, torch.float32)
    qf, kf, vf = (t.to(compute) for t in (q, k, v))
    scale = q.shape[-1] ** -0.5 if scale is None else scale

    scores = (qf @ kf.transpose(-1, -2)) * scale
    allowed = allowed_keys(q.shape[-2], k.shape[-2], causal, key_padding_mask, q.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    # Softmax written out so that a row with no allowed key gives zeros instead of NaN.
    row_max = scores.amax(-1, keepdim=True).detach()
    row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max)
    weights = torch.exp(scores - row_max)
    total = weights.sum(-1, keepdim=True)
    probs = weights / torch.where(total == 0, torch.ones_like(total), total)

    out = (probs @ vf).to(q.dtype)
    return out.transpose(1, 2) if layout == "bnhd" else out
