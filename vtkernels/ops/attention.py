"""Fused scaled dot-product attention: validation, dispatch, autograd, torch.library registration.

Semantics (bottom-right causal alignment, key-padding mask, zeros for a row with no key) are
those of :mod:`vtkernels.reference.attention`, the spec. The kernel backends run behind two
custom ops, ``vtkernels::attention_fwd`` (returns the output and the fp32 row logsumexp) and
``vtkernels::attention_bwd`` (dq, dk, dv from the saved output and logsumexp, never an N x N
matrix), tied together by ``register_autograd`` (eager calls run them through
:mod:`vtkernels.ops.registration`). ``vtkernels::attention_qkv_fwd`` / ``_bwd`` are the packed
pair behind :func:`attention_qkv`: one (B, N, 3, H, d) input, one gradient of that shape. The
reference backend is plain PyTorch and gets its gradients from autograd.

Both layouts are read in place: ``"bnhd"`` tensors (e.g. the unbound output of a fused qkv
projection, whose sequence stride is 3 * H * d) are handed to the kernels as transposed
(B, H, N, d) views with their strides. Only a non-unit stride along head_dim forces a copy.
Outputs and gradients are contiguous in the caller's layout.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from vtkernels._extension import kernel_functions
from vtkernels.backend import OpDispatcher
from vtkernels.ops import checks
from vtkernels.ops.registration import backward_call, forward_call
from vtkernels.reference import attention as reference_attention

LAYOUTS = ("bhnd", "bnhd")
HEAD_DIMS = (32, 64, 80, 96, 128)


def _kernel_refusals(backend: str, q: Tensor, layout: str, **_) -> list[str]:
    reasons = []
    if q.shape[-1] not in HEAD_DIMS:
        reasons.append(f"head_dim {q.shape[-1]} is not one of {HEAD_DIMS}")
    batch, heads = q.shape[0], q.shape[2 if layout == "bnhd" else 1]  # Triton's grid y: batch * heads
    if backend == "triton" and batch * heads > checks.MAX_GRID_Y:
        reasons.append(f"batch * heads must be <= {checks.MAX_GRID_Y} (one grid row per (batch, head))")
    if backend == "cuda" and max(batch, heads) > checks.MAX_GRID_Y:
        reasons.append(f"batch and heads must each be <= {checks.MAX_GRID_Y} (grid dimensions)")
    return reasons


dispatcher = OpDispatcher("attention", gpu_preference=("triton", "cuda"), dtype_of="q", refusals=_kernel_refusals)


def _bhnd(t: Tensor, layout: str) -> Tensor:
    """The (B, H, N, d) view of a tensor in ``layout`` (no copy)."""
    return t.transpose(1, 2) if layout == "bnhd" else t


def _bhnd_shape(t: Tensor, layout: str) -> tuple[int, int, int, int]:
    """The (B, H, N, d) shape of a tensor in ``layout`` (shape arithmetic: a view costs ~1 us)."""
    a, b, c, d = t.shape
    return (a, c, b, d) if layout == "bnhd" else (a, b, c, d)


def _kernels(backend: str):
    """The backend's (forward, backward)."""
    return kernel_functions(backend, triton_module="vtkernels.triton.attention", triton=("forward", "backward"),
                            cuda=("attention_fwd", "attention_bwd"))


def _lse_shape(q: Tensor, layout: str) -> tuple[int, int, int]:
    batch, heads, n_q, _ = _bhnd_shape(q, layout)
    return batch, heads, n_q


def _kernel_forward(q, k, v, key_padding_mask, causal, scale, layout, backend) -> tuple[Tensor, Tensor]:
    forward, _ = _kernels(backend)
    # Inputs come in with unit head_dim stride; a compiled graph may relayout them, so check again.
    q, k, v, key_padding_mask = (checks.unit_stride(t) for t in (q, k, v, key_padding_mask))
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(_lse_shape(q, layout), dtype=torch.float32, device=q.device)
    forward(_bhnd(q, layout), _bhnd(k, layout), _bhnd(v, layout), key_padding_mask, _bhnd(out, layout), lse,
            causal, scale)
    return out, lse


