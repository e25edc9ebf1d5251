"""Norm op benchmark: LayerNorm forward and forward+backward, RMSNorm, and the fused residual
add + LayerNorm, against torch's layer_norm, torch.compile, and Liger-Kernel when importable."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import vtkernels
from benchmarks.harness import BenchCase

SHAPES = {  # (batch, tokens, hidden)
    "ViT-B 256x197x768": (256, 197, 768),
    "ViT-L 64x577x1024": (64, 577, 1024),
    "ViT-H 64x257x1280": (64, 257, 1280),
    "iGPT-S 32x1024x512": (32, 1024, 512),
}
DTYPE = torch.bfloat16


def _liger_layer_norm():
    try:
        from liger_kernel.ops.layer_norm import LigerLayerNormFunction
    except Exception:  # noqa: BLE001 - absent or broken (a carried wheel): the peer is left out
        return None
    return lambda x, w, b: LigerLayerNormFunction.apply(x, w, b, 1e-5)


def _compiled(fn):
    return torch.compile(fn, dynamic=False)


def _providers():
    providers = {
        "vtkernels-triton": lambda x, w, b: vtkernels.layer_norm(x, w, b, backend="triton"),
        "vtkernels-cuda": lambda x, w, b: vtkernels.layer_norm(x, w, b, backend="cuda"),
        "torch": lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b),
        "torch.compile": _compiled(lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b)),
    }
    liger = _liger_layer_norm()
    if liger:
        providers["liger"] = liger
    return providers


def _inputs(shape, requires_grad):
    x = torch.randn(shape, device="cuda", dtype=DTYPE, requires_grad=requires_grad)
    w = torch.randn(shape[-1], device="cuda", dtype=DTYPE, requires_grad=requires_grad)
    b = torch.randn(shape[-1], device="cuda", dtype=DTYPE, requires_grad=requires_grad)
    return x, w, b


def _forward_case(fn, shape):
    def make():
        x, w, b = _inputs(shape, False)
        return lambda: fn(x, w, b)
    return make


def _fwd_bwd_case(fn, shape, holder):
    def make():
        x, w, b = _inputs(shape, True)
        dy = torch.randn_like(x)
        holder[:] = [x, w, b]
        return lambda: fn(x, w, b).backward(dy)
    return make


def _add_layer_norm(x, r, w, b):
    h = x + r
    return F.layer_norm(h, (x.shape[-1],), w, b), h


def _residual_cases(label, shape, elements, size):
    fused = {
        "vtkernels-triton": lambda x, r, w, b: vtkernels.layer_norm(x, w, b, residual=r, backend="triton"),
        "vtkernels-cuda": lambda x, r, w, b: vtkernels.layer_norm(x, w, b, residual=r, backend="cuda"),
        "torch": _add_layer_norm,
    }
    fused["torch.compile"] = _compiled(fused["torch"])
    for provider, fn in fused.items():
        def make(fn=fn):
            x, w, b = _inputs(shape, False)
            r = torch.randn_like(x)
            return lambda: fn(x, r, w, b)
        # read x, r; write y, h
        yield BenchCase("add_layer_norm", label, "fwd", provider, make, bytes=4 * elements * size)


def cases(quick: bool = False):
    size = torch.tensor([], dtype=DTYPE).element_size()
    shapes = dict(list(SHAPES.items())[:1]) if quick else SHAPES
    providers = _providers()
    for label, shape in shapes.items():
        elements = shape[0] * shape[1] * shape[2]
        for provider, fn in providers.items():
            # forward: read x, write y
            yield BenchCase("layer_norm", label, "fwd", provider, _forward_case(fn, shape), bytes=2 * elements * size)
            holder: list = []
            # forward + backward, "effective": read x, write y; read x, dy, write dx
            yield BenchCase("layer_norm", label, "fwd+bwd", provider, _fwd_bwd_case(fn, shape, holder),
                            bytes=5 * elements * size, grad_to_none=lambda holder=holder: holder)
        yield from _residual_cases(label, shape, elements, size)
    label, shape = "iGPT-S 32x1024x512", SHAPES["iGPT-S 32x1024x512"]
    rms = {
        "vtkernels-triton": lambda x, w, b: vtkernels.rms_norm(x, w, backend="triton"),
        "vtkernels-cuda": lambda x, w, b: vtkernels.rms_norm(x, w, backend="cuda"),
        "torch": lambda x, w, b: F.rms_norm(x, (x.shape[-1],), w, 1e-5),
    }
    rms["torch.compile"] = _compiled(rms["torch"])
    for provider, fn in rms.items():
        elements = shape[0] * shape[1] * shape[2]
        yield BenchCase("rms_norm", label, "fwd", provider, _forward_case(fn, shape), bytes=2 * elements * size)
