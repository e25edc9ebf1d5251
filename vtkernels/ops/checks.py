"""Input validation shared by every op: each error names the offending argument."""

from __future__ import annotations

from typing import Iterable, Optional

import torch

# Dtypes the kernels take; the reference also takes float64 (the tests' ground truth).
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FLOAT_DTYPES = KERNEL_DTYPES + (torch.float64,)
# Dtypes the Triton interpreter on the CPU computes correctly (bf16 is broken there).
INTERPRETER_DTYPES = (torch.float32, torch.float16)
# CUDA's limit on a launch grid's y and z dimensions (x allows 2^31 - 1): the kernels put batch,
# heads or windows there.
MAX_GRID_Y = 65535


def check_tensor(name: str, t: torch.Tensor, *, dtypes: Iterable[torch.dtype] = FLOAT_DTYPES, ndim: Optional[int] = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    dtypes = tuple(dtypes)
    if t.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {t.dtype}; supported: {', '.join(str(d) for d in dtypes)}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")


def check_same_device(reference_name: str, reference: torch.Tensor, **others: Optional[torch.Tensor]) -> None:
    for name, t in others.items():
        if t is not None and t.device != reference.device:
            raise ValueError(f"{name} is on {t.device} but {reference_name} is on {reference.device}")


def check_same_dtype(reference_name: str, reference: torch.Tensor, **others: Optional[torch.Tensor]) -> None:
    for name, t in others.items():
        if t is not None and t.dtype != reference.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {reference_name} has {reference.dtype}; cast one of them")


def check_shape(name: str, t: Optional[torch.Tensor], expected: tuple[int, ...]) -> None:
    if t is not None and tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(t.shape)}")


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def dtype_refusals(t: torch.Tensor, backend: str) -> list[str]:
    """Reasons a kernel backend refuses ``t``'s dtype on its device; every op's dispatcher applies it
    to the tensor named by its ``dtype_of`` (see :class:`vtkernels.backend.OpDispatcher`)."""
    if t.device.type == "cpu" and backend == "triton" and t.dtype not in INTERPRETER_DTYPES:
        return [f"the Triton interpreter on the CPU computes {t.dtype} wrongly; use float32/float16 there"]
    if t.dtype not in KERNEL_DTYPES:
        return [f"{backend} kernels take float32/float16/bfloat16, got {t.dtype}"]
    return []


def check_index_range(name: str, t: torch.Tensor, upper: int) -> None:
    """Integer ids in ``[0, upper)``. Costs one host sync, so it is skipped while compiling or
    capturing a CUDA graph (hot loops such as a sampler step)."""
    if t.numel() == 0 or torch.compiler.is_compiling():
        return
    if t.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    low, high = int(t.min()), int(t.max())
    if low < 0 or high >= upper:
        raise ValueError(f"{name} must lie in [0, {upper}), got values in [{low}, {high}]")


def unit_stride(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``t`` with unit stride in its last dimension, which the kernels read contiguously (rows,
    head_dim, weights, biases): a view such as ``w[::2]`` is copied, anything else (None too)
    passes as it is."""
    return t if t is None or t.stride(-1) == 1 else t.contiguous()
