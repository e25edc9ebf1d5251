"""Triton Swin patch merging: the 2x2 gather and LayerNorm(4C) in one pass, forward and backward.

Merged row (b, i, j) of the (B, ceil(H/2), ceil(W/2), 4C) output, column k = s * C + c, reads
x[b, 2i + s % 2, 2j + s // 2, c] (timm's order x0 = (0, 0), x1 = (1, 0), x2 = (0, 1), x3 = (1, 1));
a pixel past an odd edge is the zero padding timm/HF add. The normalization itself is the norm
op's code (row_statistics / normalized_input_grad from vtkernels/triton/norm.py). The backward
scatters dx straight back to the pixel (each pixel feeds exactly one merged row) and keeps its
dweight / dbias partial sums per program (deterministic, no atomics), like the norm backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vtkernels.triton.norm import (_persistent_programs, affine_grad_add, affine_grad_start, affine_grad_store,
                                   affine_grads, apply_affine, normalized_input_grad, row_statistics)
from vtkernels.triton.tiling import cdiv, next_power_of_2


@triton.jit
def gather_offsets(row_ids, cols, n_rows, H, W, H2, W2, C, stride_b, stride_h, stride_w):
    """(offsets into x, in-bounds mask) of the (rows, 4C) merged tile."""
    b = row_ids // (H2 * W2)
    i = (row_ids // W2) % H2
    j = row_ids % W2
    s = cols // C
    r = 2 * i[:, None] + (s % 2)[None, :]
    c = 2 * j[:, None] + (s // 2)[None, :]
    ok = (row_ids < n_rows)[:, None] & (cols < 4 * C)[None, :] & (r < H) & (c < W)
    offs = b.to(tl.int64)[:, None] * stride_b + r.to(tl.int64) * stride_h + c * stride_w + (cols % C)[None, :]
    return offs, ok


@triton.jit
def patch_merging_fwd_kernel(
    X, Wt, B, Y, Mean, Rstd, n_rows, H, W, H2, W2, C, stride_b, stride_h, stride_w, eps,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
):
    row_ids = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_N)
    n_cols = 4 * C
    offs, in_bounds = gather_offsets(row_ids, cols, n_rows, H, W, H2, W2, C, stride_b, stride_h, stride_w)
    row_ok = row_ids < n_rows
    ok = row_ok[:, None] & (cols < n_cols)[None, :]  # padding pixels are zeros that do count
    x = tl.load(X + offs, mask=in_bounds, other=0.0).to(tl.float32)
    centered, mean, rstd = row_statistics(x, ok, n_cols, eps, False)
    tl.store(Mean + row_ids, mean, mask=row_ok)
    tl.store(Rstd + row_ids, rstd, mask=row_ok)
    y = apply_affine(centered * rstd[:, None], Wt, B, cols, cols < n_cols, HAS_WEIGHT, HAS_BIAS)
    out = row_ids.to(tl.int64)[:, None] * n_cols + cols[None, :]
    tl.store(Y + out, y.to(Y.dtype.element_ty), mask=ok)


@triton.jit
def patch_merging_bwd_kernel(
    DY, X, Wt, Mean, Rstd, DX, DW_PARTIAL, DB_PARTIAL, n_rows, H, W, H2, W2, C, stride_b, stride_h, stride_w,
    dx_b, dx_h, dx_w, n_programs, tiles_per_program,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    n_cols = 4 * C
    col_ok = cols < n_cols
    w, dw_acc, db_acc = affine_grad_start(Wt, cols, col_ok, HAS_WEIGHT, BLOCK_N)
    for t in range(tiles_per_program):
        row_ids = (pid + t * n_programs) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        row_ok = row_ids < n_rows
        ok = row_ok[:, None] & col_ok[None, :]
        offs, in_bounds = gather_offsets(row_ids, cols, n_rows, H, W, H2, W2, C, stride_b, stride_h, stride_w)
        x = tl.load(X + offs, mask=in_bounds, other=0.0).to(tl.float32)
        dy = tl.load(DY + row_ids.to(tl.int64)[:, None] * n_cols + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        mean = tl.load(Mean + row_ids, mask=row_ok, other=0.0)[:, None]
        rstd = tl.load(Rstd + row_ids, mask=row_ok, other=0.0)[:, None]
        xhat = tl.where(ok, (x - mean) * rstd, 0.0)
        dx = normalized_input_grad(dy, xhat, w, rstd, n_cols, False)
        dx_offs, _ = gather_offsets(row_ids, cols, n_rows, H, W, H2, W2, C, dx_b, dx_h, dx_w)
        tl.store(DX + dx_offs, dx.to(DX.dtype.element_ty), mask=in_bounds)  # padding pixels have no dx
        dw_acc, db_acc = affine_grad_add(dw_acc, db_acc, dy, xhat, HAS_WEIGHT, HAS_BIAS)
    affine_grad_store(DW_PARTIAL, DB_PARTIAL, dw_acc, db_acc, pid, n_cols, cols, col_ok, HAS_WEIGHT, HAS_BIAS)


def launch_config(channels: int, backward: bool = False) -> dict:
    block_n = next_power_of_2(4 * channels)
    block_rows = max(1, (2048 if backward else 4096) // block_n)
    return {"BLOCK_ROWS": block_rows, "BLOCK_N": block_n, "num_warps": min(16, max(4, block_rows * block_n // 1024))}


def _shape(x: torch.Tensor):
    b, h, w, c = x.shape
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    return b * h2 * w2, (h, w, h2, w2, c)


def forward(x: torch.Tensor, weight, bias, eps: float):
    """x (B, H, W, C), unit channel stride -> (y (B, H2, W2, 4C), mean, rstd)."""
    n_rows, dims = _shape(x)
    _, _, h2, w2, c = dims
    y = x.new_empty(x.shape[0], h2, w2, 4 * c)
    mean = x.new_empty(n_rows, dtype=torch.float32)
    rstd = x.new_empty(n_rows, dtype=torch.float32)
    if n_rows == 0:
        return y, mean, rstd
    cfg = launch_config(c)
    grid = (cdiv(n_rows, cfg["BLOCK_ROWS"]),)
    patch_merging_fwd_kernel[grid](x, weight, bias, y, mean, rstd, n_rows, *dims, x.stride(0), x.stride(1), x.stride(2),
                                   eps, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, **cfg)
    return y, mean, rstd


def backward(dy: torch.Tensor, x: torch.Tensor, weight, mean, rstd, has_bias: bool):
    """Returns (dx like x, dweight or empty, dbias or empty); dy (B, H2, W2, 4C) contiguous."""
    n_rows, dims = _shape(x)
    c = x.shape[3]
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    cfg = launch_config(c, backward=True)
    tiles = cdiv(n_rows, cfg["BLOCK_ROWS"])
    programs = _persistent_programs(x.device, max(tiles, 1))
    dw_partial = x.new_zeros((programs, 4 * c) if weight is not None else 0, dtype=torch.float32)
    db_partial = x.new_zeros((programs, 4 * c) if has_bias else 0, dtype=torch.float32)
    if n_rows > 0:
        patch_merging_bwd_kernel[(programs,)](
            dy, x, weight, mean, rstd, dx, dw_partial, db_partial, n_rows, *dims, x.stride(0), x.stride(1), x.stride(2),
            dx.stride(0), dx.stride(1), dx.stride(2), programs, cdiv(tiles, programs),
            HAS_WEIGHT=weight is not None, HAS_BIAS=has_bias, **cfg)
    dw, db = affine_grads(dw_partial, db_partial, x.dtype, weight.dtype if weight is not None else None)
    return dx, dw, db


def aot_configs():
    """Swin stages' merging widths (C = 96..512) in bf16/fp16/fp32, forward and backward."""
    ints = ["n_rows", "H", "W", "H2", "W2", "C", "stride_b", "stride_h", "stride_w"]
    for c in (96, 192, 384, 128, 256, 512):
        for dtype in ("bf16", "fp16", "fp32"):
            for backward_ in (False, True):
                cfg = launch_config(c, backward_)
                options = {"num_warps": cfg.pop("num_warps")}
                flags = {"HAS_WEIGHT": True, "HAS_BIAS": True, **cfg}
                if backward_:
                    sig = {"DY": f"*{dtype}", "X": f"*{dtype}", "Wt": f"*{dtype}", "Mean": "*fp32", "Rstd": "*fp32",
                           "DX": f"*{dtype}", "DW_PARTIAL": "*fp32", "DB_PARTIAL": "*fp32", **{n: "i32" for n in ints},
                           "dx_b": "i32", "dx_h": "i32", "dx_w": "i32", "n_programs": "i32", "tiles_per_program": "i32"}
                    yield patch_merging_bwd_kernel, sig, flags, options
                else:
                    sig = {"X": f"*{dtype}", "Wt": f"*{dtype}", "B": f"*{dtype}", "Y": f"*{dtype}", "Mean": "*fp32",
                           "Rstd": "*fp32", **{n: "i32" for n in ints}, "eps": "fp32"}
                    yield patch_merging_fwd_kernel, sig, flags, options
