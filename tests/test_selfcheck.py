"""`python -m vtkernels selfcheck`: every op's cases take the backend and dtypes to check, and a
backend that cannot take a call is reported as skipped (with the reason), never as passing."""

import inspect

import pytest
import torch

from vtkernels import selfcheck
from vtkernels.__main__ import main


def test_every_op_with_kernels_has_cases_for_any_backend():
    ops = {label.split(" [")[0] for label, _ in selfcheck._cases("cuda", (torch.float16,))}
    assert ops == {"activation", "attention", "clip_loss", "detr_cost", "mlp", "norm", "palette", "patch_embed",
                   "patch_merging", "window_attention"}
    for label, check in selfcheck._cases("triton", (torch.bfloat16,)):
        params = inspect.signature(check).parameters.values()
        assert "[triton]" in label and "bfloat16" in label
        assert all(p.default is not inspect.Parameter.empty for p in params), label  # called with no arguments


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the CUDA backend may be built")
def test_a_backend_that_takes_nothing_fails_the_selfcheck(capsys):
    assert main(["selfcheck", "--backend", "cuda"]) == 1  # nothing passed: not a success
    out = capsys.readouterr().out
    assert "0 passed" in out and " 0 failed" in out
    assert "skip norm [cuda]: layer_norm torch.float32: layer_norm: backend 'cuda' cannot take this call" in out
