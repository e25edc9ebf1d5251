"""iGPT colour palette: uint8 images -> token ids (nearest of K colour clusters) and back.

``palette_quantize(image, clusters)`` replaces HF ImageGPTImageProcessor's normalise + colour
quantize (a (pixels x K) distance matrix in memory) by one pass: uint8 in, ids out.
``palette_dequantize(tokens, clusters, image_size)`` is its inverse (the HF sampling example's
``rint(127.5 * (clusters[ids] + 1))``). Neither is differentiable (integers in or out).

The kernel backends run behind the custom ops ``vtkernels::palette_quantize`` and
``vtkernels::palette_dequantize`` (fake implementations for ``torch.compile``); the reference
is plain PyTorch.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from vtkernels._extension import device_guarded, kernel_functions, load_extension
from vtkernels.backend import OpDispatcher
from vtkernels.ops import checks
from vtkernels.ops.registration import forward_call
from vtkernels.reference import palette as reference_palette

LAYOUTS = ("nchw", "nhwc")
TOKEN_DTYPES = (torch.int64, torch.int32)


def _kernel_refusals(backend: str, batch: int, **_) -> list[str]:
    if batch > checks.MAX_GRID_Y:  # both backends launch (pixel blocks, images)
        return [f"batch {batch} > {checks.MAX_GRID_Y} (one grid row per image)"]
    return []


# CUDA first without a measurement: its ids equal the fp32 reference bit for bit (no FMA contraction).
dispatcher = OpDispatcher("palette", gpu_preference=("cuda", "triton"), dtype_of="clusters",
                          refusals=_kernel_refusals)


@torch.library.custom_op("vtkernels::palette_quantize", mutates_args=())
def palette_quantize_op(pixels: Tensor, clusters: Tensor, backend: str) -> Tensor:
    """pixels: (B, N, 3) uint8 (any strides); clusters (K, 3) contiguous. Returns (B, N) int64."""
    (quantize,) = kernel_functions(backend, triton_module="vtkernels.triton.palette", triton=("quantize",),
                                   cuda=("palette_quantize",))
    return quantize(pixels, clusters)


@palette_quantize_op.register_fake
def _(pixels, clusters, backend):
    return pixels.new_empty(pixels.shape[:2], dtype=torch.int64)


@torch.library.custom_op("vtkernels::palette_dequantize", mutates_args=())
def palette_dequantize_op(tokens: Tensor, clusters: Tensor, channels_first: bool, backend: str) -> Tensor:
    """tokens (B, N) contiguous; returns uint8 (B, 3, N) if channels_first else (B, N, 3)."""
    if backend == "cuda":
        return load_extension().palette_dequantize(tokens, clusters, channels_first)
    from vtkernels.triton import palette as triton_palette

    batch, n = tokens.shape
    shape = (batch, 3, n) if channels_first else (batch, n, 3)
    out = torch.empty(shape, dtype=torch.uint8, device=tokens.device)
    device_guarded(triton_palette.dequantize)(tokens, clusters, out.transpose(1, 2) if channels_first else out)
    return out


@palette_dequantize_op.register_fake
def _(tokens, clusters, channels_first, backend):
    batch, n = tokens.shape
    return tokens.new_empty((batch, 3, n) if channels_first else (batch, n, 3), dtype=torch.uint8)


call_palette_quantize, call_palette_dequantize = forward_call(palette_quantize_op), forward_call(palette_dequantize_op)


def _check_clusters(clusters: Tensor, reference: Tensor, reference_name: str) -> None:
    checks.check_tensor("clusters", clusters, ndim=2)
    if clusters.shape[1] != 3 or clusters.shape[0] == 0:
        raise ValueError(f"clusters must have shape (K, 3) with K >= 1, got {tuple(clusters.shape)}")
    checks.check_same_device(reference_name, reference, clusters=clusters)


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def palette_quantize(image: Tensor, clusters: Tensor, layout: str = "nchw", backend: Optional[str] = None) -> Tensor:
    """uint8 RGB images -> (B, H*W) int64 ids of the nearest colour cluster (raster order).

    ``image``: uint8 (B, 3, H, W) for ``layout="nchw"`` or (B, H, W, 3) for ``"nhwc"``, any
    strides. ``clusters``: (K, 3) colours in [-1, 1] (iGPT's 512-colour palette). A pixel ``p``
    is compared as ``p / 127.5 - 1`` (HF ImageGPTImageProcessor); ties go to the lowest id.
    """
    _check_layout(layout)
    checks.check_tensor("image", image, dtypes=(torch.uint8,), ndim=4)
    channel_dim = 1 if layout == "nchw" else 3
    if image.shape[channel_dim] != 3:
        raise ValueError(f"image must have 3 channels in dim {channel_dim} for layout {layout!r}, "
                         f"got shape {tuple(image.shape)}")
    _check_clusters(clusters, image, "image")
    pixels = image.flatten(2).transpose(1, 2) if layout == "nchw" else image.flatten(1, 2)  # (B, N, 3)
    chosen = dispatcher.choose(image.device, backend, clusters=clusters, batch=image.shape[0])
    if chosen == "reference":
        return reference_palette.palette_quantize(pixels, clusters)
    return call_palette_quantize(pixels, clusters.contiguous(), chosen)


def palette_dequantize(tokens: Tensor, clusters: Tensor, image_size: tuple[int, int], layout: str = "nchw",
                       backend: Optional[str] = None) -> Tensor:
    """(B, H*W) cluster ids -> uint8 images (B, 3, H, W) or (B, H, W, 3): ``rint(127.5 * (c + 1))``."""
    _check_layout(layout)
    checks.check_tensor("tokens", tokens, dtypes=TOKEN_DTYPES, ndim=2)
    _check_clusters(clusters, tokens, "tokens")
    height, width = image_size
    if height * width != tokens.shape[1]:
        raise ValueError(f"tokens has {tokens.shape[1]} ids per image but image_size={tuple(image_size)} "
                         f"needs {height * width}")
    checks.check_index_range("tokens", tokens, clusters.shape[0])  # one id per cluster
    batch = tokens.shape[0]
    chosen = dispatcher.choose(tokens.device, backend, clusters=clusters, batch=batch)
    if chosen == "reference":
        pixels = reference_palette.palette_dequantize(tokens, clusters)  # (B, N, 3)
        if layout == "nchw":
            return pixels.transpose(1, 2).reshape(batch, 3, height, width)
        return pixels.reshape(batch, height, width, 3)
    out = call_palette_dequantize(tokens.contiguous(), clusters.contiguous(), layout == "nchw", chosen)
    return out.view(batch, 3, height, width) if layout == "nchw" else out.view(batch, height, width, 3)


def selfcheck_cases(backend: str = "triton", dtypes=(torch.float32, torch.float16)):
    """Kernel-vs-reference checks (ids and pixels, bit-exact) for `python -m vtkernels selfcheck`."""
    from vtkernels.testing import check_device

    def check(cluster_dtype):
        device = check_device()
        clusters = (torch.rand(70, 3, device=device) * 2 - 1).to(cluster_dtype)
        clusters[60:] = clusters[:10]  # duplicates: the lowest id must win
        image = torch.randint(0, 256, (2, 3, 9, 13), dtype=torch.uint8, device=device)
        ids = palette_quantize(image, clusters, backend=backend)
        expected = palette_quantize(image, clusters, backend="reference")
        assert torch.equal(ids, expected), f"ids differ at {(ids != expected).sum().item()} pixels"
        for layout in ("nchw", "nhwc"):
            out = palette_dequantize(ids, clusters, (9, 13), layout=layout, backend=backend)
            assert torch.equal(out, palette_dequantize(ids, clusters, (9, 13), layout=layout, backend="reference")), layout

    for dtype in dtypes:
        yield f"70 clusters {dtype}", (lambda d=dtype: check(d))
