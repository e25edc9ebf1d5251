"""Triton CLIP contrastive loss: the n x n logits never exist in memory.

Notation: I (rows, d) and T (cols, d) the (normalized) image and text features, s the scale,
S = s * I @ T^T the logits. Text ``j`` is the positive of image ``i`` when
``j == i + diag_offset`` (0 on one process; the rank's first global row under data parallelism).

Forward, :func:`logit_stats` (1 GEMM-equivalent): programs own a group of BLOCK_M row blocks
and a group of column blocks, and walk each column block down the row group; each S tile (K
loop over d, masked) gives
  - an online (max, sumexp) per column over the row group -> ``col_part[row_group, col]``,
  - the row logsumexp over the tile's columns, merged into the program's own partial over its
    column group (read-modify-write, no other program touches it) -> ``row_part[col_group, row]``,
  - with the maxima (``return_stats``), the positive logits S_{i, i + diag_offset} where the
    tile holds it; otherwise a row-wise dot product computes those.
Both partials hold at most MAX_ROW_GROUPS (resp. the column groups) rows of length n: O(n), not
O(n^2 / BLOCK_M). A merge kernel folds them into ``row_lse`` and ``col_lse`` (and maxima for
accuracy).

Backward, :func:`grad_features` (3 GEMM-equivalents): columns are walked in strips of W; per
strip one kernel recomputes S and writes dS = (softmax_row + softmax_col) / 2 - delta for all
rows x W columns in the feature dtype (x 1024 in fp16; O(n * W) bytes, W set by ``STRIP_BYTES``),
with per-tile partial sums of dS * S (the logit_scale gradient, no extra pass). Both feature
gradients then come from that same recomputed strip with two GEMMs (vtkernels/triton/strip_matmul.py):
  dI_acc += dS_strip @ T_strip           (fp32 accumulator, owned output tiles, no atomics)
  dT_acc[strip] = dS_strip^T @ I         (split-K when W x d has few tiles; one process finishes
                                          these complete rows of the text gradient right away)
Total: 1 (forward) + 1 (recompute) + 2 (products) = 4 GEMM-equivalents. The caller multiplies
by s * grad / n and applies the normalization backward in :func:`finish_grad`.

fp32 features use IEEE fp32 dots (no tf32); fp16/bf16 run on tensor cores, fp32 accumulation,
their tiles fetched by TMA on sm_90 where the feature rows allow it (vtkernels/triton/tma.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vtkernels.backend import triton_interpreter_enabled
from vtkernels.triton.strip_matmul import matmul_fp32_out
from vtkernels.triton.tma import descriptor, tma_usable
from vtkernels.triton.tiling import cdiv

NORM_EPS = 1e-12  # torch.nn.functional.normalize's default
STRIP_BYTES = 128 * 2**20  # cap on the backward's dS strip (rows x W features)
MIN_STRIP = 512  # ... unless that leaves strips narrower than this many columns
DS_SCALE_FP16 = 1024.0  # fp16 dS strips hold 1024 * dS: |dS| <= 1, and small P stay normal numbers
TARGET_PROGRAMS = 1024  # forward programs to aim for when choosing row and column groups
MAX_ROW_GROUPS = 32  # forward row groups at most: the column partials are (row groups, n) fp32
LOG2E = tl.constexpr(1.4426950408889634)  # (a constexpr global: readable inside @triton.jit)


@triton.jit
def _logit_tile(I, T, first_row, first_col, row_ok, col_ok, d, stride_i, stride_t,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
                TMA: tl.constexpr):
    """fp32 (BLOCK_M, BLOCK_N) tile of I @ T^T, rows first_row + [0, BLOCK_M), columns first_col +
    [0, BLOCK_N). Pointers: the K loop masks rows, columns and the tail of d. TMA (I, T tensor
    descriptors of [BLOCK_M | BLOCK_N, BLOCK_K] boxes): the unit zero-fills what lies out of bounds."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if TMA:
        for k in range(0, d, BLOCK_K):
            acc = tl.dot(I.load([first_row, k]), T.load([first_col, k]).T, acc, input_precision=PRECISION)
    else:
        ks = tl.arange(0, BLOCK_K)
        a_ptrs = I + (first_row + tl.arange(0, BLOCK_M)).to(tl.int64)[:, None] * stride_i + ks[None, :]
        b_ptrs = T + (first_col + tl.arange(0, BLOCK_N)).to(tl.int64)[None, :] * stride_t + ks[:, None]
        for k in range(0, d, BLOCK_K):
            k_ok = ks < d - k
            a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K
    return acc


