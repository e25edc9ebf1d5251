"""Swin patch merging (2x2 gather + LayerNorm(4C)) fused: validation, dispatch, autograd, custom ops.

``vtkernels::patch_merging_norm_fwd`` / ``_bwd`` are tied by ``register_autograd`` and have fake
implementations for ``torch.compile(fullgraph=True)``. The reference is plain PyTorch autograd.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from vtkernels._extension import kernel_functions
from vtkernels.backend import OpDispatcher
from vtkernels.ops import checks
from vtkernels.ops.registration import backward_call, forward_call
from vtkernels.ops.norm import MAX_COLS, MAX_CUDA_ROWS
from vtkernels.reference import window_attention as reference


def _kernel_refusals(backend: str, x: Tensor, **_) -> list[str]:
    reasons = []
    if 4 * x.shape[-1] > MAX_COLS:
        reasons.append(f"merged row of 4 * {x.shape[-1]} channels > {MAX_COLS} (one row must fit on chip)")
    rows = x.shape[0] * -(-x.shape[1] // 2) * -(-x.shape[2] // 2)
    if backend == "cuda" and rows > MAX_CUDA_ROWS:
        reasons.append(f"{rows} merged rows > {MAX_CUDA_ROWS} (one CUDA block per row at most)")
    return reasons


dispatcher = OpDispatcher(
    "patch_merging_norm",
    gpu_preference=("triton", "cuda"),
    refusals=_kernel_refusals,
    dtype_of="x",
)


def _kernels(backend: str):
    return kernel_functions(backend, triton_module="vtkernels.triton.patch_merging", triton=("forward", "backward"),
                            cuda=("patch_merging_fwd", "patch_merging_bwd"))


@torch.library.custom_op("vtkernels::patch_merging_norm_fwd", mutates_args=())
def patch_merging_norm_fwd(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                           backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """x (B, H, W, C) -> y (B, ceil(H/2), ceil(W/2), 4C), mean and rstd per merged row (fp32)."""
    forward, _ = _kernels(backend)
    return tuple(forward(x, weight, bias, eps))


@patch_merging_norm_fwd.register_fake
def _(x, weight, bias, eps, backend):
    b, h, w, c = x.shape
    rows = b * ((h + 1) // 2) * ((w + 1) // 2)
    stats = x.new_empty(rows, dtype=torch.float32)
    return x.new_empty(b, (h + 1) // 2, (w + 1) // 2, 4 * c), stats, stats.clone()


@torch.library.custom_op("vtkernels::patch_merging_norm_bwd", mutates_args=())
def patch_merging_norm_bwd(dy: Tensor, x: Tensor, weight: Optional[Tensor], mean: Tensor, rstd: Tensor,
                           has_bias: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Returns dx, dweight (empty without weight), dbias (empty without bias)."""
    _, backward = _kernels(backend)
    return tuple(backward(dy, x, weight, mean, rstd, has_bias))


@patch_merging_norm_bwd.register_fake
def _(dy, x, weight, mean, rstd, has_bias, backend):
    cols = 4 * x.shape[-1]
    dw = x.new_empty(cols, dtype=weight.dtype) if weight is not None else x.new_empty(0)
    db = x.new_empty(cols) if has_bias else x.new_empty(0)
    return x.new_empty(x.shape), dw, db


call_patch_merging_norm_bwd = backward_call(patch_merging_norm_bwd)


def _setup_context(ctx, inputs, output):
    x, weight, bias, eps, backend = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.has_bias, ctx.backend = bias is not None, backend


def _backward(ctx, dy, _dmean, _drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = call_patch_merging_norm_bwd(dy.contiguous(), x, weight, mean, rstd, ctx.has_bias, ctx.backend)
    return dx, dw if weight is not None else None, db if ctx.has_bias else None, None, None


call_patch_merging_norm_fwd = forward_call(patch_merging_norm_fwd, _backward, _setup_context)


def patch_merging_norm(x: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, eps: float = 1e-5,
                       backend: Optional[str] = None) -> Tensor:
    """Swin patch merging before the reduction Linear, in one pass: (B, H, W, C) ->
    LayerNorm_4C(cat[x(0::2, 0::2), x(1::2, 0::2), x(0::2, 1::2), x(1::2, 1::2)]) of shape
    (B, ceil(H/2), ceil(W/2), 4C); odd H / W are zero-padded first, as timm and HF do."""
    checks.check_tensor("x", x, ndim=4)
    if x.shape[-1] == 0:
        raise ValueError(f"x must have channels, got shape {tuple(x.shape)}")
    checks.check_positive("eps", eps)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            checks.check_tensor(name, t, ndim=1)
            checks.check_shape(name, t, (4 * x.shape[-1],))
    checks.check_same_device("x", x, weight=weight, bias=bias)
    checks.check_same_dtype("x", x, weight=weight, bias=bias)
    chosen = dispatcher.choose(x.device, backend, x=x)
    if chosen == "reference":
        return reference.patch_merging_norm(x, weight, bias, eps)
    x, weight, bias = checks.unit_stride(x), checks.unit_stride(weight), checks.unit_stride(bias)
    return call_patch_merging_norm_fwd(x, weight, bias, float(eps), chosen)[0]


def selfcheck_cases(backend: str = "triton", dtypes=(torch.float32, torch.float16)):
    """Small kernel-vs-reference checks (forward, dx, dweight, dbias) for `python -m vtkernels selfcheck`."""
    from vtkernels.testing import assert_close, grads, upcast, check_device

    def check(shape, dtype):
        device = check_device()
        inputs = [torch.randn(s, device=device).to(dtype).requires_grad_() for s in (shape, (4 * shape[-1],), (4 * shape[-1],))]
        out = patch_merging_norm(*inputs, 1e-5, backend)
        ref_inputs = upcast(*inputs)
        ref_out = patch_merging_norm(*ref_inputs, 1e-5, "reference")
        assert_close(out, ref_out, dtype)
        cot = torch.randn_like(out)
        assert_close(grads(out, inputs, cot), grads(ref_out, ref_inputs, cot), dtype,
                     tol=None if dtype == torch.float32 else 2e-2)

    for shape in ((2, 8, 8, 48), (1, 7, 9, 32)):
        for dtype in dtypes:
            yield f"{'x'.join(map(str, shape))} {dtype}", (lambda s=shape, d=dtype: check(s, d))
