"""LayerNorm and RMSNorm (with the optional fused residual add): validation, dispatch, autograd.

The kernel backends run behind two ``torch.library`` custom ops, ``vtkernels::norm_fwd`` and
``vtkernels::norm_bwd``, tied together by ``register_autograd``; their fake implementations let
``torch.compile(fullgraph=True)`` trace a call without a graph break. In plain eager mode the CUDA
backend skips them: the extension's ``norm_autograd`` runs the same kernels and records its backward
as a C++ autograd node, with no Python in the backward (host time: the norm's kernels are short). The
reference backend is plain PyTorch and gets its gradients from autograd directly.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from vtkernels._extension import kernel_functions, load_extension
from vtkernels.backend import OpDispatcher
from vtkernels.ops import checks
from vtkernels.ops.registration import backward_call, forward_call, plain_eager
from vtkernels.reference import norm as reference_norm

MAX_COLS = 8192
MAX_CUDA_ROWS = 2**31 - 1  # the CUDA grid's x axis (csrc/torch_checks.h, check_grid_rows)


def _kernel_refusals(backend: str, x: Tensor, **_) -> list[str]:
    if x.shape[-1] > MAX_COLS:
        return [f"normalized size {x.shape[-1]} > {MAX_COLS} (one row must fit on chip)"]
    rows = x.numel() // max(x.shape[-1], 1)
    if backend == "cuda" and rows > MAX_CUDA_ROWS:
        return [f"{rows} rows > {MAX_CUDA_ROWS} (one CUDA block per row at most)"]
    return []


dispatcher = OpDispatcher("layer_norm", gpu_preference=("cuda", "triton"), dtype_of="x", refusals=_kernel_refusals)


def _kernels(backend: str):
    """The backend's (forward, backward)."""
    return kernel_functions(backend, triton_module="vtkernels.triton.norm", triton=("forward", "backward"),
                            cuda=("norm_fwd", "norm_bwd"))