@triton.jit
def _exp(x):
    return tl.math.exp2(x * LOG2E)  # (tl.exp adds range fix-ups around the same exp2 on sm_90)


@triton.jit
def _log_add_exp(a, b):
    """log(exp(a) + exp(b)), -inf when both are."""
    top = tl.maximum(a, b)
    top = tl.where(top == float("-inf"), 0.0, top)
    return top + tl.log(_exp(a - top) + _exp(b - top))


@triton.jit
def clip_stats_kernel(
    I, T, Scale, RowPart, RowPartMax, ColPart, ColPartMax, Diag,
    n_rows, n_cols, d, stride_i, stride_t, diag_offset, blocks_per_group, row_blocks_per_group,
    WITH_MAX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr, TMA: tl.constexpr,
):
    """I and T: pointers, or tensor descriptors when TMA (see _logit_tile).

    A program walks its column group block by block and, for each column block, its row group's
    blocks: the columns' (max, sum of exp) stay in registers, updated online tile by tile, and the
    rows' logsumexp over each tile is merged into the program's own partial in RowPart
    (read-modify-write of 2 values per thread per tile; the other way round, merging the columns
    into memory, costs 16 per thread, each replicated over the 64 threads that share a column)."""
    row_group = tl.program_id(0)
    group = tl.program_id(1)
    scale = tl.load(Scale)
    first_block = row_group * row_blocks_per_group
    # The last row group may hold fewer blocks: every block walked has >= 1 valid row.
    end_block = tl.minimum(first_block + row_blocks_per_group, tl.cdiv(n_rows, BLOCK_M))
    for jb in range(blocks_per_group):
        first_col = (group * blocks_per_group + jb) * BLOCK_N
        cols = first_col + tl.arange(0, BLOCK_N)
        col_ok = cols < n_cols  # the last group may run past the end: fully masked tiles
        m_col = tl.full([BLOCK_N], float("-inf"), tl.float32)
        sum_col = tl.zeros([BLOCK_N], dtype=tl.float32)
        shift = tl.zeros([BLOCK_N], dtype=tl.float32)  # m_col, 0 where -inf
        for row_block in range(first_block, end_block):
            rows = row_block * BLOCK_M + tl.arange(0, BLOCK_M)
            row_ok = rows < n_rows
            acc = _logit_tile(I, T, row_block * BLOCK_M, first_col, row_ok, col_ok, d, stride_i, stride_t,
                              BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, TMA)
            ok = row_ok[:, None] & col_ok[None, :]
            s = tl.where(ok, acc * scale, float("-inf"))

            # Columns: online over the row group (every valid column has >= 1 valid row in a tile);
            # columns past the end keep m = -inf and shift by 0.
            m_new = tl.maximum(m_col, tl.max(s, axis=0))
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)
            sum_col = sum_col * _exp(m_col - shift) + tl.sum(_exp(s - shift[None, :]), axis=0)
            m_col = m_new

            # Rows: the tile's logsumexp, merged with the column group's earlier blocks.
            m_row = tl.max(s, axis=1)
            shift_row = tl.where(m_row == float("-inf"), 0.0, m_row)
            lse_row = shift_row + tl.log(tl.sum(_exp(s - shift_row[:, None]), axis=1))
            row_part = group.to(tl.int64) * n_rows + rows
            merged = row_ok & (jb > 0)
            lse_row = _log_add_exp(tl.load(RowPart + row_part, mask=merged, other=float("-inf")), lse_row)
            tl.store(RowPart + row_part, lse_row, mask=row_ok)
            if WITH_MAX:
                earlier_max = tl.load(RowPartMax + row_part, mask=merged, other=float("-inf"))
                tl.store(RowPartMax + row_part, tl.maximum(earlier_max, m_row), mask=row_ok)
                # The positive pair S[i, i + diag_offset] from the tile that holds it: the very fp32
                # value the maxima saw, so that "S[i, i] is its row's maximum" is exact. (Without the
                # maxima positive_logits_kernel computes them: this branch costs ~50 registers.)
                first_pos = row_block * BLOCK_M + diag_offset
                if (first_col < first_pos + BLOCK_M) & (first_pos < first_col + BLOCK_N):
                    diag = tl.sum(tl.where(cols[None, :] == rows[:, None] + diag_offset, s, 0.0), axis=1)
                    pos_col = rows + diag_offset
                    tl.store(Diag + rows, diag, mask=row_ok & (pos_col >= first_col) & (pos_col < first_col + BLOCK_N)
                             & (pos_col < n_cols))

        col_part = row_group.to(tl.int64) * n_cols + cols
        tl.store(ColPart + col_part, shift + tl.log(tl.where(col_ok, sum_col, 1.0)), mask=col_ok)
        if WITH_MAX:
            tl.store(ColPartMax + col_part, m_col, mask=col_ok)


