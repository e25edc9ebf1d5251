"""Correctness self-check of every op's kernels against the float64 reference.

Each module in vtkernels/ops/ may define ``selfcheck_cases(backend, dtypes)`` yielding
``(label, check)`` pairs; a check raises AssertionError on a mismatch. Without a GPU the Triton
kernels run under the Triton interpreter (float32/float16, small shapes), so this is the useful
main job of a machine without one. On a GPU it checks the Triton and (when built) CUDA kernels in
float32, float16 and bfloat16; its small shapes also make it the workload for compute-sanitizer
(tools/gpu_check.sh). A call the backend refuses (e.g. float32 on a bf16/fp16-only CUDA kernel)
is reported as skipped, with the reason.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import time
import traceback
from typing import Optional, Sequence


def _cases(backend: str, dtypes):
    import vtkernels.ops

    for info in pkgutil.iter_modules(vtkernels.ops.__path__):
        module = importlib.import_module(f"vtkernels.ops.{info.name}")
        if hasattr(module, "selfcheck_cases"):
            for label, check in module.selfcheck_cases(backend, dtypes):
                yield f"{info.name} [{backend}]: {label}", check


def default_backends() -> list[str]:
    """Triton everywhere (the interpreter on the CPU); CUDA too on a GPU where the extension loads."""
    import torch

    from vtkernels.backend import extension_failure

    return ["triton"] + (["cuda"] if torch.cuda.is_available() and extension_failure() is None else [])


def run(verbose: bool = True, backends: Optional[Sequence[str]] = None, dtypes=None) -> int:
    """Runs the cases of ``backends`` (default: default_backends()) in ``dtypes`` (default: float32
    and float16, plus bfloat16 on a GPU); 0 when all pass (and at least one ran), else 1."""
    import torch

    from vtkernels.backend import BackendError, triton_interpreter_enabled

    if not torch.cuda.is_available() and not triton_interpreter_enabled():
        # The interpreter must be chosen before triton is first imported (torch imports it):
        # start again with it switched on.
        os.environ["TRITON_INTERPRET"] = "1"
        sys.stdout.flush()
        argv = [*(["-v"] if verbose else []), *(["--backend", ",".join(backends)] if backends else [])]
        os.execv(sys.executable, [sys.executable, "-m", "vtkernels", "selfcheck", *argv])
    gpu = torch.cuda.is_available()
    backends = list(backends or default_backends())
    dtypes = dtypes or ((torch.float32, torch.float16, torch.bfloat16) if gpu else (torch.float32, torch.float16))
    where = "GPU" if gpu else "CPU (Triton interpreter)"
    print(f"vtkernels self-check on {where}: {', '.join(backends)} kernels vs the float64 reference")
    passed, skipped, failed = 0, 0, []
    for backend in backends:
        for label, check in _cases(backend, dtypes):
            start = time.perf_counter()
            torch.manual_seed(0)  # the same inputs every run: a failure is reproducible, never a fluke
            try:
                check()
            except BackendError as exc:
                skipped += 1
                print(f"  skip {label}: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - report every failing case
                failed.append(label)
                print(f"  FAIL {label}: {type(exc).__name__}: {exc}")
                if verbose:
                    traceback.print_exc()
                continue
            passed += 1
            print(f"  ok   {label} ({time.perf_counter() - start:.1f} s)")
    print(f"self-check: {passed} passed, {skipped} skipped, {len(failed)} failed")
    return 1 if failed or passed == 0 else 0