@torch.library.custom_op("vtkernels::norm_fwd", mutates_args=())
def norm_fwd(x: Tensor, residual: Optional[Tensor], weight: Optional[Tensor], bias: Optional[Tensor],
             eps: float, rms: bool, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """x, residual: (rows, cols). Returns y, h (empty without residual), mean (empty for RMS), rstd."""
    forward, _ = _kernels(backend)
    return tuple(forward(x, residual, weight, bias, eps, rms))


@norm_fwd.register_fake
def _(x, residual, weight, bias, eps, rms, backend):
    rows, cols = x.shape
    y = x.new_empty(rows, cols)
    h = x.new_empty(rows, cols) if residual is not None else x.new_empty(0)
    mean = x.new_empty(0 if rms else rows, dtype=torch.float32)
    return y, h, mean, x.new_empty(rows, dtype=torch.float32)


@torch.library.custom_op("vtkernels::norm_bwd", mutates_args=())
def norm_bwd(dy: Tensor, dh: Optional[Tensor], h: Tensor, weight: Optional[Tensor], mean: Tensor,
             rstd: Tensor, rms: bool, has_bias: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Returns dx (which includes dh), dweight (empty without weight), dbias (empty without bias)."""
    _, backward = _kernels(backend)
    return tuple(backward(dy, dh, h, weight, mean, rstd, rms, has_bias))


@norm_bwd.register_fake
def _(dy, dh, h, weight, mean, rstd, rms, has_bias, backend):
    dw = h.new_empty(h.shape[1]) if weight is not None else h.new_empty(0)
    db = h.new_empty(h.shape[1]) if has_bias else h.new_empty(0)
    return h.new_empty(h.shape), dw.to(weight.dtype if weight is not None else h.dtype), db


call_norm_bwd = backward_call(norm_bwd)


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, eps, rms, backend = inputs
    _, h, mean, rstd = output
    ctx.save_for_backward(h if residual is not None else x, weight, mean, rstd)
    ctx.rms, ctx.backend = rms, backend
    ctx.has_residual, ctx.has_bias = residual is not None, bias is not None


def _backward(ctx, dy, dh, _dmean, _drstd):
    h, weight, mean, rstd = ctx.saved_tensors
    dh = dh if ctx.has_residual else None
    dy = torch.zeros_like(h) if dy is None else dy.contiguous()  # None: only the residual sum h was used
    dx, dw, db = call_norm_bwd(dy, None if dh is None else dh.contiguous(), h, weight, mean, rstd,
                               ctx.rms, ctx.has_bias, ctx.backend)
    return (dx, dx if ctx.has_residual else None, dw if weight is not None else None,
            db if ctx.has_bias else None, None, None, None)


call_norm_fwd = forward_call(norm_fwd, _backward, _setup_context)


def _validate(x, residual, weight, bias, eps):
    checks.check_tensor("x", x)
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"x must have a non-empty last (normalized) dimension, got shape {tuple(x.shape)}")
    checks.check_positive("eps", eps)
    for name, t in (("residual", residual), ("weight", weight), ("bias", bias)):
        if t is not None:
            checks.check_tensor(name, t)
    checks.check_same_device("x", x, residual=residual, weight=weight, bias=bias)
    checks.check_same_dtype("x", x, residual=residual, weight=weight, bias=bias)
    checks.check_shape("residual", residual, tuple(x.shape))
    checks.check_shape("weight", weight, (x.shape[-1],))
    checks.check_shape("bias", bias, (x.shape[-1],))


def _rows(t: Optional[Tensor], cols: int) -> Optional[Tensor]:
    """(..., cols) -> (rows, cols) with unit column stride, a view where strides allow."""
    return None if t is None else checks.unit_stride(t).reshape(-1, cols)


def _norm(x, weight, bias, eps, residual, rms, backend):
    _validate(x, residual, weight, bias, eps)
    chosen = dispatcher.choose(x.device, backend, x=x)
    if chosen == "reference":
        if rms:
            return reference_norm.rms_norm(x, weight, eps, residual)
        return reference_norm.layer_norm(x, weight, bias, eps, residual)
    cols = x.shape[-1]
    args = (_rows(x, cols), _rows(residual, cols), checks.unit_stride(weight), checks.unit_stride(bias), float(eps),
            rms)
    # Plain eager on the CUDA backend: forward and backward node in C++ (csrc/bindings/norm.cpp); None
    # from an extension built before norm_autograd existed.
    cpp_autograd = getattr(load_extension(), "norm_autograd", None) if chosen == "cuda" and plain_eager(args) else None
    if cpp_autograd is not None:
        y, h = cpp_autograd(*args)
    else:
        y, h, _, _ = call_norm_fwd(*args, chosen)
    y = y.view(x.shape)
    return y if residual is None else (y, h.view(x.shape))


def layer_norm(x: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, eps: float = 1e-5,
               residual: Optional[Tensor] = None, backend: Optional[str] = None):
    """LayerNorm over the last dimension, statistics in fp32.

    With ``residual``: computes ``h = x + residual`` and returns ``(layer_norm(h), h)`` in one pass.
    Gradients flow to x, residual, weight and bias. A tensor with zero rows gives an empty result.
    The kernel backends have no second-order gradient: with ``create_graph=True`` the CUDA
    backend's backward raises, the Triton backend's gradient raises when it is differentiated.
    """
    return _norm(x, weight, bias, eps, residual, False, backend)


def rms_norm(x: Tensor, weight: Optional[Tensor] = None, eps: float = 1e-5,
             residual: Optional[Tensor] = None, backend: Optional[str] = None):
    """RMSNorm (iGPT): ``x / sqrt(mean(x^2) + eps) * weight``; ``residual`` as in :func:`layer_norm`."""
    return _norm(x, weight, None, eps, residual, True, backend)


def selfcheck_cases(backend: str = "triton", dtypes=(torch.float32, torch.float16)):
    """Small kernel-vs-reference checks (forward and every gradient) for `python -m vtkernels selfcheck`."""
    from vtkernels.testing import assert_close, grads, upcast, check_device

    def run(x, weight, bias, residual, rms, backend):
        out = _norm(x, weight, bias, 1e-5, residual, rms, backend)
        return list(out) if isinstance(out, tuple) else [out]

    def check(rms, with_residual, dtype, shape=(6, 197, 96)):
        device = check_device()

        def rand(*size):
            return torch.randn(size, device=device).to(dtype).requires_grad_()

        inputs = [rand(*shape), rand(shape[-1]), None if rms else rand(shape[-1]),
                  rand(*shape) if with_residual else None]
        out = run(*inputs, rms, backend)
        ref_inputs = upcast(*inputs)
        ref_out = run(*ref_inputs, rms, "reference")
        assert_close(out, ref_out, dtype)
        cot = [torch.randn_like(o) for o in out]
        kept = [i for i, t in enumerate(inputs) if t is not None]
        ours, theirs = grads(out, inputs, cot), grads(ref_out, ref_inputs, cot)
        assert_close([ours[i] for i in kept], [theirs[i] for i in kept], dtype,
                     tol=None if dtype == torch.float32 else 2e-2)

    for rms in (False, True):
        for with_residual in (False, True):
            for dtype in dtypes:
                name = f"{'rms_norm' if rms else 'layer_norm'}{' + residual' if with_residual else ''} {dtype}"
                yield name, (lambda rms=rms, r=with_residual, d=dtype: check(rms, r, d))
