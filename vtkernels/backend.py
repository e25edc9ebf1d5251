"""Backend availability and per-call dispatch.

Every op has three implementations: ``reference`` (plain PyTorch, the spec), ``triton`` and
``cuda``. Each op builds an :class:`OpDispatcher` with one function that says why a kernel
backend may refuse a call; the dispatcher picks the first capable backend in the op's preference
order, or raises an error listing the reasons when the user forced one that cannot take the call.

The backend is chosen, first match wins, by the ``backend=`` argument of the call, by the
innermost ``with vtkernels.use_backend(name)`` block, by the ``VTKERNELS_BACKEND`` environment
variable, and otherwise automatically: on a CUDA tensor the op's preferred GPU backend that can
take the call, on a CPU tensor the reference.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import json
import os
from typing import Callable, Iterator, Optional, Sequence

import torch

from vtkernels.ops.checks import dtype_refusals

BACKENDS = ("reference", "triton", "cuda")
KERNEL_BACKENDS = ("triton", "cuda")
ENV_VAR = "VTKERNELS_BACKEND"

_context_backend: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "vtkernels_backend", default=None
)


class BackendError(RuntimeError):
    """A forced backend cannot take a call, or no backend can."""


def _validate_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """Force a backend for every op called inside the block (``None`` restores automatic)."""
    token = _context_backend.set(None if name is None else _validate_name(name))
    try:
        yield
    finally:
        _context_backend.reset(token)


# torch.compile evaluates the two lookups below once, while tracing, and bakes the answer into the
# graph: a compiled function keeps the backend it was compiled with.
@torch.compiler.assume_constant_result
def requested_backend(per_call: Optional[str] = None) -> Optional[str]:
    """The backend the user asked for, or ``None`` for automatic choice (each source read only
    when the ones before it are silent: this runs on every op call)."""
    choice = per_call if per_call is not None else _context_backend.get()
    if choice is None:
        choice = os.environ.get(ENV_VAR) or None
    return None if choice is None else _validate_name(choice)


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _import_failure(module: str) -> Optional[str]:
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any failure is a reason to report
        return f"import {module} failed: {type(exc).__name__}: {exc}"
    return None


def extension_failure() -> Optional[str]:
    """Why the compiled extension ``vtkernels._C`` cannot be used, or ``None``."""
    reason = _import_failure("vtkernels._C")
    if reason and "No module named 'vtkernels._C'" in reason:
        return "the CUDA extension vtkernels._C was not built (needs torch with CUDA and nvcc; see README)"
    return reason


@torch.compiler.assume_constant_result
def backend_unavailable(name: str, device_type: str) -> Optional[str]:
    """Why backend ``name`` cannot run on a ``device_type`` tensor at all, or ``None`` if it can."""
    if name == "reference":
        return None
    if name == "triton":
        reason = _import_failure("triton")
        if reason:
            return reason
        if device_type == "cuda":
            return None
        if device_type == "cpu" and triton_interpreter_enabled():
            return None
        return f"Triton needs a CUDA tensor (got {device_type}; set TRITON_INTERPRET=1 to interpret on the CPU)"
    if name == "cuda":
        if device_type != "cuda":
            return f"the CUDA backend needs a CUDA tensor (got {device_type})"
        return extension_failure()
    raise ValueError(f"unknown backend {name!r}")


# ``refusals(backend, **call)``: the reasons kernel backend ``backend`` cannot take a call with
# these keyword arguments (empty when it can).
RefusalCheck = Callable[..., Sequence[str]]

PREFERENCES_FILE = os.path.join(os.path.dirname(__file__), "preferences.json")


@functools.lru_cache(maxsize=None)
def measured_preferences() -> dict[str, list[str]]:
    """Per op, the kernel backends fastest first, as measured by ``benchmarks/run.py
    --update-preferences`` on a GPU (empty until a GPU run writes it)."""
    try:
        with open(PREFERENCES_FILE) as f:
            return json.load(f).get("ops", {})
    except (OSError, ValueError):
        return {}


class OpDispatcher:
    """Chooses the backend for one op.

    ``gpu_preference`` is the automatic order on CUDA tensors when no measurement exists
    (``preferences.json`` overrides it with the measured order); the reference always comes
    last. For a kernel backend (``triton`` or ``cuda``) that :func:`backend_unavailable` finds
    usable at all, the reasons it refuses a call are those of
    :func:`vtkernels.ops.checks.dtype_refusals` for the call's keyword argument named ``dtype_of``
    (the tensor whose dtype the kernels compute in), then those of ``refusals(backend, **call)``
    (the op's own limits). The reference takes every call.
    """

    def __init__(self, op: str, gpu_preference: Sequence[str], refusals: Optional[RefusalCheck] = None, *,
                 dtype_of: Optional[str] = None):
        self.op = op
        measured = measured_preferences().get(op)
        self.gpu_preference = tuple(measured or gpu_preference)
        self.kernel_refusals = refusals
        self.dtype_of = dtype_of

    def refusals(self, backend: str, device: torch.device, **call) -> list[str]:
        """Why ``backend`` cannot take this call on ``device`` (empty when it can)."""
        reason = backend_unavailable(backend, device.type)
        if reason:
            return [reason]
        if backend not in KERNEL_BACKENDS:
            return []
        reasons = dtype_refusals(call[self.dtype_of], backend) if self.dtype_of else []
        if self.kernel_refusals is not None:
            reasons += self.kernel_refusals(backend, **call)
        return reasons

    def choose(self, device: torch.device, backend: Optional[str] = None, **call) -> str:
        forced = requested_backend(backend)
        if forced is not None:
            reasons = self.refusals(forced, device, **call)
            if reasons:
                raise BackendError(f"{self.op}: backend {forced!r} cannot take this call: " + "; ".join(reasons))
            return forced
        if device.type == "cuda":
            for candidate in self.gpu_preference:
                if not self.refusals(candidate, device, **call):
                    return candidate
        return "reference"


def describe_backends() -> list[tuple[str, Optional[str]]]:
    """(backend, reason it is unavailable or None) on the default device, for ``info``."""
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    return [(name, backend_unavailable(name, device_type)) for name in BACKENDS]
