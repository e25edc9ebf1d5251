"""Triton attention forward: FlashAttention-2 style (online softmax, one pass over the keys).

A program owns BLOCK_M queries of one (batch, head) and walks the keys in BLOCK_N blocks,
keeping the running row max ``m``, row sum ``l`` and the unnormalized output ``acc`` in fp32
registers. Scores are kept in log2 units: ``qk_scale = scale * log2(e)`` is folded into the
scores once, so the exponentials are ``exp2``.

The key range splits in two loops: blocks that every query of the tile may fully attend (no
bounds or causal mask to apply) and the rest (the last partial block, the causal diagonal),
which pay for the mask, in steps of TAIL_N keys (non-causal: the leftover keys rounded up to a
power of two >= 16, not a whole BLOCK_N). The key-padding mask, when present, applies to every
block.

Causal is bottom-right aligned: query ``i`` attends key ``j`` iff ``j <= i + causal_offset``
with ``causal_offset = n_kv - n_q``. A row with no key left has ``l == 0``: it stores zeros and
``lse = +inf`` (so that the backward's ``exp(s - lse)`` is 0 there, not NaN).

A launch covers the query rows from ``first_row`` on: short sequences run as two launches, full
BLOCK_M tiles and a small tile for the leftover rows (see ``query_launches`` in attention.py).

head_dim is padded to D_PAD (the next power of two, >= 16); the padded columns are loaded as
zeros (masked loads when EVEN_D is false) and never stored.
"""

from __future__ import annotations

import triton
import triton.language as tl

LN2 = tl.constexpr(0.6931471805599453)  # a constexpr global: readable inside @triton.jit


@triton.jit
def load_rows(base, rows, row_ok, stride_row, cols, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
              CHECK_ROWS: tl.constexpr):
    """A [len(rows), D_PAD] tile; rows past the end (CHECK_ROWS) and padded columns read as 0."""
    ptrs = base + rows.to(tl.int64)[:, None] * stride_row + cols[None, :]
    if CHECK_ROWS:
        if HEAD_DIM == D_PAD:
            return tl.load(ptrs, mask=row_ok[:, None], other=0.0)
        return tl.load(ptrs, mask=row_ok[:, None] & (cols[None, :] < HEAD_DIM), other=0.0)
    if HEAD_DIM == D_PAD:
        return tl.load(ptrs)
    return tl.load(ptrs, mask=cols[None, :] < HEAD_DIM, other=0.0)


@triton.jit
def store_rows(base, tile, rows, row_ok, stride_row, cols, HEAD_DIM: tl.constexpr):
    ptrs = base + rows.to(tl.int64)[:, None] * stride_row + cols[None, :]
    tl.store(ptrs, tile.to(base.dtype.element_ty), mask=row_ok[:, None] & (cols[None, :] < HEAD_DIM))


@triton.jit
def mask_scores(s, offs_m, offs_n, n_kv, causal_offset, PadMask,
                CHECK_BOUNDS: tl.constexpr, CAUSAL: tl.constexpr, HAS_PAD_MASK: tl.constexpr):
    """Sets to -inf the scores of keys past n_kv, after the causal diagonal, or padded."""
    if CHECK_BOUNDS:
        allowed = (offs_n < n_kv)[None, :]
        if CAUSAL:
            allowed = allowed & (offs_n[None, :] <= offs_m[:, None] + causal_offset)
        s = tl.where(allowed, s, float("-inf"))
    if HAS_PAD_MASK:
        padded = tl.load(PadMask + offs_n, mask=offs_n < n_kv, other=1)
        s = tl.where((padded == 0)[None, :], s, float("-inf"))
    return s


@triton.jit
def _attend_key_blocks(acc, l_i, m_i, q, K, V, PadMask, offs_m, cols, lo, hi,
                       stride_kn, stride_vn, n_kv, causal_offset, qk_scale,
                       CHECK_BOUNDS: tl.constexpr, CAUSAL: tl.constexpr, HAS_PAD_MASK: tl.constexpr,
                       HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                       PRECISION: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n < n_kv
        k = load_rows(K, offs_n, key_ok, stride_kn, cols, HEAD_DIM, D_PAD, CHECK_BOUNDS)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        s = mask_scores(s, offs_m, offs_n, n_kv, causal_offset, PadMask, CHECK_BOUNDS, CAUSAL, HAS_PAD_MASK)

        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row that has seen only masked keys keeps m = -inf; shift it by 0 so exp2 gives 0, not NaN.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_shift[:, None])
        alpha = tl.math.exp2(m_i - m_shift)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = load_rows(V, offs_n, key_ok, stride_vn, cols, HEAD_DIM, D_PAD, CHECK_BOUNDS)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def attention_fwd_kernel(
    Q, K, V, PadMask, Out, Lse,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on, stride_mb,
    n_heads, n_q, n_kv, first_row, qk_scale,
    CAUSAL: tl.constexpr, HAS_PAD_MASK: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TAIL_N: tl.constexpr, PRECISION: tl.constexpr,
):
    start_m = first_row + tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    batch, head = (bh // n_heads).to(tl.int64), (bh % n_heads).to(tl.int64)
    Q += batch * stride_qb + head * stride_qh
    K += batch * stride_kb + head * stride_kh
    V += batch * stride_vb + head * stride_vh
    Out += batch * stride_ob + head * stride_oh
    Lse += bh.to(tl.int64) * n_q
    if HAS_PAD_MASK:
        PadMask += batch * stride_mb

    offs_m = start_m + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, D_PAD)
    query_ok = offs_m < n_q
    q = load_rows(Q, offs_m, query_ok, stride_qn, cols, HEAD_DIM, D_PAD, True)

    causal_offset = n_kv - n_q
    full_blocks_end = (n_kv // BLOCK_N) * BLOCK_N  # keys [0, full_blocks_end) need no bounds check
    keys_end = n_kv
    if CAUSAL:
        # Every row of the tile sees keys j < start_m + causal_offset + 1 (its first row's limit).
        first_row_limit = tl.maximum(start_m + causal_offset + 1, 0)
        full_blocks_end = tl.minimum(full_blocks_end, (first_row_limit // BLOCK_N) * BLOCK_N)
        # No row of the tile sees keys j >= start_m + BLOCK_M + causal_offset.
        keys_end = tl.maximum(tl.minimum(n_kv, start_m + BLOCK_M + causal_offset), 0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    acc, l_i, m_i = _attend_key_blocks(acc, l_i, m_i, q, K, V, PadMask, offs_m, cols, 0, full_blocks_end,
                                       stride_kn, stride_vn, n_kv, causal_offset, qk_scale, False, CAUSAL,
                                       HAS_PAD_MASK, HEAD_DIM, D_PAD, BLOCK_N, PRECISION)
    acc, l_i, m_i = _attend_key_blocks(acc, l_i, m_i, q, K, V, PadMask, offs_m, cols, full_blocks_end, keys_end,
                                       stride_kn, stride_vn, n_kv, causal_offset, qk_scale, True, CAUSAL,
                                       HAS_PAD_MASK, HEAD_DIM, D_PAD, TAIL_N, PRECISION)

    empty_row = l_i == 0.0  # no key to attend: output 0, lse +inf
    l_safe = tl.where(empty_row, 1.0, l_i)
    store_rows(Out, acc / l_safe[:, None], offs_m, query_ok, stride_on, cols, HEAD_DIM)
    lse = tl.where(empty_row, float("inf"), (m_i + tl.math.log2(l_safe)) * LN2)
    tl.store(Lse + offs_m, lse, mask=query_ok)
