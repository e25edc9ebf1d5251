"""tools/tune.py's sweep on the CPU (Triton interpreter, a stand-in timer): every candidate reaches
the kernel it configures, results are checked against the default's, launch_config is restored."""

import importlib.util
import itertools
import os
import sys

import pytest
import torch

TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "tune.py")


@pytest.fixture
def tune(monkeypatch):
    spec = importlib.util.spec_from_file_location("vtk_tune", TOOL)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "vtk_tune", module)  # (its dataclass looks itself up there)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "DEVICE", "cpu")
    monkeypatch.setattr(module, "DTYPE", torch.float16)
    monkeypatch.setattr(module, "time_ms", lambda fn: (fn(), 1.0)[1])
    return module


def _recording(target):
    seen = []
    configure = target.configure

    def record(default, args, kwargs, candidate):
        seen.append(dict(candidate))
        return configure(default, args, kwargs, candidate)

    target.configure = record
    return seen


@pytest.mark.parametrize("op, spec, kernel, grid", [
    ("norm", (2, 7, 48), "fwd", {"BLOCK_ROWS": (1, 4), "num_warps": (2, 4)}),
    ("norm", (2, 7, 48), "bwd", {"BLOCK_ROWS": (2, 8), "num_warps": (4,)}),
    ("window_attention", (1, 14, 32, 2, 7), "bwd", {"BLOCK_M": (16, 32), "BLOCK_N": (64, 128), "num_warps": (4,),
                                                    "num_stages": (1,)}),
    ("window_attention", (1, 14, 32, 2, 7), "fwd", {"BLOCK_M": (32, 64), "BLOCK_N": (64, 128), "num_warps": (4,),
                                                    "num_stages": (1,)}),
    ("window_attention", (1, 24, 32, 1, 12), "fwd", {"BLOCK_M": (32, 64), "num_warps": (4,), "num_stages": (1,)}),
    ("attention", (1, 2, 40, 40, 32, True, False), "dkdv",
     {"BLOCK_M": (16, 32), "BLOCK_N": (32,), "num_warps": (4,), "num_stages": (2,)}),
    ("clip_loss", (40, 32), "tile", {"BLOCK_M": (16,), "BLOCK_N": (16, 32), "num_warps": (4,), "TMA": (True, False)}),
    ("clip_loss", (40, 32), "strip", {"BLOCK_M": (16,), "BLOCK_N": (16, 32), "num_warps": (4,), "TMA": (True, False)}),
    ("patch_embed", (2, 32, 8, 32, True), "fwd", {"BLOCK_M": (16, 32), "BLOCK_N": (32,), "BLOCK_K": (16,)}),
    ("patch_embed", (2, 32, 8, 32, False), "bwd_weight", {"BLOCK_M": (16, 32), "BLOCK_N": (32,), "BLOCK_K": (32,)}),
    ("patch_embed", (2, 32, 8, 32, True), "bwd_images", {"BLOCK_M": (16, 32), "BLOCK_N": (32,), "BLOCK_K": (32,)}),
    ("mlp", (40, 32, 48, "gelu"), "fwd", {"BLOCK_M": (16, 32), "BLOCK_N": (32,), "BLOCK_K": (16,),
                                          "TMA": (True, False)}),
    ("mlp", (40, 32, 48, "quick_gelu"), "bwd", {"BLOCK_M": (16,), "BLOCK_N": (16, 32), "BLOCK_K": (32,),
                                                "TMA": (True, False)}),
])
@pytest.mark.interpreter
def test_every_candidate_reaches_its_kernel(tune, op, spec, kernel, grid):
    target = tune.TARGETS[op]()
    originals = [module.launch_config for module in target.modules]
    target.candidates = {kernel: grid}
    seen = _recording(target)
    result = tune.tune(target, "tiny", spec, kernel)
    assert all(r["ok"] for r in result["all"]), result["all"]
    every = {tuple(zip(grid, values)) for values in itertools.product(*grid.values())}
    assert every <= {tuple(c.items()) for c in seen}
    assert result["best"] is not None and any(r["default"] for r in result["all"])
    assert [module.launch_config for module in target.modules] == originals


def test_grid_override_parses_integers_and_booleans(tune):
    assert tune._grid_override("BLOCK_M=16,32") == ("BLOCK_M", (16, 32))
    assert tune._grid_override("TMA=False") == ("TMA", (False,))
