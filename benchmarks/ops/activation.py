"""QuickGELU benchmark (CLIP / iGPT MLP activation): the fused op (Triton, CUDA) against eager
PyTorch's formula ``x * sigmoid(1.702 x)`` (three kernels; HF's QuickGELUActivation and timm's
QuickGELU run exactly this), and the same formula under torch.compile; forward and
forward+backward at the MLP hidden activations of the models that use it."""

from __future__ import annotations

import torch

import vtkernels
from benchmarks.harness import BenchCase

SHAPES = {  # (batch, tokens, hidden): the fc1 output
    "CLIP-B/16 image 256x197x3072": (256, 197, 3072),
    "CLIP-B/16 text 256x77x2048": (256, 77, 2048),
    "iGPT-S 32x1024x2048": (32, 1024, 2048),
}
DTYPE = torch.bfloat16


def _eager(x):
    return x * torch.sigmoid(1.702 * x)


def _providers():
    return {
        "vtkernels-triton": lambda x: vtkernels.quick_gelu(x, "triton"),
        "vtkernels-cuda": lambda x: vtkernels.quick_gelu(x, "cuda"),
        "torch": _eager,
        "torch.compile": torch.compile(_eager, dynamic=False),
    }


def _case(fn, shape, backward, holder):
    def make():
        x = torch.randn(shape, device="cuda", dtype=DTYPE, requires_grad=backward)
        if not backward:
            return lambda: fn(x)
        dy = torch.randn_like(x)
        holder[:] = [x]
        return lambda: fn(x).backward(dy)
    return make


def cases(quick: bool = False):
    size = torch.tensor([], dtype=DTYPE).element_size()
    shapes = dict(list(SHAPES.items())[:1]) if quick else SHAPES
    for label, shape in shapes.items():
        elements = shape[0] * shape[1] * shape[2]
        for provider, fn in _providers().items():
            # forward: read x, write y
            yield BenchCase("quick_gelu", label, "fwd", provider, _case(fn, shape, False, []),
                            bytes=2 * elements * size, baseline="torch")
            holder: list = []
            # forward + backward: read x, write y; read x, dy, write dx
            yield BenchCase("quick_gelu", label, "fwd+bwd", provider, _case(fn, shape, True, holder),
                            bytes=5 * elements * size, baseline="torch", grad_to_none=lambda holder=holder: holder)
