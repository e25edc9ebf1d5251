"""Lazy access to the kernels, so that ``import vtkernels`` never fails without the compiled
extension or Triton: an op's kernel functions are looked up when a call first needs them."""

from __future__ import annotations

import importlib
from typing import Callable, Sequence

from vtkernels.backend import BackendError, extension_failure


def load_extension():
    reason = extension_failure()
    if reason:
        raise BackendError(reason)
    return importlib.import_module("vtkernels._C")


def kernel_functions(backend: str, *, triton_module: str, triton: Sequence[str],
                     cuda: Sequence[str]) -> tuple[Callable, ...]:
    """An op's kernel entry points on ``backend``, in the order named: the functions ``triton``
    of module ``triton_module`` (e.g. ``"vtkernels.triton.norm"``), or the functions ``cuda`` of
    the extension ``vtkernels._C``."""
    if backend == "triton":
        module = importlib.import_module(triton_module)
        return tuple(getattr(module, name) for name in triton)
    if backend == "cuda":
        ext = load_extension()
        return tuple(getattr(ext, name) for name in cuda)
    raise ValueError(f"no kernels on backend {backend!r} (kernel backends: triton, cuda)")
