"""Triton iGPT colour palette: uint8 pixels -> nearest-cluster ids, and ids -> uint8 pixels.

Quantize: a program owns ``BLOCK_P`` pixels of one image (grid: pixel blocks x batch). It loads
their R, G, B bytes once (any layout: the pixel and channel strides come in as arguments),
scales them to [-1, 1] in registers, then walks the (K, 3) cluster table in chunks of
``BLOCK_K``: a (BLOCK_P, BLOCK_K) tile of squared distances, its row minimum and argmin, and a
running best that only a strictly smaller distance replaces (so ties keep the lowest id, as
torch.argmin does). Only the ids are written: 8 bytes per pixel out for 3 bytes in.

Dequantize: a program owns ``BLOCK_P`` ids; each gathers its cluster's three values and writes
``rint(127.5 * (c + 1))`` clamped to [0, 255] as uint8 at the output's strides.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vtkernels.reference.palette import PIXEL_SCALE
from vtkernels.triton.tiling import cdiv, next_power_of_2


@triton.jit
def palette_quantize_kernel(
    PIX, CLUSTERS, TOKENS, n_pixels, n_clusters, stride_b, stride_p, stride_c,
    PIXEL_SCALE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < n_pixels
    base = PIX + b * stride_b + p.to(tl.int64) * stride_p
    r = tl.load(base, mask=p_ok, other=0).to(tl.float32) * PIXEL_SCALE - 1.0
    g = tl.load(base + stride_c, mask=p_ok, other=0).to(tl.float32) * PIXEL_SCALE - 1.0
    bl = tl.load(base + 2 * stride_c, mask=p_ok, other=0).to(tl.float32) * PIXEL_SCALE - 1.0

    best_d = tl.full([BLOCK_P], float("inf"), tl.float32)
    best_k = tl.zeros([BLOCK_P], tl.int32)
    for k0 in range(0, n_clusters, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < n_clusters
        c0 = tl.load(CLUSTERS + 3 * k, mask=k_ok, other=0.0).to(tl.float32)
        c1 = tl.load(CLUSTERS + 3 * k + 1, mask=k_ok, other=0.0).to(tl.float32)
        c2 = tl.load(CLUSTERS + 3 * k + 2, mask=k_ok, other=0.0).to(tl.float32)
        d0 = r[:, None] - c0[None, :]
        d1 = g[:, None] - c1[None, :]
        d2 = bl[:, None] - c2[None, :]
        dist = d0 * d0 + d1 * d1 + d2 * d2
        dist = tl.where(k_ok[None, :], dist, float("inf"))
        chunk_d, chunk_k = tl.min(dist, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = chunk_d < best_d
        best_d = tl.where(better, chunk_d, best_d)
        best_k = tl.where(better, chunk_k + k0, best_k)
    tl.store(TOKENS + b * n_pixels + p, best_k.to(TOKENS.dtype.element_ty), mask=p_ok)


@triton.jit
def _rint(v):
    """Round half to even (torch.round / numpy.rint) for non-negative v."""
    r = tl.floor(v + 0.5)
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(((r - v) == 0.5) & odd, r - 1.0, r)


@triton.jit
def palette_dequantize_kernel(
    TOKENS, CLUSTERS, OUT, n_pixels, stride_b, stride_p, stride_c,
    BLOCK_P: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < n_pixels
    ids = tl.load(TOKENS + b * n_pixels + p, mask=p_ok, other=0).to(tl.int64)
    out = OUT + b * stride_b + p.to(tl.int64) * stride_p
    for c in tl.static_range(3):
        v = tl.load(CLUSTERS + 3 * ids + c, mask=p_ok, other=0.0).to(tl.float32)
        u = tl.minimum(tl.maximum(_rint((v + 1.0) * 127.5), 0.0), 255.0)
        tl.store(out + c * stride_c, u.to(tl.uint8), mask=p_ok)


def launch_config(n_clusters: int) -> dict:
    # A (BLOCK_P, BLOCK_K) fp32 tile of 32 distances per thread: no spills on sm_90.
    block_k = min(32, next_power_of_2(max(n_clusters, 16)))
    return {"BLOCK_P": 128, "BLOCK_K": block_k, "num_warps": 4}


def quantize(pixels: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
    """pixels: (B, N, 3) uint8, any strides; clusters: (K, 3) contiguous. Returns (B, N) int64."""
    batch, n_pixels, _ = pixels.shape
    tokens = torch.empty(batch, n_pixels, dtype=torch.int64, device=pixels.device)
    if tokens.numel() == 0:
        return tokens
    cfg = launch_config(clusters.shape[0])
    grid = (cdiv(n_pixels, cfg["BLOCK_P"]), batch)
    palette_quantize_kernel[grid](
        pixels, clusters, tokens, n_pixels, clusters.shape[0], *pixels.stride(), PIXEL_SCALE=PIXEL_SCALE, **cfg,
    )
    return tokens


def dequantize(tokens: torch.Tensor, clusters: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """tokens: (B, N) contiguous ids; out: (B, N, 3) uint8 view (any strides), filled and returned."""
    batch, n_pixels = tokens.shape
    if tokens.numel() == 0:
        return out
    block_p = 256
    grid = (cdiv(n_pixels, block_p), batch)
    palette_dequantize_kernel[grid](tokens, clusters, out, n_pixels, *out.stride(), BLOCK_P=block_p, num_warps=4)
    return out


def aot_configs():
    """Variants for the ahead-of-time sm_90 compile check (512 fp32 clusters, int64 ids)."""
    cfg = launch_config(512)
    options = {"num_warps": cfg.pop("num_warps")}
    sig = {"PIX": "*u8", "CLUSTERS": "*fp32", "TOKENS": "*i64", "n_pixels": "i32", "n_clusters": "i32",
           "stride_b": "i32", "stride_p": "i32", "stride_c": "i32"}
    yield palette_quantize_kernel, sig, {"PIXEL_SCALE": PIXEL_SCALE, **cfg}, options
    for ids in ("i64", "i32"):
        sig = {"TOKENS": f"*{ids}", "CLUSTERS": "*fp32", "OUT": "*u8", "n_pixels": "i32",
               "stride_b": "i32", "stride_p": "i32", "stride_c": "i32"}
        yield palette_dequantize_kernel, sig, {"BLOCK_P": 256}, {"num_warps": 4}