def _kernel_backward(dout, q, k, v, out, lse, key_padding_mask, causal, scale, layout, backend, dq, dk, dv) -> None:
    """Writes dq, dk, dv (views in ``layout``, any strides with unit head_dim stride)."""
    _, backward = _kernels(backend)
    dout, q, k, v, out, key_padding_mask = (checks.unit_stride(t) for t in (dout, q, k, v, out, key_padding_mask))
    bhnd = [_bhnd(t, layout) for t in (dout, q, k, v)]
    backward(*bhnd, key_padding_mask, _bhnd(out, layout), lse, _bhnd(dq, layout), _bhnd(dk, layout),
             _bhnd(dv, layout), causal, scale)


def _grad_buffer(shape, like: Tensor, queries: int) -> Tensor:
    # With no query at all, no program visits the keys: their gradients are zeros.
    return (torch.zeros if queries == 0 else torch.empty)(shape, dtype=like.dtype, device=like.device)


@torch.library.custom_op("vtkernels::attention_fwd", mutates_args=())
def attention_fwd(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor], causal: bool,
                  scale: float, layout: str, backend: str) -> tuple[Tensor, Tensor]:
    """Returns out (q's shape, contiguous) and lse (B, H, Nq) fp32 (+inf on rows with no key)."""
    return _kernel_forward(q, k, v, key_padding_mask, causal, scale, layout, backend)


@attention_fwd.register_fake
def _(q, k, v, key_padding_mask, causal, scale, layout, backend):
    return q.new_empty(q.shape), q.new_empty(_lse_shape(q, layout), dtype=torch.float32)


