"""Attention benchmark: forward and forward+backward TFLOP/s of vtkernels (Triton, CUDA) against
every SDPA backend (flash, efficient, cuDNN) and FlexAttention, at the models' shapes.

The baseline is the fastest SDPA backend of each case (cuDNN on H100, mostly); the targets are
>= 1.0x everywhere and >= 1.2x for N <= 257. A provider that cannot take a case (flash with a padding
mask, the forward-only CUDA backend under backward) becomes a record with its error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import vtkernels
from benchmarks.harness import BenchCase

# label: (batch, heads, n_q, n_kv, head_dim, causal, padded)
SHAPES = {
    "ViT-B/16 256x12x197x64": (256, 12, 197, 197, 64, False, False),
    "ViT-H/14 64x16x257x80": (64, 16, 257, 257, 80, False, False),
    "CLIP-L/14@336 64x16x577x64": (64, 16, 577, 577, 64, False, False),
    "CLIP-text 512x8x77x64 causal": (512, 8, 77, 77, 64, True, False),
    "iGPT-S 32x8x1024x64 causal": (32, 8, 1024, 1024, 64, True, False),
    "iGPT-M 16x8x1024x128 causal": (16, 8, 1024, 1024, 128, True, False),
    "iGPT-L 4x16x4096x96 causal": (4, 16, 4096, 4096, 96, True, False),
    "DETR-enc 8x8x850x32 padded": (8, 8, 850, 850, 32, False, True),
    "DETR-cross 8x8x100x850x32": (8, 8, 100, 850, 32, False, False),
}
DTYPE = torch.bfloat16
BASELINE = "best:sdpa-"  # the fastest SDPA backend of each case (harness.BEST)


def _padding(batch, n_kv):
    """DETR-like padding: each image keeps between 70% and 100% of its tokens, the same for every
    provider (seeded)."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(int(0.7 * n_kv), n_kv + 1, (batch,), generator=generator).cuda()
    lengths[0] = n_kv
    return torch.arange(n_kv, device="cuda")[None, :] >= lengths[:, None], lengths


def _vtkernels(backend):
    def run(q, k, v, causal, mask, lengths):
        return vtkernels.attention(q, k, v, causal=causal, key_padding_mask=mask, backend=backend)
    return run


def _sdpa(name):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION}[name]

    def run(q, k, v, causal, mask, lengths):
        attn_mask = None if mask is None else ~mask[:, None, None, :]
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal)
    return run


def _flex():
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    compiled = torch.compile(flex_attention, dynamic=False)
    block_masks = {}

    def run(q, k, v, causal, mask, lengths):
        n_q, n_kv = q.shape[2], k.shape[2]
        # (the cache keeps `lengths` alive, so its id is not reused by another case's tensor)
        key = (q.shape[0], n_q, n_kv, causal, id(lengths))
        if key not in block_masks:
            offset = n_kv - n_q

            def mask_mod(b, h, q_idx, kv_idx):
                allowed = kv_idx < n_kv
                if causal:
                    allowed = allowed & (kv_idx <= q_idx + offset)
                if lengths is not None:
                    allowed = allowed & (kv_idx < lengths[b])
                return allowed

            block_masks[key] = lengths, create_block_mask(mask_mod, q.shape[0], None, n_q, n_kv, device="cuda")
        return compiled(q, k, v, block_mask=block_masks[key][1])
    return run


def _providers():
    providers = {"vtkernels-triton": _vtkernels("triton"), "vtkernels-cuda": _vtkernels("cuda")}
    for name in ("flash", "efficient", "cudnn"):
        providers[f"sdpa-{name}"] = _sdpa(name)
    try:
        providers["flex"] = _flex()
    except ImportError as exc:  # a torch without FlexAttention: the other peers still run
        print(f"FlexAttention left out: {exc}")
    return providers


def _flops(batch, heads, n_q, n_kv, head_dim, causal, backward):
    """Useful matmul FLOPs: QK^T and PV (2 each per MAC); the backward does 2.5x the forward."""
    fwd = 4 * batch * heads * n_q * n_kv * head_dim * (0.5 if causal else 1.0)
    return fwd * 3.5 if backward else fwd


def _case(fn, spec, backward, holder):
    batch, heads, n_q, n_kv, head_dim, causal, padded = spec

    def make():
        def rand(n):
            return torch.randn(batch, heads, n, head_dim, device="cuda", dtype=DTYPE, requires_grad=backward)
        q, k, v = rand(n_q), rand(n_kv), rand(n_kv)
        mask, lengths = _padding(batch, n_kv) if padded else (None, None)
        if not backward:
            return lambda: fn(q, k, v, causal, mask, lengths)
        dout = torch.randn(batch, heads, n_q, head_dim, device="cuda", dtype=DTYPE)
        holder[:] = [q, k, v]
        return lambda: fn(q, k, v, causal, mask, lengths).backward(dout)
    return make


def cases(quick: bool = False):
    shapes = dict(list(SHAPES.items())[:1]) if quick else SHAPES
    providers = _providers()
    for label, spec in shapes.items():
        for provider, fn in providers.items():
            yield BenchCase("attention", label, "fwd", provider, _case(fn, spec, False, []),
                            flops=_flops(*spec[:6], backward=False), baseline=BASELINE)
            holder: list = []
            yield BenchCase("attention", label, "fwd+bwd", provider, _case(fn, spec, True, holder),
                            flops=_flops(*spec[:6], backward=True), baseline=BASELINE,
                            grad_to_none=lambda holder=holder: holder)