@triton.jit
def merge_lse_kernel(Part, PartMax, Lse, Max, n_parts, n, WITH_MAX: tl.constexpr, BLOCK: tl.constexpr):
    """Lse[j] = logsumexp_p Part[p, j] (and Max[j] = max_p PartMax[p, j])."""
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = idx < n
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK], dtype=tl.float32)
    mx = tl.full([BLOCK], float("-inf"), tl.float32)
    part, part_max = Part + idx, PartMax + idx
    for _ in range(n_parts):  # pointers advance part by part (64-bit adds, no p * n product)
        v = tl.load(part, mask=ok, other=float("-inf"))
        m_new = tl.maximum(m, v)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        total = total * tl.exp(m - m_safe) + tl.exp(v - m_safe)
        m = m_new
        part += n
        if WITH_MAX:
            mx = tl.maximum(mx, tl.load(part_max, mask=ok, other=float("-inf")))
            part_max += n
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    tl.store(Lse + idx, m_safe + tl.log(tl.where(ok, total, 1.0)), mask=ok)
    if WITH_MAX:
        tl.store(Max + idx, mx, mask=ok)


@triton.jit
def clip_dlogits_kernel(
    I, T, Scale, RowLse, ColLse, DS, DtPart,
    n_rows, n_cols, d, stride_i, stride_t, stride_ds, diag_offset, col_start, strip_end, ds_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
    TMA: tl.constexpr,
):
    """DS[:, c - col_start] = (P_row + P_col) / 2 - delta for the strip's columns c, times ds_scale
    (a power of two: 2^10 for fp16, whose subnormals start at 6e-5); DtPart gets sum(dS * S) per
    tile (d loss / d logit_scale = that sum / n when unclamped). I and T: pointers, or tensor
    descriptors when TMA (see _logit_tile).

    About 23 SASS instructions per logit on sm_90 (35 through tl.exp and separate products), 99
    registers. Branching per tile to skip the positive-pair and bounds tests on most tiles would
    halve that, but the two paths together take 160 registers (one program per SM)."""
    row_block = tl.program_id(0)
    col_block = tl.program_id(1)
    first_row, first_col = row_block * BLOCK_M, col_start + col_block * BLOCK_N
    rows = first_row + tl.arange(0, BLOCK_M)
    cols = first_col + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    col_ok = cols < strip_end
    acc = _logit_tile(I, T, first_row, first_col, row_ok, col_ok, d, stride_i, stride_t,
                      BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, TMA)
    scale = tl.load(Scale)
    lse_row = tl.load(RowLse + rows, mask=row_ok, other=0.0)
    lse_col = tl.load(ColLse + cols, mask=col_ok, other=0.0)
    # log P = S - lse in one FFMA each: rounded once, relative to |log P|, which is small where P
    # matters.
    log_p_row = acc * scale - lse_row[:, None]
    log_p_col = acc * scale - lse_col[None, :]
    pos = tl.where(cols[None, :] == rows[:, None] + diag_offset, 1.0, 0.0)
    # P - delta: exact where P is near 1 (a confident pair), whose dS is small
    d_row = _exp(log_p_row) - pos
    d_col = _exp(log_p_col) - pos
    ok = row_ok[:, None] & col_ok[None, :]
    tl.store(DS + rows.to(tl.int64)[:, None] * stride_ds + (cols - col_start)[None, :],
             ((d_row + d_col) * (0.5 * ds_scale)).to(DS.dtype.element_ty), mask=ok)
    # sum(dS * S) = sum(dS_row * (S - lse_row) + dS_col * (S - lse_col)) / 2, as each row of dS_row
    # and each column of dS_col sums to 0: terms P log P instead of P * S (no cancellation at s = 100).
    dt = tl.where(ok, d_row * log_p_row + d_col * log_p_col, 0.0)
    tl.store(DtPart + row_block * tl.num_programs(1) + col_block, tl.sum(tl.sum(dt, axis=1), axis=0) * 0.5)


