"""Lazy access to the kernels, so that ``import vtkernels`` never fails without the compiled
extension or Triton: an op's kernel functions are looked up when a call first needs them.

Triton launches on the current CUDA device: with several GPUs, the Triton kernel functions
handed out make the first tensor argument's GPU current for the call, so tensors on ``cuda:1``
work without ``torch.cuda.set_device(1)`` (the extension's entry points guard their device
themselves: ``DeviceGuard`` in csrc/cuda_context.h). One GPU: the functions as they are, no
per-call cost."""

from __future__ import annotations

import contextlib
import functools
import importlib
from typing import Callable, Sequence

import torch

from vtkernels.backend import BackendError, extension_failure


@functools.cache
def _several_gpus() -> bool:
    return torch.cuda.device_count() > 1


def on_device_of(t: torch.Tensor):
    """A context in which ``t``'s GPU is the current device (a no-op for one GPU or a CPU tensor)."""
    if t.device.type == "cuda" and _several_gpus():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def device_guarded(fn: Callable) -> Callable:
    """``fn`` run on the GPU of its first tensor argument (see the module docstring)."""
    if not _several_gpus():
        return fn

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        with contextlib.nullcontext() if first is None else on_device_of(first):
            return fn(*args, **kwargs)
    return guarded


def load_extension():
    reason = extension_failure()
    if reason:
        raise BackendError(reason)
    return importlib.import_module("vtkernels._C")


# A constant to torch.compile: the dispatch code that asks runs while Dynamo traces, and Dynamo
# cannot trace the import behind it.
@torch.compiler.assume_constant_result
def extension_has(function: str) -> bool:
    """Whether the built extension has ``function`` (False without one, or one built before it)."""
    return extension_failure() is None and hasattr(load_extension(), function)


@functools.cache
def _triton_functions(module_name: str, names: tuple[str, ...]) -> tuple[Callable, ...]:
    """Looked up once: an op's call pays a dictionary lookup, not an import and a wrap."""
    module = importlib.import_module(module_name)
    return tuple(device_guarded(getattr(module, name)) for name in names)


def kernel_functions(backend: str, *, triton_module: str, triton: Sequence[str],
                     cuda: Sequence[str]) -> tuple[Callable, ...]:
    """An op's kernel entry points on ``backend``, in the order named: the functions ``triton``
    of module ``triton_module`` (e.g. ``"vtkernels.triton.norm"``), or the functions ``cuda`` of
    the extension ``vtkernels._C``."""
    if backend == "triton":
        return _triton_functions(triton_module, tuple(triton))
    if backend == "cuda":
        ext = load_extension()
        return tuple(getattr(ext, name) for name in cuda)
    raise ValueError(f"no kernels on backend {backend!r} (kernel backends: triton, cuda)")
