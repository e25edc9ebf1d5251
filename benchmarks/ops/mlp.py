"""MLP benchmark, ``fc2(act(fc1(x)))`` at the MLP shapes of the models: the fused op (Triton, CUDA:
activation in fc1's GEMM epilogue, its derivative in the d h GEMM's) against the unfused path
eager (provider ``vtkernels-reference``: ``F.linear`` -> activation -> ``F.linear``, exactly what
timm's and HF's MLPs run; it is also the op's reference backend, so a measured preference order can
keep it) and under torch.compile (which runs the bias + activation as its own pointwise kernel).
Forward and forward+backward (gradients of x and all four parameters), bf16; FLOPs are those of
the two (forward) or six (forward+backward) GEMMs of 2·M·dim·hidden each."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import vtkernels
from benchmarks.harness import BenchCase
from vtkernels.reference.activation import activation as apply_activation

SHAPES = {  # label: (rows M, dim, hidden, activation)
    "ViT-B/16 256x197 768->3072 gelu": (256 * 197, 768, 3072, "gelu"),
    "CLIP-B/16 text 256x77 512->2048 quick_gelu": (256 * 77, 512, 2048, "quick_gelu"),
    "CLIP-L/14@336 32x577 1024->4096 quick_gelu": (32 * 577, 1024, 4096, "quick_gelu"),
    "Swin-T stage1 256x3136 96->384 gelu": (256 * 3136, 96, 384, "gelu"),
    "iGPT-S 32x1024 512->2048 quick_gelu": (32 * 1024, 512, 2048, "quick_gelu"),
    "DETR enc 8x850 256->2048 relu": (8 * 850, 256, 2048, "relu"),
}
DTYPE = torch.bfloat16


def _unfused(x, w1, b1, w2, b2, activation):
    return F.linear(apply_activation(F.linear(x, w1, b1), activation), w2, b2)


def _providers():
    compiled = torch.compile(_unfused, dynamic=False)
    return {
        "vtkernels-triton": lambda *a: vtkernels.mlp(*a, backend="triton"),
        "vtkernels-cuda": lambda *a: vtkernels.mlp(*a, backend="cuda"),
        "vtkernels-reference": lambda *a: vtkernels.mlp(*a, backend="reference"),
        "torch.compile": compiled,
    }


def _case(fn, rows, dim, hidden, activation, backward, holder):
    def make():
        def param(*shape):
            return (torch.randn(shape, device="cuda") * shape[-1] ** -0.5).to(DTYPE).requires_grad_(backward)

        tensors = [param(rows, dim), param(hidden, dim), param(hidden), param(dim, hidden), param(dim)]
        if not backward:
            return lambda: fn(*tensors, activation)
        grad = torch.randn(rows, dim, device="cuda", dtype=DTYPE)
        holder[:] = tensors
        return lambda: fn(*tensors, activation).backward(grad)
    return make


def cases(quick: bool = False):
    shapes = dict(list(SHAPES.items())[:1]) if quick else SHAPES
    for label, (rows, dim, hidden, activation) in shapes.items():
        gemm = 2 * rows * dim * hidden
        for provider, fn in _providers().items():
            yield BenchCase("mlp", label, "fwd", provider, _case(fn, rows, dim, hidden, activation, False, []),
                            flops=2 * gemm, baseline="vtkernels-reference")
            holder: list = []
            yield BenchCase("mlp", label, "fwd+bwd", provider, _case(fn, rows, dim, hidden, activation, True, holder),
                            flops=6 * gemm, baseline="vtkernels-reference", grad_to_none=lambda holder=holder: holder)
