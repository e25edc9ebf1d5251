"""Comparison helpers shared by the tests, the CPU self-check and the GPU script.

Errors are measured in float64 as ``||out - ref|| / ||ref||``. Bounds are by dtype; for low
precision the sharper check is that our error against the float64 reference is at most
``LOW_PRECISION_FACTOR`` times the error of the plain PyTorch reference run in the same dtype.
A bound is never tighter than ``LOW_PRECISION_FACTOR`` times the error of storing the exact result
in the output's dtype.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence, Union

import torch

REL_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
TF32_REL_TOL = 3e-4
LOW_PRECISION_FACTOR = 2.0

Tensors = Union[torch.Tensor, Sequence[Optional[torch.Tensor]]]


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64 (0 for two empty tensors; inf for a NaN)."""
    if out.shape != ref.shape:
        raise AssertionError(f"shape {tuple(out.shape)} != reference shape {tuple(ref.shape)}")
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    if out64.numel() == 0:
        return 0.0
    if not torch.isfinite(out64).all():
        return math.inf
    denom = ref64.norm().item()
    diff = (out64 - ref64).norm().item()
    return diff / denom if denom > 0 else diff


def _as_list(t: Tensors) -> list[Optional[torch.Tensor]]:
    return [t] if isinstance(t, torch.Tensor) else list(t)


def assert_close(out: Tensors, ref: Tensors, dtype: torch.dtype, *, names: Iterable[str] = (),
                 tol: Optional[float] = None, same_dtype_ref: Optional[Tensors] = None) -> None:
    """Each ``out[i]`` within ``tol`` (default by dtype) of the float64 ``ref[i]``.

    With ``same_dtype_ref`` (the reference evaluated in ``dtype``), low-precision outputs must
    also be at most ``LOW_PRECISION_FACTOR`` x that reference's own error (plus a tiny floor).
    """
    outs, refs = _as_list(out), _as_list(ref)
    names = list(names) or [f"output {i}" for i in range(len(outs))]
    peers = _as_list(same_dtype_ref) if same_dtype_ref is not None else [None] * len(outs)
    bound = REL_TOL[dtype] if tol is None else tol
    for name, o, r, peer in zip(names, outs, refs, peers):
        if o is None or r is None:
            assert o is None and r is None, f"{name}: one side is None"
            continue
        err = rel_error(o, r)
        limit = max(bound, LOW_PRECISION_FACTOR * _rounding_error(r, o.dtype))
        assert err <= limit, f"{name}: relative error {err:.3e} > {limit:.1e} ({dtype})"
        if peer is not None and dtype in (torch.float16, torch.bfloat16):
            peer_err = rel_error(peer, r)
            limit = LOW_PRECISION_FACTOR * peer_err + 1e-4
            assert err <= limit, f"{name}: error {err:.3e} > {LOW_PRECISION_FACTOR}x torch's own {peer_err:.3e}"


def _rounding_error(ref: torch.Tensor, dtype: torch.dtype) -> float:
    """The error of the exact result merely stored in ``dtype``: no kernel can beat it. It exceeds
    the dtype's bound where the values fall below the normal range (fp16 gradients of ~1e-6, as
    the CLIP loss's feature gradients at n = 4096 without loss scaling)."""
    if not dtype.is_floating_point or dtype == torch.float64:
        return 0.0
    error = rel_error(ref.detach().to(dtype), ref)
    return error if math.isfinite(error) else 0.0  # (values out of the dtype's range loosen nothing)


def check_device() -> str:
    """Where a self-check case runs: the GPU where there is one, else the CPU (Triton interpreter)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def upcast(*tensors: Optional[torch.Tensor]) -> list[Optional[torch.Tensor]]:
    """float64 copies (grad-enabled where the original requires grad) for the reference run."""
    result = []
    for t in tensors:
        if t is None:
            result.append(None)
            continue
        c = t.detach().double()
        result.append(c.requires_grad_(t.requires_grad))
    return result


def grads(outputs: Tensors, inputs: Sequence[Optional[torch.Tensor]], cotangents: Tensors) -> list[Optional[torch.Tensor]]:
    """Gradients of sum(<output_i, cotangent_i>) w.r.t. each input (None for an input without grad)."""
    outs = _as_list(outputs)
    cots = [c.to(o.dtype) for o, c in zip(outs, _as_list(cotangents))]
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    found = iter(torch.autograd.grad(outs, wanted, cots, allow_unused=True))
    return [next(found) if (t is not None and t.requires_grad) else None for t in inputs]
