"""Test setup: the Triton interpreter on machines without a GPU; GPU tests skip cleanly.

Mark a test ``@pytest.mark.gpu`` when it needs a CUDA device. Without one, Triton kernels run
under ``TRITON_INTERPRET=1`` (set here, before triton is imported), in float32 and float16.
Mark it ``@pytest.mark.interpreter`` when it runs Triton on CPU tensors (forced interpreter
paths, CPU-only dispatch and refusals): on a GPU machine, where Triton takes CUDA tensors only,
it is skipped (the GPU tests cover those kernels there).
"""

import importlib.util
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    marker, reason = ("interpreter", "runs Triton on CPU tensors (interpreter only)") if HAS_CUDA else \
        ("gpu", "needs a CUDA device")
    skip = pytest.mark.skip(reason=reason)
    # On a GPU machine where vtkernels._C was not built, the GPU tests of the CUDA backend (a
    # backend="cuda" parameter, or the extension marker) skip and say why (tools/gpu_check.sh
    # fails its build step on its own when the build breaks). A built extension that fails to
    # import is a failure, not a skip.
    not_built = HAS_CUDA and importlib.util.find_spec("vtkernels._C") is None
    no_extension = pytest.mark.skip(reason="the CUDA extension vtkernels._C was not built") if not_built else None
    for item in items:
        if marker in item.keywords:
            item.add_marker(skip)
        elif no_extension and "gpu" in item.keywords and (_params(item).get("backend") == "cuda"
                                                          or "extension" in item.keywords):
            item.add_marker(no_extension)


def _params(item) -> dict:
    callspec = getattr(item, "callspec", None)
    return callspec.params if callspec is not None else {}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def device():
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the calls that reach vtkernels' attention (either form) / patch_embed / window_attention /
    patch_merging_norm / quick_gelu / mlp."""
    import vtkernels  # (here: the interpreter switch above must come before triton's import)

    counts = {"attention": 0, "patch_embed": 0, "window_attention": 0, "patch_merging_norm": 0, "quick_gelu": 0,
              "mlp": 0}
    # attention_qkv (the packed form) counts as attention.
    for name in (*counts, "attention_qkv"):
        original = getattr(vtkernels, name)

        def counting(*args, _name=name.replace("_qkv", ""), _original=original, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(vtkernels, name, counting)
    return counts
