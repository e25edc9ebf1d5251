"""QuickGELU (OpenAI CLIP, iGPT): ``x * sigmoid(1.702 x)`` in one pass, forward and backward.

Eager PyTorch runs the formula as three kernels (scale, sigmoid, product: 4 reads and 3 writes
of the MLP's hidden activations, the largest tensor of a transformer block); the kernels read x
once and write y once, math in fp32. The kernel backends run behind the custom ops
``vtkernels::quick_gelu_fwd`` / ``vtkernels::quick_gelu_bwd`` (fake implementations for
``torch.compile``); the reference is the formula.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from vtkernels._extension import kernel_functions
from vtkernels.backend import OpDispatcher
from vtkernels.ops import checks
from vtkernels.ops.registration import backward_call, forward_call
from vtkernels.reference import activation as reference

# Triton first without a measurement (both are one memory-bound pass).
dispatcher = OpDispatcher("quick_gelu", gpu_preference=("triton", "cuda"), dtype_of="x")


def _kernels(backend: str):
    return kernel_functions(backend, triton_module="vtkernels.triton.activation",
                            triton=("quick_gelu_fwd", "quick_gelu_bwd"), cuda=("quick_gelu_fwd", "quick_gelu_bwd"))


@torch.library.custom_op("vtkernels::quick_gelu_fwd", mutates_args=())
def quick_gelu_fwd(x: Tensor, backend: str) -> Tensor:
    """x contiguous -> x * sigmoid(1.702 x)."""
    return _kernels(backend)[0](x)


@quick_gelu_fwd.register_fake
def _(x, backend):
    return torch.empty_like(x)


@torch.library.custom_op("vtkernels::quick_gelu_bwd", mutates_args=())
def quick_gelu_bwd(dy: Tensor, x: Tensor, backend: str) -> Tensor:
    """dy, x contiguous -> dx."""
    return _kernels(backend)[1](dy, x)


@quick_gelu_bwd.register_fake
def _(dy, x, backend):
    return torch.empty_like(x)


call_quick_gelu_bwd = backward_call(quick_gelu_bwd)


def _setup_context(ctx, inputs, output):
    x, backend = inputs
    ctx.save_for_backward(x)
    ctx.backend = backend


def _backward(ctx, dy):
    (x,) = ctx.saved_tensors
    return call_quick_gelu_bwd(dy.contiguous(), x, ctx.backend), None


call_quick_gelu_fwd = forward_call(quick_gelu_fwd, _backward, _setup_context)


def quick_gelu(x: Tensor, backend: Optional[str] = None) -> Tensor:
    """QuickGELU ``x * sigmoid(1.702 x)`` of a float tensor of any shape; differentiable."""
    checks.check_tensor("x", x)
    chosen = dispatcher.choose(x.device, backend, x=x)
    if chosen == "reference":
        return reference.quick_gelu(x)
    return call_quick_gelu_fwd(x.contiguous(), chosen)


__all__ = ["quick_gelu", "dispatcher"]


def selfcheck_cases(backend: str = "triton", dtypes=(torch.float32, torch.float16)):
    """Kernel-vs-reference checks (forward, dx) for `python -m vtkernels selfcheck`."""
    from vtkernels.testing import assert_close, grads, upcast, check_device

    def check(shape, dtype):
        device = check_device()
        x = (4 * torch.randn(shape, device=device)).to(dtype).requires_grad_()
        out = quick_gelu(x, backend)
        (x64,) = upcast(x)
        expected = quick_gelu(x64, "reference")
        assert_close(out, expected, dtype)
        cot = torch.randn_like(out)
        assert_close(grads(out, [x], cot), grads(expected, [x64], cot), dtype)

    for shape in ((3, 77, 96), (5000,)):
        for dtype in dtypes:
            yield f"quick_gelu {shape} {dtype}", (lambda s=shape, d=dtype: check(s, d))
