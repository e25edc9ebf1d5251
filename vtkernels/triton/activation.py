"""Triton QuickGELU forward and backward (spec: vtkernels/reference/activation.py).

One pass each, math in fp32: ``y = x * s`` and ``dx = dy * (s + 1.702 x s (1 - s))`` with
``s = sigmoid(1.702 x)``, over x (and dy) flattened; eager PyTorch runs the forward formula as
three kernels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vtkernels.reference.activation import QUICK_GELU_ALPHA

BLOCK = 2048  # elements per program: 16 per thread at 4 warps, 16-byte loads and stores
NUM_WARPS = 4


@triton.jit
def quick_gelu_fwd_kernel(X, Y, n, ALPHA: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    x = tl.load(X + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(Y + offs, (x * tl.sigmoid(ALPHA * x)).to(Y.dtype.element_ty), mask=ok)


@triton.jit
def quick_gelu_bwd_kernel(X, DY, DX, n, ALPHA: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    x = tl.load(X + offs, mask=ok, other=0.0).to(tl.float32)
    dy = tl.load(DY + offs, mask=ok, other=0.0).to(tl.float32)
    s = tl.sigmoid(ALPHA * x)
    tl.store(DX + offs, (dy * (s + ALPHA * x * s * (1.0 - s))).to(DX.dtype.element_ty), mask=ok)


def quick_gelu_fwd(x: torch.Tensor) -> torch.Tensor:
    """x contiguous -> y like x."""
    y = torch.empty_like(x)
    if x.numel():
        quick_gelu_fwd_kernel[(triton.cdiv(x.numel(), BLOCK),)](x, y, x.numel(), ALPHA=QUICK_GELU_ALPHA, BLOCK=BLOCK,
                                                                 num_warps=NUM_WARPS)
    return y


def quick_gelu_bwd(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dy, x contiguous, same shape -> dx like x."""
    dx = torch.empty_like(x)
    if x.numel():
        quick_gelu_bwd_kernel[(triton.cdiv(x.numel(), BLOCK),)](x, dy, dx, x.numel(), ALPHA=QUICK_GELU_ALPHA,
                                                                 BLOCK=BLOCK, num_warps=NUM_WARPS)
    return dx


def aot_configs():
    """Forward and backward in each dtype for the sm_90 compile check (n: CLIP-B/16's MLP hidden
    activations, B=256)."""
    values = {"n": 256 * 197 * 3072}
    for dtype in ("bf16", "fp16", "fp32"):
        constexprs = {"ALPHA": QUICK_GELU_ALPHA, "BLOCK": BLOCK}
        options = {"num_warps": NUM_WARPS}
        t = f"*{dtype}"
        yield quick_gelu_fwd_kernel, {"X": t, "Y": t, "n": "i32"}, constexprs, options, values
        yield quick_gelu_bwd_kernel, {"X": t, "DY": t, "DX": t, "n": "i32"}, constexprs, options, values
