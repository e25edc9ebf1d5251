"""Triton Swin (shifted-)window attention, forward; the backward is in window_attention_bwd.py.

One program owns G whole windows of one (batch, head), packed one after another into the rows of
a tile (block-diagonal; G = BLOCK_N // tokens, see launch_config: Swin's 49-token windows take one
per 64-wide tile, forward and backward). A window of more than 64 tokens has a program to itself,
its keys held as a power-of-two chunk plus a rest chunk where that is smaller than one rounded-up
tile (12x12: 144 = 128 + 16 keys, not 256; softmax over both). Nothing is materialized: q/k/v rows
are gathered straight from the (B, H, W, 3C) qkv tensor, the output scattered straight to
(B, H, W, C).

Index math, for packed row i of program (window group w0, batch b, head h):

    g = i // N, p = i % N             window g of the group (window id w = w0 * G + g), token p
    (pr, pc) = (p // MW, p % MW)      token position inside its window
    (r, c) = (w // nWw * MH + pr,     position in the rolled, padded map (Hp x Wp) that
              w %  nWw * MW + pc)     window partition cuts into row-major windows

    timm (roll, then pad):  real = r < H and c < W;  source pixel ((r + SH) % H, (c + SW) % W)
    HF (pad, then roll):    (r', c') = ((r + SH) % Hp, (c + SW) % Wp);  real = r' < H and c' < W

A token that is not real is padding: its q/k/v are the ``pad_qkv`` vector (the qkv Linear's
bias, since timm/HF zero-pad its input) or zeros.

    scores(i, j) = q_i . k_j * scale + table[t(i, j), h] + (mask_value if region(i) != region(j))
    t(i, j) = (pr_i - pr_j + MHt - 1) * (2 MWt - 1) + (pc_i - pc_j + MWt - 1)   (Mt: table window)
    region(r, c) = 3 * ([r >= Hp - MH] + [r >= Hp - SH]) + [c >= Wp - MW] + [c >= Wp - SW]

The three regions per axis are the strips the roll brought together; a window never straddles
the first boundary (Hp - MH is a window edge), so only the shifted strips ever differ. Scores
between rows of different windows of the tile are -inf. Softmax is exact and single pass (the
whole window sits on chip), in fp32.

With one window per tile (G = 1: Swin's 7 x 7 and 12 x 12 windows) everything in the scores but
q . k is the same for every window of a head, up to the shift mask, which only differs for the
last window row and column: dense_bias_kernel writes it once per table version as 4 dense tiles
per head (dense_bias_tiles caches them), and both directions add a tile instead of computing the
index math, table gather and masks per score (G > 1 keeps the per-score path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl
from torch.utils.weak import WeakIdKeyDictionary

from vtkernels.triton.tiling import cdiv, next_power_of_2, two_tiles

LOG2E = 1.4426950408889634


@triton.jit
def window_tokens(rows, w0, n_win, G: tl.constexpr, MH: tl.constexpr, MW: tl.constexpr,
                  nWw, H, W, Hp, Wp, SH, SW, PAD_FIRST: tl.constexpr):
    """Per packed row, the tuple (in a window, real pixel, source row, source col, pr, pc, window
    slot, region) that the functions below take as ``tokens``."""
    N: tl.constexpr = MH * MW
    g = rows // N
    p = rows % N
    win = w0 * G + g
    pr = p // MW
    pc = p % MW
    r = (win // nWw) * MH + pr
    c = (win % nWw) * MW + pc
    valid = (g < G) & (win < n_win)
    if PAD_FIRST:
        src_r = (r + SH) % Hp
        src_c = (c + SW) % Wp
        real = valid & (src_r < H) & (src_c < W)
    else:
        src_r = (r + SH) % H
        src_c = (c + SW) % W
        real = valid & (r < H) & (c < W)
    region = ((r >= Hp - MH).to(tl.int32) + (r >= Hp - SH).to(tl.int32)) * 3 \
        + (c >= Wp - MW).to(tl.int32) + (c >= Wp - SW).to(tl.int32)
    return valid, real, src_r, src_c, pr, pc, g, region


@triton.jit
def token_offsets(b, tokens, stride_b, stride_h, stride_w, col):
    """Element offsets of channels ``col`` of the tokens' source pixels in a (B, H, W, *) map."""
    _, _, src_r, src_c, _, _, _, _ = tokens
    return b.to(tl.int64) * stride_b + src_r.to(tl.int64)[:, None] * stride_h + src_c[:, None] * stride_w + col[None, :]


@triton.jit
def load_tokens(QKV, PAD, b, tokens, part, h, C, stride_b, stride_h, stride_w,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HAS_PAD: tl.constexpr):
    """(rows, BLOCK_D) slice ``part`` (0 q, 1 k, 2 v) of head h; padding rows from PAD or zeros."""
    valid, real, _, _, _, _, _, _ = tokens
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    col = part * C + h * HEAD_DIM + d
    x = tl.load(QKV + token_offsets(b, tokens, stride_b, stride_h, stride_w, col),
                mask=real[:, None] & d_ok[None, :], other=0.0)
    if HAS_PAD:
        fill = tl.load(PAD + col, mask=d_ok, other=0.0).to(x.dtype)
        x = tl.where((valid & (real == 0))[:, None], fill[None, :], x)
    return x


