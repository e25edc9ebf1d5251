"""Triton activations (spec: vtkernels/reference/activation.py): the formulas every kernel that
applies one shares (``activate`` / ``activation_grad``, selected by a constexpr code), and QuickGELU
forward and backward as standalone passes.

QuickGELU: one pass each, math in fp32: ``y = x * s`` and ``dx = dy * (s + 1.702 x s (1 - s))``
with ``s = sigmoid(1.702 x)``, over x (and dy) flattened; eager PyTorch runs the forward formula
as three kernels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vtkernels.reference.activation import ACTIVATIONS, QUICK_GELU_ALPHA
from vtkernels.triton.tiling import cdiv

# The constexpr code of each activation, in vtkernels.reference.activation.ACTIVATIONS order.
ACTIVATION_CODE = {name: code for code, name in enumerate(ACTIVATIONS)}
GELU, GELU_TANH, QUICK_GELU, RELU = (tl.constexpr(ACTIVATION_CODE[n]) for n in ACTIVATIONS)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)
# tanh(u) = 2 sigmoid(2u) - 1, so 0.5 x (1 + tanh(u)) = x sigmoid(2u); TANH_SCALE = 2 sqrt(2 / pi).
TANH_SCALE = tl.constexpr(1.5957691216057308)
TANH_CUBIC = tl.constexpr(0.044715)
ALPHA = tl.constexpr(QUICK_GELU_ALPHA)
NEG_HALF_LOG2E = tl.constexpr(-0.7213475204444817)  # exp(-x^2 / 2) = exp2(NEG_HALF_LOG2E x^2)
# Phi(-a) = exp2(P(a)) on [0, TAIL_LIMIT), P(a) = sum_k TAIL_Pk a^k (tools/fit_gelu_tail.py fits it;
# relative error <= 6e-6 in fp32); 0 past TAIL_LIMIT, where Phi(-a) < 1e-10.
TAIL_LIMIT = tl.constexpr(6.375)
TAIL_P0, TAIL_P1, TAIL_P2, TAIL_P3, TAIL_P4 = (tl.constexpr(c) for c in (
    -1.0, -1.15115356, -0.458875209, -0.0532747805, 0.00793254189))
TAIL_P5, TAIL_P6, TAIL_P7, TAIL_P8, TAIL_P9 = (tl.constexpr(c) for c in (
    -0.000659412297, -1.32707637e-05, 1.01839614e-05, -1.03788761e-06, 3.72624065e-08))

BLOCK = 2048  # elements per program: 16 per thread at 4 warps, 16-byte loads and stores
NUM_WARPS = 4


@triton.jit
def normal_cdf(x):
    """Phi(x), the standard normal CDF (exact GELU = x Phi(x)), of an fp32 tensor: Phi(-|x|) is
    exp2 of a degree-9 polynomial in |x|, 0 past TAIL_LIMIT, and Phi(x) = 1 - Phi(-x). About 16
    instructions with one exp2, against ~30 for 0.5 (1 + erf(x / sqrt 2)) through libdevice's
    erff (two polynomials with selected coefficients): in fc1's GEMM epilogue this is the
    difference between an epilogue that costs ~70% of the tile's tensor-core time and ~35% (sm_90
    SASS at ViT-B's K = 768)."""
    a = tl.abs(x)
    p = TAIL_P9 * a + TAIL_P8
    p = p * a + TAIL_P7
    p = p * a + TAIL_P6
    p = p * a + TAIL_P5
    p = p * a + TAIL_P4
    p = p * a + TAIL_P3
    p = p * a + TAIL_P2
    p = p * a + TAIL_P1
    p = p * a + TAIL_P0
    # (a NaN fails the comparison: tail 0, and x * Phi(x) stays NaN)
    tail = tl.math.exp2(tl.where(a < TAIL_LIMIT, p, float("-inf")))
    return tl.where(x < 0.0, tail, 1.0 - tail)


@triton.jit
def activate(x, ACT: tl.constexpr):
    """act(x) of an fp32 tensor."""
    if ACT == GELU:
        y = x * normal_cdf(x)
    elif ACT == GELU_TANH:
        y = x * tl.sigmoid(TANH_SCALE * (x + TANH_CUBIC * x * x * x))
    elif ACT == QUICK_GELU:
        y = x * tl.sigmoid(ALPHA * x)
    else:
        y = tl.where(x < 0.0, 0.0, x)  # NaN stays NaN, as in torch (max.f32 would drop it)
    return y


@triton.jit
def activation_grad(x, ACT: tl.constexpr):
    """d act / dx at an fp32 tensor x."""
    if ACT == GELU:
        g = normal_cdf(x) + x * INV_SQRT_2PI * tl.math.exp2(NEG_HALF_LOG2E * x * x)
    elif ACT == GELU_TANH:
        s = tl.sigmoid(TANH_SCALE * (x + TANH_CUBIC * x * x * x))
        g = s + x * s * (1.0 - s) * TANH_SCALE * (1.0 + 3.0 * TANH_CUBIC * x * x)
    elif ACT == QUICK_GELU:
        s = tl.sigmoid(ALPHA * x)
        g = s + ALPHA * x * s * (1.0 - s)
    else:
        g = tl.where(x <= 0.0, 0.0, 1.0)  # 1 at NaN, as torch's threshold_backward
    return g


@triton.jit
def quick_gelu_fwd_kernel(X, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    x = tl.load(X + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(Y + offs, activate(x, QUICK_GELU).to(Y.dtype.element_ty), mask=ok)


@triton.jit
def quick_gelu_bwd_kernel(X, DY, DX, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    x = tl.load(X + offs, mask=ok, other=0.0).to(tl.float32)
    dy = tl.load(DY + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(DX + offs, (dy * activation_grad(x, QUICK_GELU)).to(DX.dtype.element_ty), mask=ok)


def quick_gelu_fwd(x: torch.Tensor) -> torch.Tensor:
    """x contiguous -> y like x."""
    y = torch.empty_like(x)
    if x.numel():
        quick_gelu_fwd_kernel[(cdiv(x.numel(), BLOCK),)](x, y, x.numel(), BLOCK=BLOCK,
                                                                 num_warps=NUM_WARPS)
    return y


def quick_gelu_bwd(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dy, x contiguous, same shape -> dx like x."""
    dx = torch.empty_like(x)
    if x.numel():
        quick_gelu_bwd_kernel[(cdiv(x.numel(), BLOCK),)](x, dy, dx, x.numel(), BLOCK=BLOCK,
                                                                 num_warps=NUM_WARPS)
    return dx


def aot_configs():
    """Forward and backward in each dtype for the sm_90 compile check (n: CLIP-B/16's MLP hidden
    activations, B=256)."""
    values = {"n": 256 * 197 * 3072}
    for dtype in ("bf16", "fp16", "fp32"):
        constexprs = {"BLOCK": BLOCK}
        options = {"num_warps": NUM_WARPS}
        t = f"*{dtype}"
        yield quick_gelu_fwd_kernel, {"X": t, "Y": t, "n": "i32"}, constexprs, options, values
        yield quick_gelu_bwd_kernel, {"X": t, "DY": t, "DX": t, "n": "i32"}, constexprs, options, values
