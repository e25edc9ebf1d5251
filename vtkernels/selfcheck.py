"""Correctness self-check of every op's Triton kernels against the reference.

Each module in vtkernels/ops/ may define ``selfcheck_cases()`` yielding ``(label, check)``
pairs; a check raises AssertionError on a mismatch. Without a GPU the kernels run under the
Triton interpreter (float32/float16, small shapes), so this is the useful main job of a
machine without one.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import time
import traceback


def _cases():
    import vtkernels.ops

    for info in pkgutil.iter_modules(vtkernels.ops.__path__):
        module = importlib.import_module(f"vtkernels.ops.{info.name}")
        if hasattr(module, "selfcheck_cases"):
            for label, check in module.selfcheck_cases():
                yield f"{info.name}: {label}", check


def run(verbose: bool = True) -> int:
    import torch

    from vtkernels.backend import triton_interpreter_enabled

    if not torch.cuda.is_available() and not triton_interpreter_enabled():
        # The interpreter must be chosen before triton is first imported (torch imports it):
        # start again with it switched on.
        os.environ["TRITON_INTERPRET"] = "1"
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "vtkernels", "selfcheck", *(["-v"] if verbose else [])])
    where = "GPU" if torch.cuda.is_available() else "CPU (Triton interpreter)"
    print(f"vtkernels self-check on {where}: Triton kernels vs the float64 reference")
    passed, failed = 0, []
    for label, check in _cases():
        start = time.perf_counter()
        torch.manual_seed(0)  # the same inputs every run: a failure is reproducible, never a fluke
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - report every failing case
            failed.append(label)
            print(f"  FAIL {label}: {type(exc).__name__}: {exc}")
            if verbose:
                traceback.print_exc()
            continue
        passed += 1
        print(f"  ok   {label} ({time.perf_counter() - start:.1f} s)")
    print(f"self-check: {passed} passed, {len(failed)} failed")
    return 1 if failed or passed == 0 else 0
