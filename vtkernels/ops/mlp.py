"""The transformer MLP ``fc2(act(fc1(x)))`` with the activation fused into fc1's GEMM (forward) and
its derivative into the d h GEMM (backward): validation, dispatch, autograd.

Eager PyTorch (and torch.compile, which runs the activation as its own pointwise kernel) moves
the hidden activations, the largest tensor of a transformer block, three times forward (GEMM
writes pre, activation reads pre and writes h) and four times more backward (GEMM writes d h; the
activation's backward reads d h and pre and writes d pre). Fused: forward writes h (and pre, only
when a backward will need it), backward reads pre and writes d pre. fc2 and the weight / input
gradient GEMMs stay cuBLAS's.

The kernel backends run behind the custom ops ``vtkernels::mlp_fwd`` / ``vtkernels::mlp_bwd``
(fake implementations for ``torch.compile``). The reference is ``F.linear`` -> activation ->
``F.linear``, which on a GPU is exactly the unfused cuBLAS path; unlike other ops it is a
candidate on CUDA tensors too (its benchmark provider is ``vtkernels-reference``), so a measured
``preferences.json`` can keep it where a fused GEMM loses to cuBLAS.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from vtkernels._extension import extension_has, kernel_functions
from vtkernels.backend import OpDispatcher
from vtkernels.ops import checks
from vtkernels.ops.registration import backward_call, forward_call
from vtkernels.reference import activation as reference
from vtkernels.reference.activation import ACTIVATIONS


def _kernel_refusals(backend: str, x: Tensor, **_) -> list[str]:
    if backend == "cuda" and not extension_has("mlp_linear_act"):
        return ["vtkernels._C was built without mlp; rebuild it (pip install -e .)"]
    if backend == "cuda" and x.dtype == torch.float32:
        return ["the CUDA MLP GEMMs run fp16 / bf16 tensor-core MMAs only; float32 runs on Triton"]
    if backend == "cuda" and x.shape[-1] == 0:
        return ["the CUDA MLP needs dim > 0"]
    return []


# Without a measurement: Triton (wgmma on sm_90), then the unfused cuBLAS path, then the CUDA
# kernels (mma.sync with element-wise operand loads: correct everywhere, not tuned to win).
dispatcher = OpDispatcher("mlp", gpu_preference=("triton", "reference", "cuda"), dtype_of="x",
                          refusals=_kernel_refusals)


def _kernels(backend: str):
    """The backend's (linear_act, matmul_act_grad)."""
    return kernel_functions(backend, triton_module="vtkernels.triton.mlp", triton=("linear_act", "matmul_act_grad"),
                            cuda=("mlp_linear_act", "mlp_matmul_act_grad"))