@triton.jit
def key_chunk(QKV, PAD, first, SIZE: tl.constexpr, w0, n_win, b, h, C, stride_b, stride_h, stride_w,
              H, W, Hp, Wp, nWw, SH, SW, G: tl.constexpr, MH: tl.constexpr, MW: tl.constexpr,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, PAD_FIRST: tl.constexpr, HAS_PAD: tl.constexpr):
    """Packed keys [first, first + SIZE): their tokens tuple, K and V."""
    tokens = window_tokens(first + tl.arange(0, SIZE), w0, n_win, G, MH, MW, nWw, H, W, Hp, Wp, SH, SW, PAD_FIRST)
    k = load_tokens(QKV, PAD, b, tokens, 1, h, C, stride_b, stride_h, stride_w, HEAD_DIM, BLOCK_D, HAS_PAD)
    v = load_tokens(QKV, PAD, b, tokens, 2, h, C, stride_b, stride_h, stride_w, HEAD_DIM, BLOCK_D, HAS_PAD)
    return tokens, k, v


@triton.jit
def window_keys(QKV, PAD, w0, n_win, b, h, C, stride_b, stride_h, stride_w, H, W, Hp, Wp, nWw, SH, SW,
                G: tl.constexpr, MH: tl.constexpr, MW: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_N: tl.constexpr, KEYS_REST: tl.constexpr, PAD_FIRST: tl.constexpr, HAS_PAD: tl.constexpr):
    """Window group w0's keys: (tokens, K, V) of the BLOCK_N chunk, then of the rest chunk (0.0s
    without one)."""
    k_tokens, k, v = key_chunk(QKV, PAD, 0, BLOCK_N, w0, n_win, b, h, C, stride_b, stride_h, stride_w,
                               H, W, Hp, Wp, nWw, SH, SW, G, MH, MW, HEAD_DIM, BLOCK_D, PAD_FIRST, HAS_PAD)
    k_rest_tokens, k_rest, v_rest = 0.0, 0.0, 0.0
    if KEYS_REST > 0:
        k_rest_tokens, k_rest, v_rest = key_chunk(QKV, PAD, BLOCK_N, KEYS_REST, w0, n_win, b, h, C, stride_b,
                                                  stride_h, stride_w, H, W, Hp, Wp, nWw, SH, SW, G, MH, MW,
                                                  HEAD_DIM, BLOCK_D, PAD_FIRST, HAS_PAD)
    return k_tokens, k, v, k_rest_tokens, k_rest, v_rest


@triton.jit
def same_window(q_tokens, k_tokens):
    """(rows, keys): the key is in the row's own window (and both are in a window)."""
    q_ok, _, _, _, _, _, q_g, _ = q_tokens
    k_ok, _, _, _, _, _, k_g, _ = k_tokens
    return (q_g[:, None] == k_g[None, :]) & q_ok[:, None] & k_ok[None, :]


@triton.jit
def same_slot(q_tokens, k_tokens, G: tl.constexpr):
    """(rows, keys): the row and the key hold the same window slot of the tile, whichever window."""
    _, _, _, _, _, _, q_g, _ = q_tokens
    _, _, _, _, _, _, k_g, _ = k_tokens
    return (q_g[:, None] == k_g[None, :]) & (q_g < G)[:, None]


