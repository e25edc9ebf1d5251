"""Patch embedding benchmark: the fused op (Triton, CUDA) against the timm path (Conv2d + flatten +
cat cls + add pos, the baseline "torch"), the same with channels_last + cudnn.benchmark, and the
unfold + matmul formulation eager and under torch.compile; uint8 input against normalize-then-conv;
forward and forward+backward (grads of weight, bias, cls, pos: the training case)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import vtkernels
from benchmarks.harness import BenchCase

SHAPES = {  # label: (batch, image side, patch, dim, cls + pos)
    "ViT-B/16 256x224": (256, 224, 16, 768, True),
    "ViT-L/14 256x336": (256, 336, 14, 1024, True),
    "Swin-T/4 256x224": (256, 224, 4, 96, False),
}
DTYPE = torch.bfloat16
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _timm(x, w, b, cls, pos, patch):
    tokens = F.conv2d(x, w, b, stride=patch).flatten(2).transpose(1, 2)
    if cls is not None:
        tokens = torch.cat([cls.expand(x.shape[0], -1, -1), tokens], dim=1)
    return tokens if pos is None else tokens + pos


def _cudnn_benchmark(x, w, b, cls, pos, patch):
    with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=True):
        return _timm(x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last),
                     b, cls, pos, patch)


def _unfold_matmul(x, w, b, cls, pos, patch):
    batch, channels, height, width = x.shape
    gh, gw = height // patch, width // patch
    patches = x.view(batch, channels, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5).reshape(batch * gh * gw, -1)
    tokens = torch.addmm(b, patches, w.view(w.shape[0], -1).t()).view(batch, gh * gw, -1)
    if cls is not None:
        tokens = torch.cat([cls.expand(batch, -1, -1), tokens], dim=1)
    return tokens if pos is None else tokens + pos


def _providers():
    return {
        "torch": _timm,
        "torch-channels_last-cudnn.benchmark": _cudnn_benchmark,
        "unfold+matmul": _unfold_matmul,
        "unfold+matmul torch.compile": torch.compile(_unfold_matmul, dynamic=False),
        "vtkernels-triton": lambda x, w, b, cls, pos, p: vtkernels.patch_embed(x, w, b, p, cls, pos, backend="triton"),
        "vtkernels-cuda": lambda x, w, b, cls, pos, p: vtkernels.patch_embed(x, w, b, p, cls, pos, backend="cuda"),
    }


def _inputs(shape, requires_grad, channels_last=False):
    """Images (in channels_last memory for that peer: a data loader can deliver them so, and the
    conversion is no part of the convolution), weight, bias, cls token, position embedding."""
    batch, side, patch, dim, with_tokens = shape
    num_patches = (side // patch) ** 2

    def param(*s):
        return (torch.randn(*s, device="cuda") * 0.02).to(DTYPE).requires_grad_(requires_grad)

    x = torch.randn(batch, 3, side, side, device="cuda", dtype=DTYPE)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    cls = param(1, 1, dim) if with_tokens else None
    pos = param(1, num_patches + 1, dim) if with_tokens else None
    return x, param(dim, 3, patch, patch), param(dim), cls, pos


def _flops_bytes(shape):
    batch, side, patch, dim, with_tokens = shape
    rows = batch * (side // patch) ** 2
    flops = 2 * rows * 3 * patch * patch * dim
    size = torch.tensor([], dtype=DTYPE).element_size()
    bytes_moved = (batch * 3 * side * side + (rows + batch * with_tokens) * dim) * size
    return flops, bytes_moved


def _forward_case(fn, shape, channels_last):
    def make():
        x, w, b, cls, pos = _inputs(shape, False, channels_last)
        return lambda: fn(x, w, b, cls, pos, shape[2])
    return make


def _train_case(fn, shape, holder, channels_last):
    def make():
        x, w, b, cls, pos = _inputs(shape, True, channels_last)
        dy = torch.randn_like(fn(x, w, b, cls, pos, shape[2]))
        holder[:] = [t for t in (w, b, cls, pos) if t is not None]
        return lambda: fn(x, w, b, cls, pos, shape[2]).backward(dy)
    return make


def _uint8_cases(label, shape):
    batch, side, patch, dim, _ = shape
    flops, _ = _flops_bytes(shape)
    rows = batch * (side // patch) ** 2

    def normalize_then_conv(u8, w, b, cls, pos, mean, std):
        x = (u8.permute(0, 3, 1, 2).float() / 255 - mean[:, None, None]) / std[:, None, None]
        return _timm(x.to(DTYPE), w, b, cls, pos, patch)

    fused = {
        "torch": normalize_then_conv,
        "torch.compile": torch.compile(normalize_then_conv, dynamic=False),
        "vtkernels-triton": lambda u8, w, b, cls, pos, mean, std: vtkernels.patch_embed(
            u8, w, b, patch, cls, pos, mean, std, backend="triton"),
        "vtkernels-cuda": lambda u8, w, b, cls, pos, mean, std: vtkernels.patch_embed(
            u8, w, b, patch, cls, pos, mean, std, backend="cuda"),
    }
    for provider, fn in fused.items():
        def make(fn=fn):
            _, w, b, cls, pos = _inputs(shape, False)
            u8 = torch.randint(0, 256, (batch, side, side, 3), device="cuda", dtype=torch.uint8)
            mean, std = torch.tensor(MEAN, device="cuda"), torch.tensor(STD, device="cuda")
            return lambda: fn(u8, w, b, cls, pos, mean, std)
        yield BenchCase("patch_embed_uint8", label, "fwd", provider, make, flops=flops,
                        bytes=batch * side * side * 3 + (rows + batch) * dim * 2)


def cases(quick: bool = False):
    shapes = dict(list(SHAPES.items())[:1]) if quick else SHAPES
    for label, shape in shapes.items():
        flops, bytes_moved = _flops_bytes(shape)
        for provider, fn in _providers().items():
            channels_last = "channels_last" in provider
            yield BenchCase("patch_embed", label, "fwd", provider, _forward_case(fn, shape, channels_last), flops=flops,
                            bytes=bytes_moved)
            holder: list = []
            # forward + d weight (the images need no gradient when training): 2x the forward FLOPs
            yield BenchCase("patch_embed", label, "fwd+bwd", provider, _train_case(fn, shape, holder, channels_last),
                            flops=2 * flops, grad_to_none=lambda holder=holder: holder)
        yield from _uint8_cases(label, shape)