@torch.library.custom_op("vtkernels::mlp_fwd", mutates_args=())
def mlp_fwd(x: Tensor, fc1_weight: Tensor, fc1_bias: Optional[Tensor], fc2_weight: Tensor, fc2_bias: Optional[Tensor],
            activation: str, save_for_backward: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """x (M, dim) contiguous -> (out (M, dim_out), h, pre); h and pre (M, hidden) are returned for
    the backward when ``save_for_backward``, else empty."""
    linear_act, _ = _kernels(backend)
    h, pre = linear_act(x, fc1_weight, fc1_bias, activation, save_for_backward)
    out = F.linear(h, fc2_weight, fc2_bias)
    return out, (h if save_for_backward else x.new_empty(0)), pre


@mlp_fwd.register_fake
def _(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, save_for_backward, backend):
    hidden = (x.shape[0], fc1_weight.shape[0]) if save_for_backward else (0,)
    return x.new_empty(x.shape[0], fc2_weight.shape[0]), x.new_empty(hidden), x.new_empty(hidden)


@torch.library.custom_op("vtkernels::mlp_bwd", mutates_args=())
def mlp_bwd(grad_out: Tensor, x: Tensor, fc1_weight: Tensor, fc2_weight: Tensor, h: Tensor, pre: Tensor,
            activation: str, needs_x: bool, needs_fc1: bool, needs_fc2: bool, backend: str
            ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns d x, d fc1 weight, d fc1 bias, d fc2 weight, d fc2 bias (fp32 bias sums cast to the
    dtype); an empty tensor for each one not wanted."""
    _, matmul_act_grad = _kernels(backend)
    empty = x.new_empty(0)
    d_fc2_weight, d_fc2_bias = (grad_out.t() @ h, grad_out.sum(0)) if needs_fc2 else (empty, empty.clone())
    d_x, d_fc1_weight, d_fc1_bias = empty.clone(), empty.clone(), empty.clone()
    if needs_x or needs_fc1:
        d_pre = matmul_act_grad(grad_out, fc2_weight, pre, activation)  # (d out @ W2) * act'(pre)
        if needs_fc1:
            d_fc1_weight, d_fc1_bias = d_pre.t() @ x, d_pre.sum(0)
        if needs_x:
            d_x = d_pre @ fc1_weight
    return d_x, d_fc1_weight, d_fc1_bias, d_fc2_weight, d_fc2_bias


@mlp_bwd.register_fake
def _(grad_out, x, fc1_weight, fc2_weight, h, pre, activation, needs_x, needs_fc1, needs_fc2, backend):
    def maybe(wanted, *shape):
        return x.new_empty(shape if wanted else (0,))

    hidden, dim_out = fc1_weight.shape[0], fc2_weight.shape[0]
    return (maybe(needs_x, *x.shape), maybe(needs_fc1, *fc1_weight.shape), maybe(needs_fc1, hidden),
            maybe(needs_fc2, *fc2_weight.shape), maybe(needs_fc2, dim_out))


call_mlp_bwd = backward_call(mlp_bwd)


def _setup_context(ctx, inputs, output):
    x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, _, backend = inputs
    _, h, pre = output
    ctx.save_for_backward(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, h, pre)
    ctx.activation, ctx.backend = activation, backend


def _differentiable_backward(ctx, grad_out, inputs):
    """The gradients as a graph of torch ops on the inputs (recomputed through the reference), for
    a backward that is itself differentiated (``create_graph=True``, ``torch.func``)."""
    with torch.enable_grad():
        out = reference.mlp(*inputs, ctx.activation)
    wanted = [t for t, want in zip(inputs, ctx.needs_input_grad) if want]
    found = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True))
    return tuple(next(found) if want else None for want in ctx.needs_input_grad[:5]) + (None, None, None)


def _backward(ctx, grad_out, _grad_h, _grad_pre):
    x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, h, pre = ctx.saved_tensors
    if torch.is_grad_enabled():
        return _differentiable_backward(ctx, grad_out, (x, fc1_weight, fc1_bias, fc2_weight, fc2_bias))
    wants = ctx.needs_input_grad
    d_x, d_w1, d_b1, d_w2, d_b2 = call_mlp_bwd(grad_out.contiguous(), x, fc1_weight, fc2_weight, h, pre, ctx.activation,
                                               wants[0], wants[1] or wants[2], wants[3] or wants[4], ctx.backend)
    return (d_x if wants[0] else None, d_w1 if wants[1] else None, d_b1 if wants[2] else None,
            d_w2 if wants[3] else None, d_b2 if wants[4] else None, None, None, None)


call_mlp_fwd = forward_call(mlp_fwd, _backward, _setup_context)


def _validate(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    checks.check_tensor("x", x)
    checks.check_tensor("fc1_weight", fc1_weight, ndim=2)
    checks.check_tensor("fc2_weight", fc2_weight, ndim=2)
    for name, t in (("fc1_bias", fc1_bias), ("fc2_bias", fc2_bias)):
        if t is not None:
            checks.check_tensor(name, t, ndim=1)
    if x.dim() == 0 or x.shape[-1] != fc1_weight.shape[1]:
        raise ValueError(f"x must have shape (..., {fc1_weight.shape[1]}) (fc1_weight is (hidden, dim) = "
                         f"{tuple(fc1_weight.shape)}), got {tuple(x.shape)}")
    if fc2_weight.shape[1] != fc1_weight.shape[0]:
        raise ValueError(f"fc2_weight must have shape (dim_out, {fc1_weight.shape[0]}) to follow fc1_weight "
                         f"{tuple(fc1_weight.shape)}, got {tuple(fc2_weight.shape)}")
    checks.check_shape("fc1_bias", fc1_bias, (fc1_weight.shape[0],))
    checks.check_shape("fc2_bias", fc2_bias, (fc2_weight.shape[0],))
    checks.check_same_dtype("x", x, fc1_weight=fc1_weight, fc1_bias=fc1_bias, fc2_weight=fc2_weight, fc2_bias=fc2_bias)
    checks.check_same_device("x", x, fc1_weight=fc1_weight, fc1_bias=fc1_bias, fc2_weight=fc2_weight,
                             fc2_bias=fc2_bias)


def _autocast(*tensors: Optional[Tensor]) -> tuple[Optional[Tensor], ...]:
    """Under autocast, the tensors in the autocast dtype (as ``nn.Linear`` would compute); float64
    inputs, which autocast leaves alone, stay as they are."""
    device_type = tensors[0].device.type
    if not torch.is_autocast_enabled(device_type) or tensors[0].dtype == torch.float64:
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(None if t is None else t.to(dtype) for t in tensors)


def mlp(x: Tensor, fc1_weight: Tensor, fc1_bias: Optional[Tensor], fc2_weight: Tensor, fc2_bias: Optional[Tensor],
        activation: str = "gelu", backend: Optional[str] = None) -> Tensor:
    """``fc2(act(fc1(x)))`` of x (..., dim): weights in ``nn.Linear`` layout, fc1_weight
    (hidden, dim), fc2_weight (dim_out, hidden); biases or None. ``activation``: ``gelu`` (exact,
    erf), ``gelu_tanh``, ``quick_gelu`` or ``relu``. Under autocast it computes in the autocast
    dtype, like ``nn.Linear``. Differentiable in x, both weights and both biases."""
    x, fc1_weight, fc1_bias, fc2_weight, fc2_bias = _autocast(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    _validate(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation)
    chosen = dispatcher.choose(x.device, backend, x=x)
    if chosen == "reference":
        return reference.mlp(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation)
    params = (fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x,) + params)
    out, _, _ = call_mlp_fwd(x.reshape(-1, x.shape[-1]).contiguous(), fc1_weight.contiguous(),
                             None if fc1_bias is None else fc1_bias.contiguous(), fc2_weight.contiguous(),
                             None if fc2_bias is None else fc2_bias.contiguous(), activation, needs_grad, chosen)
    return out.reshape(*x.shape[:-1], fc2_weight.shape[0])


__all__ = ["mlp", "dispatcher"]


def selfcheck_cases(backend: str = "triton", dtypes=(torch.float32, torch.float16)):
    """Kernel-vs-reference checks (forward, every gradient) for `python -m vtkernels selfcheck`."""
    from vtkernels.testing import assert_close, grads, upcast, check_device

    def check(activation, dtype):
        device = check_device()
        dim, hidden = 48, 80  # ragged against the interpreter's 32-wide tiles

        def param(*shape):
            return (torch.randn(shape, device=device) / 4).to(dtype).requires_grad_()

        inputs = [param(3, 37, dim), param(hidden, dim), param(hidden), param(dim, hidden), param(dim)]
        out = mlp(*inputs, activation=activation, backend=backend)
        upcast_inputs = upcast(*inputs)
        expected = mlp(*upcast_inputs, activation=activation, backend="reference")
        assert_close(out, expected, dtype)
        cot = torch.randn_like(out)
        assert_close(grads(out, inputs, cot), grads(expected, upcast_inputs, cot), dtype)

    for activation in ACTIVATIONS:
        for dtype in dtypes:
            yield f"mlp {activation} {dtype}", (lambda a=activation, d=dtype: check(a, d))
