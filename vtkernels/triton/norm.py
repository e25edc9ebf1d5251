"""Triton LayerNorm / RMSNorm, forward and backward, with the optional fused residual add.

Layout: the input is viewed as (rows, cols) with unit column stride; a program owns a tile of
``BLOCK_ROWS`` whole rows (``BLOCK_N`` >= cols, so a row's statistics never leave registers).
Statistics in fp32. The backward is persistent: each program walks row tiles with a stride of
the grid size, writes dx per row and keeps its share of dweight / dbias in registers, then
stores one partial row; the partials are summed afterwards (deterministic, no atomics).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from vtkernels.triton.tiling import cdiv, next_power_of_2, sm_count

MAX_COLS = 8192


@triton.jit
def row_statistics(x, ok, n_cols, eps, IS_RMS: tl.constexpr):
    """Per row of a (rows, cols) fp32 tile holding zeros where not ``ok``: (x - mean, or x for
    RMS; mean, zeros for RMS; rstd). Shared with the fused ops that gather their rows (Swin patch merging)."""
    if IS_RMS:
        centered = x
        mean = tl.zeros([x.shape[0]], dtype=tl.float32)
    else:
        mean = tl.sum(x, axis=1) / n_cols
        centered = tl.where(ok, x - mean[:, None], 0.0)
    rstd = tl.math.rsqrt(tl.sum(centered * centered, axis=1) / n_cols + eps)
    return centered, mean, rstd


@triton.jit
def normalized_input_grad(dy, xhat, w, rstd, n_cols, IS_RMS: tl.constexpr):
    """d/dh of the norm for a (rows, cols) tile; rstd is (rows, 1), xhat zero outside the row:
    rstd * (w*dy - xhat * mean(w*dy * xhat) [- mean(w*dy) for LayerNorm])."""
    wdy = dy * w
    dx = wdy - xhat * (tl.sum(wdy * xhat, axis=1) / n_cols)[:, None]
    if not IS_RMS:
        dx -= (tl.sum(wdy, axis=1) / n_cols)[:, None]
    return dx * rstd


@triton.jit
def apply_affine(y, W, B, cols, col_ok, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """``y * weight + bias`` on a (rows, cols) fp32 tile (either factor optional), in fp32."""
    if HAS_WEIGHT:
        y *= tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        y += tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    return y


# The backward's dweight / dbias: each persistent program starts with affine_grad_start, adds every
# row tile it walks with affine_grad_add and stores its partial sums with affine_grad_store.
@triton.jit
def affine_grad_start(W, cols, col_ok, HAS_WEIGHT: tl.constexpr, BLOCK_N: tl.constexpr):
    """(w: the (1, BLOCK_N) fp32 weight row, or 1.0 without weight; zero dweight and dbias sums)."""
    if HAS_WEIGHT:
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    else:
        w = 1.0
    return w, tl.zeros([BLOCK_N], dtype=tl.float32), tl.zeros([BLOCK_N], dtype=tl.float32)


@triton.jit
def affine_grad_add(dw_acc, db_acc, dy, xhat, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Adds a tile's column sums of dy * xhat (dweight) and dy (dbias); zeros outside the tile."""
    if HAS_WEIGHT:
        dw_acc += tl.sum(dy * xhat, axis=0)
    if HAS_BIAS:
        db_acc += tl.sum(dy, axis=0)
    return dw_acc, db_acc