@triton.jit
def relative_bias(TABLE, h, heads, q_tokens, k_tokens, mask, MHT: tl.constexpr, MWT: tl.constexpr):
    """(rows, keys) fp32 table[t(i, j), h] where ``mask`` (0 elsewhere). It depends on the tokens'
    positions inside their window only, never on which window: under a same_slot mask one gather
    serves every window group of a program whose windows fit one query chunk."""
    _, _, _, _, q_pr, q_pc, _, _ = q_tokens
    _, _, _, _, k_pr, k_pc, _, _ = k_tokens
    t = (q_pr[:, None] - k_pr[None, :] + MHT - 1) * (2 * MWT - 1) + (q_pc[:, None] - k_pc[None, :] + MWT - 1)
    return tl.load(TABLE + t * heads + h, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def window_scores(q, k, TABLE, h, heads, shared_bias, scale, mask_value, q_tokens, k_tokens, MHT: tl.constexpr,
                  MWT: tl.constexpr, SHARED_BIAS: tl.constexpr, HAS_SHIFT: tl.constexpr, DOT_PRECISION: tl.constexpr,
                  DENSE_BIAS: tl.constexpr):
    """q k^T * scale + relative bias + shift mask against one key chunk, in log2 units; -inf outside
    each row's own window. DENSE_BIAS: ``shared_bias`` is all of that but the product, precomputed
    (dense_bias). Otherwise the bias is ``shared_bias`` (program_bias) when SHARED_BIAS, else
    gathered here, after the dot (fewer registers live across it)."""
    if DENSE_BIAS:
        return tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * (scale * 1.4426950408889634) + shared_bias
    _, _, _, _, _, _, _, q_region = q_tokens
    _, _, _, _, _, _, _, k_region = k_tokens
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
    same = same_window(q_tokens, k_tokens)
    if SHARED_BIAS:
        s += shared_bias
    else:
        s += relative_bias(TABLE, h, heads, q_tokens, k_tokens, same, MHT, MWT)
    if HAS_SHIFT:
        s = tl.where(q_region[:, None] != k_region[None, :], s + mask_value, s)
    return tl.where(same, s * 1.4426950408889634, float("-inf"))  # log2 domain for exp2


@triton.jit
def attention_probs(q, k, k_rest, TABLE, h, heads, shared_bias, rest_bias, scale, mask_value, q_tokens, k_tokens,
                    k_rest_tokens, MHT: tl.constexpr, MWT: tl.constexpr, SHARED_BIAS: tl.constexpr,
                    HAS_SHIFT: tl.constexpr, KEYS_REST: tl.constexpr, DOT_PRECISION: tl.constexpr,
                    DENSE_BIAS: tl.constexpr):
    """Softmax over the keys of each row's own window, which span the key chunk and (KEYS_REST > 0)
    the rest chunk; exact (every key is on chip), fp32. Returns (P, P of the rest chunk).
    DENSE_BIAS: ``shared_bias`` and ``rest_bias`` are the chunks' dense_bias tiles."""
    s = window_scores(q, k, TABLE, h, heads, shared_bias, scale, mask_value, q_tokens, k_tokens, MHT, MWT,
                      SHARED_BIAS, HAS_SHIFT, DOT_PRECISION, DENSE_BIAS)
    row_max = tl.max(s, axis=1)
    s_rest = 0.0
    if KEYS_REST > 0:  # (never with a shared bias: a program shares one only where there is no rest chunk)
        s_rest = window_scores(q, k_rest, TABLE, h, heads, rest_bias, scale, mask_value, q_tokens, k_rest_tokens,
                               MHT, MWT, False, HAS_SHIFT, DOT_PRECISION, DENSE_BIAS)
        row_max = tl.maximum(row_max, tl.max(s_rest, axis=1))
    row_max = tl.where(row_max == float("-inf"), 0.0, row_max)  # rows outside any window
    p = tl.math.exp2(s - row_max[:, None])
    denom = tl.sum(p, axis=1)
    p_rest = 0.0
    if KEYS_REST > 0:
        p_rest = tl.math.exp2(s_rest - row_max[:, None])
        denom += tl.sum(p_rest, axis=1)
    denom = tl.where(denom == 0.0, 1.0, denom)
    if KEYS_REST > 0:
        p_rest = p_rest / denom[:, None]
    return p / denom[:, None], p_rest


@triton.jit
def dense_bias_kernel(TABLE, TILES, heads, mask_value, nWw, n_win, Hp, Wp, SH, SW, MH: tl.constexpr,
                      MW: tl.constexpr, MHT: tl.constexpr, MWT: tl.constexpr, TILE_ROWS: tl.constexpr,
                      TILE_KEYS: tl.constexpr, BLOCK_R: tl.constexpr, KEYS_POW2: tl.constexpr):
    """TILES[v, h, i, j] = (table[t(i, j), h] + mask_value where regions differ) * log2(e) for
    tokens i, j of one window (one window per tile), -inf past its tokens; window_scores adds it
    to the product. The shift mask depends on the window only through whether it is in the last
    window row and in the last window column (the module docstring's regions): tile variant
    v = 2 * [last row] + [last column], built from one window of that kind."""
    v = tl.program_id(0) // heads
    h = tl.program_id(0) % heads
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    keys = tl.arange(0, KEYS_POW2)
    # A window of variant v: the first of the last row / column where v asks for them.
    win = (v // 2) * (n_win - nWw) + (v % 2) * (nWw - 1)
    q_tokens = window_tokens(rows, win, n_win, 1, MH, MW, nWw, Hp, Wp, Hp, Wp, SH, SW, False)
    k_tokens = window_tokens(keys, win, n_win, 1, MH, MW, nWw, Hp, Wp, Hp, Wp, SH, SW, False)
    same = same_window(q_tokens, k_tokens)
    _, _, _, _, _, _, _, q_region = q_tokens
    _, _, _, _, _, _, _, k_region = k_tokens
    bias = relative_bias(TABLE, h, heads, q_tokens, k_tokens, same, MHT, MWT)
    bias = tl.where(q_region[:, None] != k_region[None, :], bias + mask_value, bias)
    tile = tl.where(same, bias * 1.4426950408889634, float("-inf"))
    offs = (tl.program_id(0) * TILE_ROWS + rows)[:, None] * TILE_KEYS + keys[None, :]
    tl.store(TILES + offs, tile, mask=(rows < TILE_ROWS)[:, None] & (keys < TILE_KEYS)[None, :])


@triton.jit
def dense_bias(TILES, w0, nWw, n_win, h, heads, first_row, ROWS: tl.constexpr, first_key, KEYS: tl.constexpr,
               TILE_ROWS: tl.constexpr, TILE_KEYS: tl.constexpr, HAS_SHIFT: tl.constexpr):
    """Rows [first_row, + ROWS) x keys [first_key, + KEYS) of window w0's dense_bias_kernel tile."""
    variant = 0
    if HAS_SHIFT:
        variant = ((w0 // nWw) == (n_win // nWw - 1)).to(tl.int32) * 2 + ((w0 % nWw) == (nWw - 1)).to(tl.int32)
    rows = first_row + tl.arange(0, ROWS)
    keys = first_key + tl.arange(0, KEYS)
    return tl.load(TILES + ((variant * heads + h) * TILE_ROWS + rows)[:, None] * TILE_KEYS + keys[None, :])


@triton.constexpr_function
def shares_bias(rows: int, block_m: int, keys_rest: int, groups: int, dense: bool) -> bool:
    """Whether a program gathers its bias tile once for all its GROUPS window groups: where every
    row of a group fits one query chunk (Swin's 49-token windows) the tile is the same for every
    group. With one group it is gathered where it is used instead (fewer registers live across the
    dot: 92 against 108 for the forward on sm_90). Never with ``dense`` bias tiles (dense_bias)."""
    return keys_rest == 0 and rows <= block_m and groups > 1 and not dense


@triton.jit
def program_bias(TABLE, h, heads, w0, n_win, nWw, H, W, Hp, Wp, SH, SW, G: tl.constexpr, MH: tl.constexpr,
                 MW: tl.constexpr, MHT: tl.constexpr, MWT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 PAD_FIRST: tl.constexpr, SHARED_BIAS: tl.constexpr):
    """The (BLOCK_M, BLOCK_N) bias tile of every window group of the program when SHARED_BIAS
    (shares_bias), else 0.0 (each chunk gathers its own in window_scores)."""
    bias = 0.0
    if SHARED_BIAS:
        q_tokens = window_tokens(tl.arange(0, BLOCK_M), w0, n_win, G, MH, MW, nWw, H, W, Hp, Wp, SH, SW, PAD_FIRST)
        k_tokens = window_tokens(tl.arange(0, BLOCK_N), w0, n_win, G, MH, MW, nWw, H, W, Hp, Wp, SH, SW, PAD_FIRST)
        bias = relative_bias(TABLE, h, heads, q_tokens, k_tokens, same_slot(q_tokens, k_tokens, G), MHT, MWT)
    return bias


@triton.jit
def _query_chunk(QKV, TABLE, PAD, OUT, q_tokens, shared_bias, rest_bias, b, h, heads, k, v, k_tokens, k_rest, v_rest,
                 k_rest_tokens, C, stride_b, stride_h, stride_w, out_b, out_h, out_w, scale, mask_value,
                 MHT: tl.constexpr, MWT: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                 KEYS_REST: tl.constexpr, SHARED_BIAS: tl.constexpr, HAS_SHIFT: tl.constexpr,
                 DOT_PRECISION: tl.constexpr, DENSE_BIAS: tl.constexpr):
    """Output rows ``q_tokens`` (packed) from their whole windows' keys, scattered to image order.
    DENSE_BIAS: ``shared_bias`` / ``rest_bias`` are the chunk's dense_bias tiles."""
    q = load_tokens(QKV, PAD, b, q_tokens, 0, h, C, stride_b, stride_h, stride_w, HEAD_DIM, BLOCK_D, False)
    p, p_rest = attention_probs(q, k, k_rest, TABLE, h, heads, shared_bias, rest_bias, scale, mask_value, q_tokens,
                                k_tokens, k_rest_tokens, MHT, MWT, SHARED_BIAS, HAS_SHIFT, KEYS_REST, DOT_PRECISION,
                                DENSE_BIAS)
    o = tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    if KEYS_REST > 0:
        o = tl.dot(p_rest.to(v.dtype), v_rest, o, input_precision=DOT_PRECISION)
    _, q_real, _, _, _, _, _, _ = q_tokens
    d = tl.arange(0, BLOCK_D)
    offs = token_offsets(b, q_tokens, out_b, out_h, out_w, h * HEAD_DIM + d)
    tl.store(OUT + offs, o.to(OUT.dtype.element_ty), mask=q_real[:, None] & (d < HEAD_DIM)[None, :])


@triton.jit
def chunk_bias(TILES, shared_bias, w0, nWw, n_win, h, heads, first_row, ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
               KEYS_REST: tl.constexpr, TILE_ROWS: tl.constexpr, TILE_KEYS: tl.constexpr, HAS_SHIFT: tl.constexpr,
               DENSE_BIAS: tl.constexpr):
    """(bias of the key chunk, of the rest chunk) for query rows [first_row, + ROWS): dense_bias
    tiles when DENSE_BIAS, else (shared_bias, 0.0) (window_scores gathers what is not shared)."""
    bias, rest = shared_bias, 0.0
    if DENSE_BIAS:
        bias = dense_bias(TILES, w0, nWw, n_win, h, heads, first_row, ROWS, 0, BLOCK_N, TILE_ROWS, TILE_KEYS,
                          HAS_SHIFT)
        if KEYS_REST > 0:
            rest = dense_bias(TILES, w0, nWw, n_win, h, heads, first_row, ROWS, BLOCK_N, KEYS_REST, TILE_ROWS,
                              TILE_KEYS, HAS_SHIFT)
    return bias, rest


@triton.jit
def window_attn_fwd_kernel(
    QKV, TABLE, TILES, PAD, OUT,
    H, W, Hp, Wp, nWw, n_win, heads, C, SH, SW,
    stride_b, stride_h, stride_w, out_b, out_h, out_w, scale, mask_value,
    MH: tl.constexpr, MW: tl.constexpr, MHT: tl.constexpr, MWT: tl.constexpr, G: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    KEYS_REST: tl.constexpr, ROWS_REST: tl.constexpr, GROUPS: tl.constexpr,
    PAD_FIRST: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
    DENSE_BIAS: tl.constexpr, TILE_ROWS: tl.constexpr, TILE_KEYS: tl.constexpr,
):
    """Program (b * heads + h, i) owns window groups [i * GROUPS, (i + 1) * GROUPS) of (b, h).
    DENSE_BIAS (one window per tile): scores take bias, shift mask and window mask from TILES
    (dense_bias_kernel), else from the table and the index math per score."""
    # Axis 0 runs over (batch, head) fastest, so programs launched together read the same
    # tokens' qkv rows (other heads' channels) and share them in L2; axis 1 over window groups.
    b = tl.program_id(0) // heads
    h = tl.program_id(0) % heads
    SHARED_BIAS: tl.constexpr = shares_bias(G * MH * MW, BLOCK_M, KEYS_REST, GROUPS, DENSE_BIAS)
    first = tl.program_id(1) * GROUPS
    shared_bias = program_bias(TABLE, h, heads, first, n_win, nWw, H, W, Hp, Wp, SH, SW, G, MH, MW, MHT, MWT,
                               BLOCK_M, BLOCK_N, PAD_FIRST, SHARED_BIAS)
    for group in range(GROUPS):
        w0 = first + group  # past the last window: every row masked off
        k_tokens, k, v, k_rest_tokens, k_rest, v_rest = window_keys(
            QKV, PAD, w0, n_win, b, h, C, stride_b, stride_h, stride_w, H, W, Hp, Wp, nWw, SH, SW, G, MH, MW,
            HEAD_DIM, BLOCK_D, BLOCK_N, KEYS_REST, PAD_FIRST, HAS_PAD)
        # Query chunks of BLOCK_M packed rows, then (ROWS_REST > 0) one chunk of ROWS_REST rows for
        # the rows the full chunks leave; each row's keys (its whole window) are all on chip.
        rows_end = G * MH * MW
        if ROWS_REST > 0:
            rows_end = rows_end // BLOCK_M * BLOCK_M
        for start in range(0, rows_end, BLOCK_M):
            q_tokens = window_tokens(start + tl.arange(0, BLOCK_M), w0, n_win, G, MH, MW, nWw, H, W, Hp, Wp, SH, SW,
                                     PAD_FIRST)
            bias, rest_bias = chunk_bias(TILES, shared_bias, w0, nWw, n_win, h, heads, start, BLOCK_M, BLOCK_N,
                                         KEYS_REST, TILE_ROWS, TILE_KEYS, HAS_SHIFT, DENSE_BIAS)
            _query_chunk(QKV, TABLE, PAD, OUT, q_tokens, bias, rest_bias, b, h, heads, k, v, k_tokens, k_rest, v_rest,
                         k_rest_tokens, C, stride_b, stride_h, stride_w, out_b, out_h, out_w, scale, mask_value,
                         MHT, MWT, HEAD_DIM, BLOCK_D, KEYS_REST, SHARED_BIAS, HAS_SHIFT, DOT_PRECISION, DENSE_BIAS)
        if ROWS_REST > 0:
            q_tokens = window_tokens(rows_end + tl.arange(0, ROWS_REST), w0, n_win, G, MH, MW, nWw, H, W, Hp, Wp,
                                     SH, SW, PAD_FIRST)
            bias, rest_bias = chunk_bias(TILES, 0.0, w0, nWw, n_win, h, heads, rows_end, ROWS_REST, BLOCK_N,
                                         KEYS_REST, TILE_ROWS, TILE_KEYS, HAS_SHIFT, DENSE_BIAS)
            _query_chunk(QKV, TABLE, PAD, OUT, q_tokens, bias, rest_bias, b, h, heads, k, v, k_tokens, k_rest, v_rest,
                         k_rest_tokens, C, stride_b, stride_h, stride_w, out_b, out_h, out_w, scale, mask_value,
                         MHT, MWT, HEAD_DIM, BLOCK_D, KEYS_REST, False, HAS_SHIFT, DOT_PRECISION, DENSE_BIAS)


@dataclass(frozen=True)
class Geometry:
    """Window layout of one call: effective window/shift, padded map, packing."""
    height: int
    width: int
    window: int          # effective window M (<= table_window)
    table_window: int    # window the bias table was built for
    shift: int
    heads: int
    head_dim: int

    @property
    def tokens(self) -> int:
        return self.window * self.window

    @property
    def height_pad(self) -> int:
        return cdiv(self.height, self.window) * self.window

    @property
    def width_pad(self) -> int:
        return cdiv(self.width, self.window) * self.window

    @property
    def windows_per_row(self) -> int:
        return self.width_pad // self.window

    @property
    def n_windows(self) -> int:
        return self.height_pad // self.window * self.windows_per_row

    @property
    def has_padding(self) -> bool:
        return self.height_pad != self.height or self.width_pad != self.width


def launch_config(tokens: int, head_dim: int, backward: bool = False, block_m: Optional[int] = None,
                  block_n: Optional[int] = None) -> dict:
    """Packing and tiles for windows of ``tokens`` tokens. Windows of up to 64 tokens pack
    G = BLOCK_N // tokens to a BLOCK_N-row tile (64 unless ``block_n`` says otherwise); a larger window is one tile of BLOCK_N keys plus (KEYS_REST > 0) a rest chunk
    (144 = 128 + 16, not 256). Queries run in chunks of BLOCK_M rows, the forward's last one
    ROWS_REST rows where that is smaller (144 = 2 x 64 + 16). ``block_m`` and ``block_n`` override
    the defaults for tools/tune.py. GROUPS: the forward's window groups per program (the
    backward's come from window_attention_bwd.backward_schedule); more than one shares the bias
    gather between them where a group fits one query chunk (untimed: tools/tune.py sweeps it).

    With G windows in a tile every score element is computed for G x G window pairs and kept for
    G, so Swin's 49-token windows take one window per 64-wide tile (G = 1) both ways. Forward:
    4 warps (sm_90 compile: 92 registers, 5 programs per SM; H200, Swin-T stage 1 at B = 64:
    0.131 ms, against 0.437 for two windows per 128-wide tile at 8 warps; window 12: 0.563 ms
    at 4 warps against 0.969 at 8, tools/tune.py). Backward: the whole window in one 64-row query
    chunk, so that its bias-table fold is a plain sum (window_attention_bwd.py), at 4 warps: 0.280
    ms for Swin-T stage 1 against 0.469 at 8 (which compile without spills, 250 registers; 4 warps
    spill 72 bytes and are faster all the same); window 12: 2.52 ms against 3.66 at 8 warps."""
    if tokens <= 64:
        block_n, keys_rest = block_n or 64, 0
        if block_n < tokens or block_n & (block_n - 1):
            raise ValueError(f"block_n must be a power of two >= the window's {tokens} tokens, got {block_n}")
        windows_per_program = block_n // tokens
    else:
        (block_n, keys_rest), windows_per_program = two_tiles(tokens), 1
    rows = windows_per_program * tokens
    block_d = max(16, next_power_of_2(head_dim))
    # Live fp32 (BLOCK_M, keys) tiles: scores and their index math forward; P, dP, dS backward
    # (plus the dK / dV accumulators). Sized so that sm_90 keeps them in registers without spills
    # (tools/triton_aot_check.py).
    # A rest chunk of up to 1/8 of BLOCK_N rides in the budget's slack; a larger one counts double.
    keys = block_n if keys_rest <= block_n // 8 else 2 * block_n
    if block_m is None and backward and windows_per_program == 1 and keys_rest == 0:
        block_m = next_power_of_2(rows)  # the whole window at once: the bias fold is then a plain sum
    if block_m is None:
        block_m = max(16, min((8192 if not backward else 2048) // keys, next_power_of_2(rows)))
    rows_rest = 0
    if not backward and rows > block_m and rows % block_m:
        tail = max(16, next_power_of_2(rows % block_m))
        rows_rest = tail if tail < block_m else 0
    num_warps = 4
    return {"G": windows_per_program, "BLOCK_M": block_m, "BLOCK_N": block_n, "KEYS_REST": keys_rest,
            "BLOCK_D": block_d, **({} if backward else {"ROWS_REST": rows_rest, "GROUPS": 1}),
            "num_warps": num_warps, "num_stages": 1}


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs: exact fp32 products and accumulation ("ieee", FMA units), as in attention and
    clip_loss: fp32 is the correctness path (1e-5), and the bias-table gradient, a sum of dS over
    every window that mostly cancels, magnifies any dot rounding (a tf32 dot there: ~5e-4).
    fp16 / bf16 run on tensor cores (the setting is ignored)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def common_args(qkv: torch.Tensor, geo: Geometry):
    return (geo.height, geo.width, geo.height_pad, geo.width_pad, geo.windows_per_row, geo.n_windows,
            geo.heads, geo.heads * geo.head_dim, geo.shift, geo.shift, qkv.stride(0), qkv.stride(1), qkv.stride(2))


def common_constexprs(qkv: torch.Tensor, geo: Geometry, pad_first: bool, has_pad: bool) -> dict:
    return {"MH": geo.window, "MW": geo.window, "MHT": geo.table_window, "MWT": geo.table_window,
            "HEAD_DIM": geo.head_dim, "PAD_FIRST": pad_first, "HAS_SHIFT": geo.shift > 0, "HAS_PAD": has_pad,
            "DOT_PRECISION": dot_precision(qkv.dtype)}


DENSE_ROW_CHUNK = 128  # dense tiles hold the window's rows rounded up to this: any query chunking up to it


def dense_tile_shape(cfg: dict, tokens: int) -> tuple[int, int]:
    """(rows, keys) of a dense_bias_kernel tile: rows for query chunks of up to DENSE_ROW_CHUNK
    rows, forward or backward (-inf past the window's tokens), and the key chunks (BLOCK_N +
    KEYS_REST, the same both ways)."""
    if cfg["BLOCK_M"] > DENSE_ROW_CHUNK:
        raise ValueError(f"BLOCK_M {cfg['BLOCK_M']} > {DENSE_ROW_CHUNK}: the dense bias tiles would not cover it")
    return cdiv(tokens, DENSE_ROW_CHUNK) * DENSE_ROW_CHUNK, cfg["BLOCK_N"] + cfg["KEYS_REST"]


# table -> (the call's key, its tiles): a forward reuses the tiles while the table, its version
# (in-place updates), storage, geometry and mask value stay the same, so inference builds them once
# per layer and training once per step.
_DENSE_TILES = WeakIdKeyDictionary()


def _reusable(table: torch.Tensor) -> bool:
    """Whether tiles built from ``table`` may be cached and reused. Not while a CUDA graph is being
    captured: a replay runs no Python, so it must rebuild the tiles from the table's contents then
    (an optimizer step between replays updates the table in place), and the captured tiles hold
    nothing until a replay. Not from an inference tensor: it has no version counter to reveal
    in-place updates."""
    return not table.is_inference() and not (table.is_cuda and torch.cuda.is_current_stream_capturing())


def dense_bias_tiles(table: torch.Tensor, geo: Geometry, cfg: dict, mask_value: float) -> torch.Tensor:
    """(variants, heads, rows, keys) fp32 tiles of dense_bias_kernel, built or reused (the backward
    reuses the forward's; see _reusable)."""
    rows, keys = dense_tile_shape(cfg, geo.tokens)
    reusable = _reusable(table)
    if reusable:
        key = (table._version, table.data_ptr(), geo, rows, keys, float(mask_value))
        cached = _DENSE_TILES.get(table)
        if cached is not None and cached[0] == key:
            return cached[1]
    variants = 4 if geo.shift else 1
    tiles = torch.empty((variants, geo.heads, rows, keys), dtype=torch.float32, device=table.device)
    block_r = 16
    dense_bias_kernel[(variants * geo.heads, cdiv(rows, block_r))](
        table, tiles, geo.heads, mask_value, geo.windows_per_row, geo.n_windows, geo.height_pad, geo.width_pad,
        geo.shift, geo.shift, MH=geo.window, MW=geo.window, MHT=geo.table_window, MWT=geo.table_window,
        TILE_ROWS=rows, TILE_KEYS=keys, BLOCK_R=block_r, KEYS_POW2=next_power_of_2(keys), num_warps=4)
    if reusable:
        _DENSE_TILES[table] = (key, tiles)
    return tiles


def forward(qkv: torch.Tensor, table: torch.Tensor, pad_qkv, geo: Geometry, scale: float, mask_value: float,
            pad_first: bool) -> torch.Tensor:
    """qkv (B, H, W, 3C) with unit channel stride, table ((2Mt-1)^2, heads) contiguous -> (B, H, W, C).
    One window per tile (Swin's 7 x 7 and 12 x 12): the scores' bias and masks come from
    dense_bias_tiles (about half the forward's instructions per program were their index math and
    gathers, sm_90 SASS at Swin-T stage 1)."""
    batch = qkv.shape[0]
    out = qkv.new_empty(batch, geo.height, geo.width, geo.heads * geo.head_dim)
    if out.numel() == 0:
        return out
    cfg = launch_config(geo.tokens, geo.head_dim)
    options = {"num_warps": cfg.pop("num_warps"), "num_stages": cfg.pop("num_stages")}
    dense = cfg["G"] == 1
    tiles = dense_bias_tiles(table, geo, cfg, mask_value) if dense else table
    tile_rows, tile_keys = dense_tile_shape(cfg, geo.tokens) if dense else (1, 1)
    grid = (batch * geo.heads, cdiv(cdiv(geo.n_windows, cfg["G"]), cfg["GROUPS"]))
    window_attn_fwd_kernel[grid](
        qkv, table, tiles, pad_qkv, out, *common_args(qkv, geo), out.stride(0), out.stride(1), out.stride(2),
        scale, mask_value, **common_constexprs(qkv, geo, pad_first, pad_qkv is not None), **cfg, **options,
        DENSE_BIAS=dense, TILE_ROWS=tile_rows, TILE_KEYS=tile_keys,
    )
    return out


# (window, head_dim) -> the stage-1 map (side, heads) whose contiguous launch gives the compile
# check its launch-time specializations: Swin-T at 224, Swin-B at 384, a head_dim-64 variant.
_AOT_STAGES = {(7, 32): (56, 3), (12, 32): (96, 4), (7, 64): (28, 3)}


def _aot_launch_values(window: int, head_dim: int) -> dict:
    side, heads = _AOT_STAGES[(window, head_dim)]
    channels = heads * head_dim
    values = {"H": side, "W": side, "Hp": side, "Wp": side, "nWw": side // window, "n_win": (side // window) ** 2,
              "heads": heads, "C": channels, "SH": window // 2, "SW": window // 2}
    for prefix, width in (("stride", 3 * channels), ("dqkv", 3 * channels), ("out", channels), ("dout", channels)):
        values.update({f"{prefix}_b": side * side * width, f"{prefix}_h": side * width, f"{prefix}_w": width})
    return values


def _aot_dense_bias_config(window: int, cfg: dict, values: dict):
    rows, keys = dense_tile_shape(cfg, window * window)
    sig = {"TABLE": "*fp32", "TILES": "*fp32", "heads": "i32", "mask_value": "fp32", "nWw": "i32", "n_win": "i32",
           "Hp": "i32", "Wp": "i32", "SH": "i32", "SW": "i32"}
    constexprs = {"MH": window, "MW": window, "MHT": window, "MWT": window, "TILE_ROWS": rows, "TILE_KEYS": keys,
                  "BLOCK_R": 16, "KEYS_POW2": next_power_of_2(keys)}
    return dense_bias_kernel, sig, constexprs, {"num_warps": 4}, values


def aot_configs():
    """Every forward and backward variant at the Swin shapes (window 7 and 12, head_dim 32, shifted,
    bf16/fp16/fp32), plus bf16 with padding tokens in both orders, for the ahead-of-time sm_90
    compile check."""
    from vtkernels.triton import window_attention_bwd

    variants = [(dtype, False, False) for dtype in ("bf16", "fp16", "fp32")]
    variants += [("bf16", True, False), ("bf16", True, True)]  # padding tokens, timm and HF order
    ints = ["H", "W", "Hp", "Wp", "nWw", "n_win", "heads", "C", "SH", "SW", "stride_b", "stride_h", "stride_w"]
    for window, head_dim in _AOT_STAGES:
        values = _aot_launch_values(window, head_dim)
        for dtype, has_pad, pad_first in variants:
            torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
            for backward in (False, True):
                cfg = launch_config(window * window, head_dim, backward)
                options = {"num_warps": cfg.pop("num_warps"), "num_stages": cfg.pop("num_stages")}
                constexprs = {"MH": window, "MW": window, "MHT": window, "MWT": window, "HEAD_DIM": head_dim,
                              "PAD_FIRST": pad_first, "HAS_SHIFT": True, "HAS_PAD": has_pad,
                              "DOT_PRECISION": dot_precision(torch_dtype), **cfg}
                dense = cfg["G"] == 1
                rows, keys = dense_tile_shape(cfg, window * window) if dense else (1, 1)
                constexprs.update(DENSE_BIAS=dense, TILE_ROWS=rows, TILE_KEYS=keys)
                if backward:
                    constexprs.update(window_attention_bwd.aot_schedule(window * window, torch_dtype))
                    yield (*window_attention_bwd.aot_signature(dtype, ints), constexprs, options, values)
                    if not has_pad:
                        yield window_attention_bwd.aot_bias_table_config(window, values["heads"], dtype, values)
                else:
                    sig = {"QKV": f"*{dtype}", "TABLE": "*fp32", "TILES": "*fp32", "PAD": f"*{dtype}",
                           "OUT": f"*{dtype}", **{n: "i32" for n in ints}, "out_b": "i32", "out_h": "i32",
                           "out_w": "i32", "scale": "fp32", "mask_value": "fp32"}
                    yield window_attn_fwd_kernel, sig, constexprs, options, values
                    if dense and dtype == "bf16" and not has_pad:
                        yield _aot_dense_bias_config(window, cfg, values)