@torch.library.custom_op("vtkernels::attention_bwd", mutates_args=())
def attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                  key_padding_mask: Optional[Tensor], causal: bool, scale: float, layout: str,
                  backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Returns dq, dk, dv, each contiguous with the shape of its input."""
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk, dv = (_grad_buffer(t.shape, t, q.numel()) for t in (k, v))
    _kernel_backward(dout, q, k, v, out, lse, key_padding_mask, causal, scale, layout, backend, dq, dk, dv)
    return dq, dk, dv


@attention_bwd.register_fake
def _(dout, q, k, v, out, lse, key_padding_mask, causal, scale, layout, backend):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


call_attention_bwd = backward_call(attention_bwd)


def _setup_context(ctx, inputs, output):
    q, k, v, key_padding_mask, causal, scale, layout, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_padding_mask)
    ctx.causal, ctx.scale, ctx.layout, ctx.backend = causal, scale, layout, backend


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, key_padding_mask = ctx.saved_tensors
    dq, dk, dv = call_attention_bwd(checks.unit_stride(dout), q, k, v, out, lse, key_padding_mask, ctx.causal,
                                    ctx.scale, ctx.layout, ctx.backend)
    return dq, dk, dv, None, None, None, None, None


call_attention_fwd = forward_call(attention_fwd, _backward, _setup_context)


# The packed form: one (B, N, 3, H, d) input, one (B, N, 3, H, d) gradient written in place.
@torch.library.custom_op("vtkernels::attention_qkv_fwd", mutates_args=())
def attention_qkv_fwd(qkv: Tensor, key_padding_mask: Optional[Tensor], causal: bool, scale: float,
                      backend: str) -> tuple[Tensor, Tensor]:
    """qkv (B, N, 3, H, d). Returns out (B, N, H, d) contiguous and lse (B, H, N) fp32."""
    return _kernel_forward(*qkv.unbind(2), key_padding_mask, causal, scale, "bnhd", backend)


@attention_qkv_fwd.register_fake
def _(qkv, key_padding_mask, causal, scale, backend):
    batch, tokens, _, heads, head_dim = qkv.shape
    return qkv.new_empty(batch, tokens, heads, head_dim), qkv.new_empty(batch, heads, tokens, dtype=torch.float32)


@torch.library.custom_op("vtkernels::attention_qkv_bwd", mutates_args=())
def attention_qkv_bwd(dout: Tensor, qkv: Tensor, out: Tensor, lse: Tensor, key_padding_mask: Optional[Tensor],
                      causal: bool, scale: float, backend: str) -> Tensor:
    """Returns dqkv (B, N, 3, H, d) contiguous: the kernels write d q, d k, d v into its three slices."""
    dqkv = _grad_buffer(qkv.shape, qkv, qkv.numel())
    _kernel_backward(dout, *qkv.unbind(2), out, lse, key_padding_mask, causal, scale, "bnhd", backend,
                     *dqkv.unbind(2))
    return dqkv


@attention_qkv_bwd.register_fake
def _(dout, qkv, out, lse, key_padding_mask, causal, scale, backend):
    return qkv.new_empty(qkv.shape)


call_attention_qkv_bwd = backward_call(attention_qkv_bwd)


def _setup_context_qkv(ctx, inputs, output):
    qkv, key_padding_mask, causal, scale, backend = inputs
    out, lse = output
    ctx.save_for_backward(qkv, out, lse, key_padding_mask)
    ctx.causal, ctx.scale, ctx.backend = causal, scale, backend


def _backward_qkv(ctx, dout, _dlse):
    qkv, out, lse, key_padding_mask = ctx.saved_tensors
    dqkv = call_attention_qkv_bwd(checks.unit_stride(dout), qkv, out, lse, key_padding_mask, ctx.causal, ctx.scale,
                                  ctx.backend)
    return dqkv, None, None, None, None


call_attention_qkv_fwd = forward_call(attention_qkv_fwd, _backward_qkv, _setup_context_qkv)


def _validate(q, k, v, causal, key_padding_mask, scale, layout) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        checks.check_tensor(name, t, ndim=4)
    checks.check_same_device("q", q, k=k, v=v, key_padding_mask=key_padding_mask)
    checks.check_same_dtype("q", q, k=k, v=v)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite float or None, got {scale!r}")
    names = "(B, H, N, head_dim)" if layout == "bhnd" else "(B, N, H, head_dim)"
    batch, heads, _, head_dim = _bhnd_shape(q, layout)
    k_batch, k_heads, n_kv, k_head_dim = _bhnd_shape(k, layout)
    if (k_batch, k_heads, k_head_dim) != (batch, heads, head_dim):
        raise ValueError(f"k must match q in batch, heads and head_dim (layout {layout!r}: {names}); "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}")
    checks.check_shape("v", v, tuple(k.shape))
    if head_dim == 0:
        raise ValueError(f"q must have a non-empty head_dim, got shape {tuple(q.shape)}")
    if n_kv == 0:
        raise ValueError(f"k and v must hold at least one key, got k of shape {tuple(k.shape)}")
    if key_padding_mask is not None:
        checks.check_tensor("key_padding_mask", key_padding_mask, dtypes=(torch.bool,), ndim=2)
        checks.check_shape("key_padding_mask", key_padding_mask, (batch, n_kv))


def _scale_and_backend(q, k, v, causal, key_padding_mask, scale, layout, backend) -> tuple[float, str]:
    """Validates a call; returns its softmax scale (default head_dim ** -0.5) and backend."""
    _validate(q, k, v, causal, key_padding_mask, scale, layout)
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    return scale, dispatcher.choose(q.device, backend, q=q, layout=layout)


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, key_padding_mask: Optional[Tensor] = None,
              scale: Optional[float] = None, backend: Optional[str] = None, layout: str = "bhnd") -> Tensor:
    """``softmax(q k^T * scale) v``, fused (FlashAttention-2 style: no N x N matrix in memory).

    Args:
        q, k, v: ``layout="bhnd"``: q (B, H, Nq, d), k and v (B, H, Nkv, d). ``layout="bnhd"``:
            (B, N, H, d), e.g. ``qkv.view(B, N, 3, H, d).unbind(2)`` read in place. Nq may differ
            from Nkv (cross-attention, decoding with a KV cache). head_dim 32, 64, 80, 96 or 128 on
            the kernel backends. fp16 / bf16 fast; fp32 exact (no tf32); softmax in fp32.
        causal: query ``i`` attends key ``j`` iff ``j <= i + Nkv - Nq`` (aligned bottom-right,
            so with a KV cache the new queries see the whole cache).
        key_padding_mask: bool (B, Nkv); True marks a key to ignore (as torch.nn.MultiheadAttention).
        scale: defaults to ``head_dim ** -0.5``.

    A query row with no key left to attend (all keys padded, or causal with Nq > Nkv) returns
    zeros (never NaN), and its gradients are zeros. Returns a tensor shaped like q (contiguous from
    the kernel backends).
    """
    scale, chosen = _scale_and_backend(q, k, v, causal, key_padding_mask, scale, layout, backend)
    if chosen == "reference":
        return reference_attention.attention(q, k, v, causal, key_padding_mask, scale, layout)
    q, k, v, key_padding_mask = (checks.unit_stride(t) for t in (q, k, v, key_padding_mask))
    out, _ = call_attention_fwd(q, k, v, key_padding_mask, causal, scale, layout, chosen)
    return out


def attention_qkv(qkv: Tensor, causal: bool = False, key_padding_mask: Optional[Tensor] = None,
                  scale: Optional[float] = None, backend: Optional[str] = None) -> Tensor:
    """Self-attention straight from a fused qkv projection: ``qkv`` (B, N, 3, H, d), i.e.
    ``qkv_linear(x).view(B, N, 3, H, d)``. Returns (B, N, H, d).

    The same result as ``attention(*qkv.unbind(2), layout="bnhd")`` (see :func:`attention` for
    ``causal``, ``key_padding_mask``, ``scale``). The difference is the backward: the kernels write
    d q, d k, d v straight into one (B, N, 3, H, d) gradient, where ``unbind``'s backward would
    stack three separate ones (one more read and write of the whole qkv gradient per layer).
    """
    checks.check_tensor("qkv", qkv, ndim=5)
    if qkv.shape[2] != 3:
        raise ValueError(f"qkv must have shape (B, N, 3, H, head_dim), got {tuple(qkv.shape)}")
    q, k, v = qkv.unbind(2)
    scale, chosen = _scale_and_backend(q, k, v, causal, key_padding_mask, scale, "bnhd", backend)
    if chosen == "reference":
        return reference_attention.attention(q, k, v, causal, key_padding_mask, scale, "bnhd")
    out, _ = call_attention_qkv_fwd(checks.unit_stride(qkv), checks.unit_stride(key_padding_mask), causal, scale, chosen)
    return out


def selfcheck_cases(backend: str = "triton", dtypes=(torch.float32, torch.float16)):
    """Small kernel-vs-reference checks (output, dq, dk, dv) for `python -m vtkernels selfcheck`."""
    from vtkernels.testing import assert_close, grads, upcast, check_device

    def check(n_q, n_kv, head_dim, causal, padded, layout, dtype):
        device = check_device()
        shape = (lambda n: (2, 3, n, head_dim)) if layout == "bhnd" else (lambda n: (2, n, 3, head_dim))
        q, k, v = (torch.randn(shape(n), device=device).to(dtype).requires_grad_() for n in (n_q, n_kv, n_kv))
        mask = None
        if padded:
            mask = torch.rand(2, n_kv, device=device) < 0.3
            mask[0] = True  # a fully padded batch: zeros, never NaN
        out = attention(q, k, v, causal, mask, backend=backend, layout=layout)
        ref_inputs = upcast(q, k, v)
        ref_out = attention(*ref_inputs, causal, mask, backend="reference", layout=layout)
        assert_close(out, ref_out, dtype, names=["out"])
        dout = torch.randn_like(ref_out)
        assert_close(grads(out, [q, k, v], dout), grads(ref_out, ref_inputs, dout), dtype, names=["dq", "dk", "dv"])

    def check_packed(tokens, head_dim, dtype):
        device = check_device()
        qkv = torch.randn(2, tokens, 3, 3, head_dim, device=device).to(dtype).requires_grad_()
        out = attention_qkv(qkv, causal=True, backend=backend)
        (qkv64,) = upcast(qkv)
        ref_out = attention(*qkv64.unbind(2), True, backend="reference", layout="bnhd")
        assert_close(out, ref_out, dtype, names=["out"])
        dout = torch.randn_like(ref_out)
        assert_close(grads(out, [qkv], dout), grads(ref_out, [qkv64], dout), dtype, names=["dqkv"])

    cases = [(49, 49, 64, False, False, "bnhd"), (20, 77, 80, True, True, "bhnd"), (1, 50, 128, False, True, "bnhd"),
             (33, 17, 32, True, False, "bhnd")]
    for dtype in dtypes:
        for n_q, n_kv, head_dim, causal, padded, layout in cases:
            name = (f"{n_q}x{n_kv} d={head_dim}{' causal' if causal else ''}{' padded' if padded else ''} "
                    f"{layout} {dtype}")
            yield name, (lambda c=(n_q, n_kv, head_dim, causal, padded, layout, dtype): check(*c))
        yield f"packed qkv 57 tokens d=64 causal {dtype}", (lambda dtype=dtype: check_packed(57, 64, dtype))