@triton.jit
def affine_grad_store(DW_PARTIAL, DB_PARTIAL, dw_acc, db_acc, pid, n_cols, cols, col_ok,
                      HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Row ``pid`` of the (programs, n_cols) fp32 partial sums, added up on the host."""
    if HAS_WEIGHT:
        tl.store(DW_PARTIAL + pid * n_cols + cols, dw_acc, mask=col_ok)
    if HAS_BIAS:
        tl.store(DB_PARTIAL + pid * n_cols + cols, db_acc, mask=col_ok)


@triton.jit
def sum_partials_kernel(DW_PARTIAL, DB_PARTIAL, DW, DB, n_partials, n_cols,
                        HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr,
                        BLOCK_C: tl.constexpr):
    """dweight / dbias: the column sums of the backward's (n_partials, n_cols) fp32 partials, in
    a fixed order, stored in the parameters' dtypes (both in one launch)."""
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < n_cols
    dw = tl.zeros([BLOCK_C], dtype=tl.float32)
    db = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(0, n_partials, BLOCK_P):
        rows = start + tl.arange(0, BLOCK_P)
        ok = (rows < n_partials)[:, None] & col_ok[None, :]
        offsets = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
        if HAS_WEIGHT:
            dw += tl.sum(tl.load(DW_PARTIAL + offsets, mask=ok, other=0.0), axis=0)
        if HAS_BIAS:
            db += tl.sum(tl.load(DB_PARTIAL + offsets, mask=ok, other=0.0), axis=0)
    if HAS_WEIGHT:
        tl.store(DW + cols, dw.to(DW.dtype.element_ty), mask=col_ok)
    if HAS_BIAS:
        tl.store(DB + cols, db.to(DB.dtype.element_ty), mask=col_ok)


@triton.jit
def norm_fwd_kernel(
    X, R, W, B, Y, H, Mean, Rstd,
    n_rows, n_cols, stride_x, stride_r, stride_y, stride_h, eps,
    IS_RMS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
):
    row_ids = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_N)
    row_ok = row_ids < n_rows
    col_ok = cols < n_cols
    ok = row_ok[:, None] & col_ok[None, :]
    rows = row_ids.to(tl.int64)[:, None]  # 64-bit offsets: rows * stride can pass 2^31

    x = tl.load(X + rows * stride_x + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        h = (x + tl.load(R + rows * stride_r + cols[None, :], mask=ok, other=0.0).to(tl.float32)).to(H.dtype.element_ty)
        tl.store(H + rows * stride_h + cols[None, :], h, mask=ok)
        x = h.to(tl.float32)  # the statistics of the stored h: the reference's, and what the backward rebuilds
    centered, mean, rstd = row_statistics(x, ok, n_cols, eps, IS_RMS)
    if not IS_RMS:
        tl.store(Mean + row_ids, mean, mask=row_ok)
    tl.store(Rstd + row_ids, rstd, mask=row_ok)

    y = apply_affine(centered * rstd[:, None], W, B, cols, col_ok, HAS_WEIGHT, HAS_BIAS)
    tl.store(Y + rows * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=ok)


@triton.jit
def norm_bwd_kernel(
    DY, DH, H, W, Mean, Rstd, DX, DW_PARTIAL, DB_PARTIAL,
    n_rows, n_cols, n_programs, tiles_per_program, stride_dy, stride_dh, stride_h, stride_dx,
    IS_RMS: tl.constexpr, HAS_DH: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    w, dw_acc, db_acc = affine_grad_start(W, cols, col_ok, HAS_WEIGHT, BLOCK_N)

    for i in range(tiles_per_program):
        # Tiles pid, pid + n_programs, ...; the last round may run past n_rows and is masked off.
        row_ids = (pid + i * n_programs) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        row_ok = row_ids < n_rows
        ok = row_ok[:, None] & col_ok[None, :]
        rows = row_ids.to(tl.int64)[:, None]

        h = tl.load(H + rows * stride_h + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows * stride_dy + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        rstd = tl.load(Rstd + row_ids, mask=row_ok, other=0.0)[:, None]
        if IS_RMS:
            xhat = h * rstd
        else:
            mean = tl.load(Mean + row_ids, mask=row_ok, other=0.0)[:, None]
            xhat = tl.where(ok, (h - mean) * rstd, 0.0)
        dx = normalized_input_grad(dy, xhat, w, rstd, n_cols, IS_RMS)
        if HAS_DH:
            dx += tl.load(DH + rows * stride_dh + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        tl.store(DX + rows * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=ok)
        dw_acc, db_acc = affine_grad_add(dw_acc, db_acc, dy, xhat, HAS_WEIGHT, HAS_BIAS)

    affine_grad_store(DW_PARTIAL, DB_PARTIAL, dw_acc, db_acc, pid, n_cols, cols, col_ok, HAS_WEIGHT, HAS_BIAS)


def launch_config(n_cols: int, backward: bool = False) -> dict:
    """Tile shape and warps for a row length; also what the ahead-of-time compile check uses."""
    block_n = next_power_of_2(n_cols)
    elements = 2048 if backward else 4096  # per program: enough bytes in flight, few registers
    block_rows = max(1, elements // block_n)
    num_warps = min(16, max(4, block_rows * block_n // 1024))
    return {"BLOCK_ROWS": block_rows, "BLOCK_N": block_n, "num_warps": num_warps}


def _persistent_programs(device: torch.device, tiles: int) -> int:
    if device.type == "cuda":
        slots = 4 * sm_count(device)
    else:
        slots = 4  # the interpreter runs programs one after another
    return max(1, min(tiles, slots))


def forward(x: torch.Tensor, residual: Optional[torch.Tensor], weight: Optional[torch.Tensor],
            bias: Optional[torch.Tensor], eps: float, rms: bool):
    """x, residual: (rows, cols) with unit column stride. Returns (y, h, mean, rstd)."""
    n_rows, n_cols = x.shape
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    h = torch.empty_like(y) if residual is not None else y.new_empty(0)
    mean = x.new_empty(0 if rms else n_rows, dtype=torch.float32)
    rstd = x.new_empty(n_rows, dtype=torch.float32)
    if n_rows == 0:
        return y, h, mean, rstd
    cfg = launch_config(n_cols)
    grid = (cdiv(n_rows, cfg["BLOCK_ROWS"]),)
    norm_fwd_kernel[grid](
        x, residual, weight, bias, y, h, mean, rstd,
        n_rows, n_cols, x.stride(0), residual.stride(0) if residual is not None else 0,
        y.stride(0), h.stride(0) if residual is not None else 0, eps,
        IS_RMS=rms, HAS_RESIDUAL=residual is not None, HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None, **cfg,
    )
    return y, h, mean, rstd


def backward(dy: torch.Tensor, dh: Optional[torch.Tensor], h: torch.Tensor, weight: Optional[torch.Tensor],
             mean: torch.Tensor, rstd: torch.Tensor, rms: bool, has_bias: bool):
    """Returns (dx, dweight or empty, dbias or empty); dx already includes ``dh``."""
    n_rows, n_cols = h.shape
    dx = torch.empty_like(h, memory_format=torch.contiguous_format)
    cfg = launch_config(n_cols, backward=True)
    tiles = cdiv(n_rows, cfg["BLOCK_ROWS"])
    programs = _persistent_programs(h.device, tiles)
    # Every program stores its whole partial row: zero-filled only when no program runs (no rows).
    alloc = h.new_empty if n_rows > 0 else h.new_zeros
    dw_partial = alloc((programs, n_cols) if weight is not None else 0, dtype=torch.float32)
    db_partial = alloc((programs, n_cols) if has_bias else 0, dtype=torch.float32)
    if n_rows > 0:
        norm_bwd_kernel[(programs,)](
            dy, dh, h, weight, mean, rstd, dx, dw_partial, db_partial,
            n_rows, n_cols, programs, cdiv(tiles, programs), dy.stride(0),
            dh.stride(0) if dh is not None else 0, h.stride(0), dx.stride(0),
            IS_RMS=rms, HAS_DH=dh is not None, HAS_WEIGHT=weight is not None, HAS_BIAS=has_bias, **cfg,
        )
    dw, db = affine_grads(dw_partial, db_partial, h.dtype, weight.dtype if weight is not None else None)
    return dx, dw, db


SUM_PARTIALS_CONFIG = {"BLOCK_P": 32, "BLOCK_C": 64}


def affine_grads(dw_partial: torch.Tensor, db_partial: torch.Tensor, dtype: torch.dtype,
                 weight_dtype: Optional[torch.dtype] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(dweight in ``weight_dtype``, dbias in ``dtype``) from the (programs, cols) partials of a
    persistent backward (the norm's, patch merging's); a parameter without partials (shape (0,))
    gets an empty tensor of ``dtype``."""
    has_weight, has_bias = dw_partial.dim() == 2, db_partial.dim() == 2
    n_partials, n_cols = (dw_partial if has_weight else db_partial).shape if has_weight or has_bias else (0, 0)
    device = dw_partial.device
    dw = torch.empty(n_cols if has_weight else 0, dtype=weight_dtype or dtype, device=device)
    db = torch.empty(n_cols if has_bias else 0, dtype=dtype, device=device)
    if n_cols:
        sum_partials_kernel[(cdiv(n_cols, SUM_PARTIALS_CONFIG["BLOCK_C"]),)](
            dw_partial, db_partial, dw, db, n_partials, n_cols, HAS_WEIGHT=has_weight, HAS_BIAS=has_bias,
            **SUM_PARTIALS_CONFIG)
    return dw, db


def aot_configs():
    """(kernel, signature, constexprs, options) for every variant launched at the benchmark
    shapes (hidden 512, 768, 1024, 1280), for the ahead-of-time sm_90 compile check."""
    for n_cols in (512, 768, 1024, 1280):
        for dtype in ("bf16", "fp16", "fp32"):
            for backward in (False, True):
                cfg = launch_config(n_cols, backward)
                options = {"num_warps": cfg.pop("num_warps")}
                flags = {"IS_RMS": False, "HAS_WEIGHT": True, "HAS_BIAS": True}
                if backward:
                    sig = {"DY": f"*{dtype}", "DH": f"*{dtype}", "H": f"*{dtype}", "W": f"*{dtype}",
                           "Mean": "*fp32", "Rstd": "*fp32", "DX": f"*{dtype}", "DW_PARTIAL": "*fp32",
                           "DB_PARTIAL": "*fp32", "n_rows": "i32", "n_cols": "i32", "n_programs": "i32",
                           "tiles_per_program": "i32", "stride_dy": "i32", "stride_dh": "i32",
                           "stride_h": "i32", "stride_dx": "i32"}
                    yield norm_bwd_kernel, sig, {**flags, "HAS_DH": True, **cfg}, options
                else:
                    sig = {"X": f"*{dtype}", "R": f"*{dtype}", "W": f"*{dtype}", "B": f"*{dtype}",
                           "Y": f"*{dtype}", "H": f"*{dtype}", "Mean": "*fp32", "Rstd": "*fp32",
                           "n_rows": "i32", "n_cols": "i32", "stride_x": "i32", "stride_r": "i32",
                           "stride_y": "i32", "stride_h": "i32", "eps": "fp32"}
                    yield norm_fwd_kernel, sig, {**flags, "HAS_RESIDUAL": True, **cfg}, options
    for dtype in ("bf16", "fp16", "fp32"):
        sig = {"DW_PARTIAL": "*fp32", "DB_PARTIAL": "*fp32", "DW": f"*{dtype}", "DB": f"*{dtype}",
               "n_partials": "i32", "n_cols": "i32"}
        yield sum_partials_kernel, sig, {"HAS_WEIGHT": True, "HAS_BIAS": True, **SUM_PARTIALS_CONFIG}, {"num_warps": 4}