@triton.jit
def positive_logits_kernel(I, T, Scale, Diag, n_rows, n_cols, d, stride_i, stride_t, diag_offset,
                           BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Diag[i] = scale * <I[i], T[i + diag_offset]> (fp32 products and sums), where that text exists."""
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = (rows < n_rows) & (rows + diag_offset < n_cols)
    image = I + rows.to(tl.int64)[:, None] * stride_i
    text = T + (rows + diag_offset).to(tl.int64)[:, None] * stride_t
    dot = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
    for k in range(0, d, BLOCK_D):
        ks = k + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (ks < d)[None, :]
        a = tl.load(image + ks[None, :], mask=ok, other=0.0).to(tl.float32)
        b = tl.load(text + ks[None, :], mask=ok, other=0.0).to(tl.float32)
        dot += tl.sum(a * b, axis=1)
    tl.store(Diag + rows, dot * tl.load(Scale), mask=row_ok)


@triton.jit
def normalize_rows_kernel(X, Y, Rnorm, n, d, stride_x, stride_y, eps,
                          BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Y = X / max(||X||, eps) row-wise; Rnorm = 1 / max(||X||, eps). Any d (two sweeps)."""
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < n
    rows64 = rows.to(tl.int64)[:, None]
    sumsq = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
    for k in range(0, d, BLOCK_D):
        ks = k + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (ks < d)[None, :]
        x = tl.load(X + rows64 * stride_x + ks[None, :], mask=ok, other=0.0).to(tl.float32)
        sumsq += tl.sum(x * x, axis=1)
    rnorm = 1.0 / tl.maximum(tl.sqrt(sumsq), eps)
    tl.store(Rnorm + rows, rnorm, mask=row_ok)
    for k in range(0, d, BLOCK_D):
        ks = k + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (ks < d)[None, :]
        x = tl.load(X + rows64 * stride_x + ks[None, :], mask=ok, other=0.0).to(tl.float32)
        tl.store(Y + rows64 * stride_y + ks[None, :], (x * rnorm[:, None]).to(Y.dtype.element_ty), mask=ok)


@triton.jit
def finish_grad_kernel(Acc, X, Coef, DX, n, d, stride_x, stride_dx, eps,
                       NORMALIZE: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """g = Coef * Acc is the gradient w.r.t. the normalized rows y = x / max(||x||, eps);
    DX = (g - y <y, g>) / ||x|| (just g / eps once the norm is clamped), or g unnormalized."""
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < n
    rows64 = rows.to(tl.int64)[:, None]
    coef = tl.load(Coef)
    if NORMALIZE:
        sumsq = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
        x_dot_acc = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
        for k in range(0, d, BLOCK_D):
            ks = k + tl.arange(0, BLOCK_D)
            ok = row_ok[:, None] & (ks < d)[None, :]
            x = tl.load(X + rows64 * stride_x + ks[None, :], mask=ok, other=0.0).to(tl.float32)
            acc = tl.load(Acc + rows64 * d + ks[None, :], mask=ok, other=0.0)
            sumsq += tl.sum(x * x, axis=1)
            x_dot_acc += tl.sum(x * acc, axis=1)
        norm = tl.sqrt(sumsq)
        rnorm = 1.0 / tl.maximum(norm, eps)
        # <y, acc> * y = x * (<x, acc> * rnorm^2); no projection while the norm is clamped.
        proj = tl.where(norm >= eps, x_dot_acc * rnorm * rnorm, 0.0)
        row_coef = coef * rnorm
    else:
        proj = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
        row_coef = tl.zeros([BLOCK_ROWS], dtype=tl.float32) + coef
    for k in range(0, d, BLOCK_D):
        ks = k + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (ks < d)[None, :]
        acc = tl.load(Acc + rows64 * d + ks[None, :], mask=ok, other=0.0)
        if NORMALIZE:
            x = tl.load(X + rows64 * stride_x + ks[None, :], mask=ok, other=0.0).to(tl.float32)
            acc -= x * proj[:, None]
        tl.store(DX + rows64 * stride_dx + ks[None, :], (acc * row_coef[:, None]).to(DX.dtype.element_ty), mask=ok)


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # only fp32 operands read it


def launch_config(kind: str, dtype: torch.dtype = torch.bfloat16, interpret: bool = False) -> dict:
    """Tiles and warps per kernel ('tile': stats and dS kernels, 'rows');
    small tiles under the interpreter so the CPU tests walk several blocks."""
    if kind == "rows":
        return {"BLOCK_ROWS": 4 if interpret else 8, "BLOCK_D": 64 if interpret else 256, "num_warps": 4}
    if interpret:
        return {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 4, "TMA": False}
    wide = dtype != torch.float32
    # TMA: feature tiles through tensor descriptors where the features allow (vtkernels/triton/tma.py).
    # maxnreg 128: two 8-warp programs per SM, so that one's epilogue overlaps the other's tensor-core
    # work; 128 x 64 tiles compile to 140 registers without the cap (stats) and spill nothing with
    # it (sm_90), except the stats kernel with the maxima, which logit_stats runs uncapped.
    return {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64 if wide else 32, "num_warps": 8, "num_stages": 3,
            "TMA": wide, "maxnreg": 128 if wide else None}


def _interpret(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" or triton_interpreter_enabled()


def _tile_operands(image: torch.Tensor, text: torch.Tensor, cfg: dict) -> tuple:
    """(I, T, TMA) for the tile kernels: tensor descriptors when ``cfg`` asks for TMA and the
    features allow it, else the tensors themselves. Pops "TMA" from ``cfg``."""
    if cfg.pop("TMA") and tma_usable(image, text):
        return descriptor(image, cfg["BLOCK_M"], cfg["BLOCK_K"]), descriptor(text, cfg["BLOCK_N"], cfg["BLOCK_K"]), True
    return image, text, False


def normalize_rows(x: torch.Tensor):
    """(x / max(||x||, eps) in x's dtype, 1 / max(||x||, eps) fp32) for (n, d) x with unit column stride."""
    n, d = x.shape
    y = torch.empty((n, d), dtype=x.dtype, device=x.device)
    rnorm = torch.empty(n, dtype=torch.float32, device=x.device)
    if n:
        cfg = launch_config("rows", interpret=_interpret(x))
        normalize_rows_kernel[(cdiv(n, cfg["BLOCK_ROWS"]),)](
            x, y, rnorm, n, d, x.stride(0), y.stride(0), NORM_EPS, **cfg)
    return y, rnorm


def _merge(part: torch.Tensor, part_max, n: int, with_max: bool):
    lse = part.new_empty(n)
    mx = part.new_empty(n if with_max else 0)
    if n:
        block = 128
        merge_lse_kernel[(cdiv(n, block),)](part, part_max, lse, mx, part.shape[0], n,
                                                  WITH_MAX=with_max, BLOCK=block)
    return lse, mx


def logit_stats(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, diag_offset: int, with_max: bool):
    """Row / column logsumexps of S = scale * image @ text^T without materializing S.

    image (rows, d), text (cols, d) with unit column stride; scale: fp32 (1,) on the device.
    Returns (row_lse (rows), col_lse (cols; over these rows only), diag (rows) = S[i, i +
    diag_offset], row_max, col_max (empty unless ``with_max``)), all fp32.
    """
    n_rows, d = image.shape
    n_cols = text.shape[0]
    f32 = dict(dtype=torch.float32, device=image.device)
    diag = torch.zeros(n_rows, **f32)
    if n_rows == 0 or n_cols == 0:
        empty = torch.empty(0, **f32)
        return (torch.full((n_rows,), float("-inf"), **f32), torch.full((n_cols,), float("-inf"), **f32), diag,
                empty if not with_max else torch.full((n_rows,), float("-inf"), **f32),
                empty if not with_max else torch.full((n_cols,), float("-inf"), **f32))
    cfg = dict(launch_config("tile", image.dtype, _interpret(image)))
    if with_max:
        cfg.pop("maxnreg", None)  # (see launch_config)
    image_op, text_op, tma = _tile_operands(image, text, cfg)
    row_blocks = cdiv(n_rows, cfg["BLOCK_M"])
    col_blocks = cdiv(n_cols, cfg["BLOCK_N"])
    row_groups, row_blocks_per_group, groups, blocks_per_group = program_groups(row_blocks, col_blocks,
                                                                               _interpret(image))
    row_part = torch.empty((groups, n_rows), **f32)
    col_part = torch.empty((row_groups, n_cols), **f32)
    row_part_max = torch.empty((groups, n_rows) if with_max else 0, **f32)
    col_part_max = torch.empty((row_groups, n_cols) if with_max else 0, **f32)
    clip_stats_kernel[(row_groups, groups)](
        image_op, text_op, scale, row_part, row_part_max, col_part, col_part_max, diag,
        n_rows, n_cols, d, image.stride(0), text.stride(0), diag_offset, blocks_per_group, row_blocks_per_group,
        WITH_MAX=with_max, PRECISION=_precision(image.dtype), TMA=tma, **cfg)
    if not with_max:
        rows_cfg = launch_config("rows", interpret=_interpret(image))
        positive_logits_kernel[(cdiv(n_rows, rows_cfg["BLOCK_ROWS"]),)](
            image, text, scale, diag, n_rows, n_cols, d, image.stride(0), text.stride(0), diag_offset, **rows_cfg)
    row_lse, row_max = _merge(row_part, row_part_max, n_rows, with_max)
    del row_part, row_part_max
    col_lse, col_max = _merge(col_part, col_part_max, n_cols, with_max)
    return row_lse, col_lse, diag, row_max, col_max


def _groups(blocks: int, max_groups: int) -> tuple[int, int]:
    """(groups, blocks per group): at most ``max_groups`` groups of equal size (the last may be smaller)."""
    per_group = cdiv(blocks, max(1, min(blocks, max_groups)))
    return cdiv(blocks, per_group), per_group


def program_groups(row_blocks: int, col_blocks: int, interpret: bool = False) -> tuple[int, int, int, int]:
    """(row groups, row blocks per group, column groups, column blocks per group) of the forward:
    at most MAX_ROW_GROUPS row groups (the size of the column partials), and enough column groups
    to bring the programs to TARGET_PROGRAMS. The interpreter gets groups of two row blocks and
    two column groups: the tests still merge blocks both ways."""
    if interpret:
        return (*_groups(row_blocks, cdiv(row_blocks, 2)), *_groups(col_blocks, 2))
    row_groups, row_blocks_per_group = _groups(row_blocks, MAX_ROW_GROUPS)
    return row_groups, row_blocks_per_group, *_groups(col_blocks, cdiv(TARGET_PROGRAMS, row_groups))


def strip_width(n_rows: int, n_cols: int, element_size: int, block_n: int) -> int:
    """Columns per backward strip: the dS strip (n_rows x W) stays under STRIP_BYTES, but W is
    at least MIN_STRIP columns (fewer, larger launches at n >= 128k; still O(n) memory)."""
    width = max(MIN_STRIP, STRIP_BYTES // max(1, n_rows * element_size))
    width = max(block_n, width // block_n * block_n)
    return min(width, cdiv(n_cols, block_n) * block_n)


def grad_features(image, text, scale, row_lse, col_lse, diag_offset: int, text_raw=None, coef=None,
                  normalize: bool = False):
    """Feature gradients of the loss through S (see module docstring), dS = (P_row + P_col)/2 - delta.

    Returns (dI_acc (rows, d) fp32, text gradient, sum(dS * S) fp32 (1,)); the true gradients are
    ``coef = scale * grad / n`` times the accumulators. The text gradient is the fp32 accumulator
    dT_acc (cols, d), or, given ``text_raw`` and ``coef`` (one process: each strip's rows of dT
    are complete), the finished gradient of ``text_raw`` (no (cols, d) fp32 buffer then).
    """
    n_rows, d = image.shape
    n_cols = text.shape[0]
    f32 = dict(dtype=torch.float32, device=image.device)
    finish_text = text_raw is not None
    d_image = torch.zeros((n_rows, d), **f32)
    d_text = torch.empty_like(text_raw) if finish_text else torch.zeros((n_cols, d), **f32)
    dt_sum = torch.zeros(1, **f32)
    if n_rows == 0 or n_cols == 0:
        return d_image, d_text.zero_(), dt_sum
    interpret = _interpret(image)
    ds_scale = DS_SCALE_FP16 if image.dtype == torch.float16 else 1.0
    cfg = dict(launch_config("tile", image.dtype, interpret))
    image_op, text_op, tma = _tile_operands(image, text, cfg)
    width = strip_width(n_rows, n_cols, image.element_size(), cfg["BLOCK_N"])
    strip = torch.empty((n_rows, width), dtype=image.dtype, device=image.device)
    text_acc = torch.empty((width, d), **f32) if finish_text else None
    row_blocks = cdiv(n_rows, cfg["BLOCK_M"])
    # Per-tile sums of dS * S for every strip, added up once at the end.
    dt_parts = torch.zeros((cdiv(n_cols, width), row_blocks, width // cfg["BLOCK_N"]), **f32)
    for strip_index, start in enumerate(range(0, n_cols, width)):
        end = min(start + width, n_cols)
        col_blocks = cdiv(end - start, cfg["BLOCK_N"])
        clip_dlogits_kernel[(row_blocks, col_blocks)](
            image_op, text_op, scale, row_lse, col_lse, strip, dt_parts[strip_index],
            n_rows, n_cols, d, image.stride(0), text.stride(0), strip.stride(0), diag_offset, start, end, ds_scale,
            PRECISION=_precision(image.dtype), TMA=tma, **cfg)
        # dI += dS_strip @ T_strip: (rows, W) @ (W, d)
        ds_strip = strip[:, :end - start]  # (a last, narrower strip leaves stale columns beyond)
        matmul_fp32_out(ds_strip, text[start:end], d_image, start > 0, interpret, 1 / ds_scale)
        # dT[strip] = dS_strip^T @ I: (W, rows) @ (rows, d), A read transposed through its strides
        out = text_acc[:end - start] if finish_text else d_text[start:end]
        matmul_fp32_out(ds_strip.t(), image, out, False, interpret, 1 / ds_scale)
        if finish_text:
            d_text[start:end] = finish_grad(out, text_raw[start:end], coef, normalize)
    return d_image, d_text, dt_parts.sum().reshape(1)


def finish_grad(acc: torch.Tensor, x: torch.Tensor, coef: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Gradient w.r.t. the raw features x from ``coef * acc`` (w.r.t. the normalized ones)."""
    n, d = x.shape
    dx = torch.empty((n, d), dtype=x.dtype, device=x.device)
    if n:
        cfg = launch_config("rows", interpret=_interpret(x))
        finish_grad_kernel[(cdiv(n, cfg["BLOCK_ROWS"]),)](
            acc, x, coef, dx, n, d, x.stride(0), dx.stride(0), NORM_EPS, NORMALIZE=normalize, **cfg)
    return dx


def _aot_launch_values(dtype: torch.dtype, n: int = 65536, d: int = 768) -> dict:
    """The integer arguments of the n = 65536, d = 768 benchmark launch (one process), for the
    compile check's launch-time specializations."""
    tile = launch_config("tile", dtype)
    row_blocks, col_blocks = cdiv(n, tile["BLOCK_M"]), cdiv(n, tile["BLOCK_N"])
    width = strip_width(n, n, torch.empty((), dtype=dtype).element_size(), tile["BLOCK_N"])
    return {"n_rows": n, "n_cols": n, "d": d, "stride_i": d, "stride_t": d, "diag_offset": 0,
            **dict(zip(("row_blocks_per_group", "blocks_per_group"), program_groups(row_blocks, col_blocks)[1::2])),
            "stride_ds": width, "col_start": 0, "strip_end": width, "n": n, "stride_x": d, "stride_y": d,
            "stride_dx": d}


def aot_configs():
    """(kernel, signature, constexprs, options, launch values) for the sm_90 ahead-of-time compile
    check."""
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"), (torch.float32, "fp32")):
        values = _aot_launch_values(dtype)
        tile = launch_config("tile", dtype)
        opts = {key: tile.pop(key) for key in ("num_warps", "num_stages", "maxnreg")}
        prec = {"PRECISION": _precision(dtype)}
        stats_sig = {"I": f"*{name}", "T": f"*{name}", "Scale": "*fp32", "RowPart": "*fp32",
                     "RowPartMax": "*fp32", "ColPart": "*fp32", "ColPartMax": "*fp32", "Diag": "*fp32",
                     "n_rows": "i32", "n_cols": "i32", "d": "i32", "stride_i": "i32", "stride_t": "i32",
                     "diag_offset": "i32", "blocks_per_group": "i32", "row_blocks_per_group": "i32"}
        dlogits_sig = {"I": f"*{name}", "T": f"*{name}", "Scale": "*fp32", "RowLse": "*fp32", "ColLse": "*fp32",
                       "DS": f"*{name}", "DtPart": "*fp32", "n_rows": "i32", "n_cols": "i32", "d": "i32",
                       "stride_i": "i32", "stride_t": "i32", "stride_ds": "i32", "diag_offset": "i32",
                       "col_start": "i32", "strip_end": "i32", "ds_scale": "fp32"}
        # The pointer kernels always (the fallback), the TMA ones where launch_config picks them.
        for tma in (False, True) if tile.pop("TMA") else (False,):
            descriptors = {"I": f"tensordesc<{name}[{tile['BLOCK_M']}, {tile['BLOCK_K']}]>",
                           "T": f"tensordesc<{name}[{tile['BLOCK_N']}, {tile['BLOCK_K']}]>"} if tma else {}
            yield clip_stats_kernel, {**stats_sig, **descriptors}, {"WITH_MAX": False, "TMA": tma, **tile, **prec}, \
                opts, values
            yield clip_dlogits_kernel, {**dlogits_sig, **descriptors}, {"TMA": tma, **tile, **prec}, opts, values
        rows = launch_config("rows")
        opts = {"num_warps": rows.pop("num_warps")}
        sig = {"X": f"*{name}", "Y": f"*{name}", "Rnorm": "*fp32", "n": "i32", "d": "i32",
               "stride_x": "i32", "stride_y": "i32", "eps": "fp32"}
        yield normalize_rows_kernel, sig, rows, opts, values
        sig = {"I": f"*{name}", "T": f"*{name}", "Scale": "*fp32", "Diag": "*fp32", "n_rows": "i32", "n_cols": "i32",
               "d": "i32", "stride_i": "i32", "stride_t": "i32", "diag_offset": "i32"}
        yield positive_logits_kernel, sig, rows, opts, values
        sig = {"Acc": "*fp32", "X": f"*{name}", "Coef": "*fp32", "DX": f"*{name}", "n": "i32", "d": "i32",
               "stride_x": "i32", "stride_dx": "i32", "eps": "fp32"}
        yield finish_grad_kernel, sig, {"NORMALIZE": True, **rows}, opts, values
