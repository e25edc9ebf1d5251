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
BLOCK_M tiles and a small tile for the leftover rows (see ``program_launches`` in attention.py).

Split keys (flash-decoding): when a launch has too few programs to fill the GPU (decoding one
query against a cache, DETR's 100 queries against 850 keys), grid axis 2 splits the keys into
ranges of ``split_keys`` (a multiple of BLOCK_N); each program attends its range only and writes
its normalized output and logsumexp to fp32 partial buffers (``stride_out_split`` /
``stride_lse_split`` apart), which ``attention_combine_kernel`` merges:
``lse = log sum_s exp(lse_s)``, ``out = sum_s exp(lse_s - lse) out_s``. A split that holds no
visible key stores lse = +inf, which the merge reads as weight 0. Unsplit, the range is all keys.

With TMA (16-bit on sm_90, power-of-two head_dim), the query tile and the unmasked key / value
blocks arrive through tensor descriptors of the (B, H, N, d) views (QD, KD, VD: boxes
[1, 1, rows, d]; rows past N zero-filled); the masked steps keep pointer loads, since their
TAIL_N-key blocks differ from the descriptors' BLOCK_N.

Head vectors are held as two column chunks, ``[0, D_MAIN)`` and ``[D_MAIN, HEAD_DIM)`` with
``D_REST = HEAD_DIM - D_MAIN`` (both powers of two, as tl.arange needs): 80 = 64 + 16,
96 = 64 + 32, and 32 / 64 / 128 in one chunk (D_REST = 0). Padding 80 or 96 up to 128 instead
would spend 60% / 33% more tensor-core work on zero columns. A dot over the head dimension is
two dots into one accumulator (``dot_rows``); a dot producing head columns writes two
accumulators (``dot_accumulate``). With D_REST = 0 the second chunk is a placeholder scalar
that no code path reads (Triton functions cannot return None).
"""

from __future__ import annotations

import triton
import triton.language as tl

LN2 = tl.constexpr(0.6931471805599453)  # a constexpr global: readable inside @triton.jit


@triton.jit
def load_rows(base, rows, row_ok, stride_row, cols, CHECK_ROWS: tl.constexpr):
    """A [len(rows), len(cols)] tile; rows past the end (CHECK_ROWS) read as 0."""
    ptrs = base + rows.to(tl.int64)[:, None] * stride_row + cols[None, :]
    if CHECK_ROWS:
        return tl.load(ptrs, mask=row_ok[:, None], other=0.0)
    return tl.load(ptrs)


@triton.jit
def load_head(base, rows, row_ok, stride_row, D_MAIN: tl.constexpr, D_REST: tl.constexpr, CHECK_ROWS: tl.constexpr):
    """The rows' head vectors as two tiles, columns [0, D_MAIN) and [D_MAIN, D_MAIN + D_REST);
    the second is a placeholder scalar when D_REST == 0 (see the module docstring)."""
    main = load_rows(base, rows, row_ok, stride_row, tl.arange(0, D_MAIN), CHECK_ROWS)
    rest = 0.0
    if D_REST > 0:
        rest = load_rows(base, rows, row_ok, stride_row, D_MAIN + tl.arange(0, D_REST), CHECK_ROWS)
    return main, rest


@triton.jit
def store_rows(base, tile, rows, row_ok, stride_row, cols):
    ptrs = base + rows.to(tl.int64)[:, None] * stride_row + cols[None, :]
    tl.store(ptrs, tile.to(base.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def store_head(base, main, rest, rows, row_ok, stride_row, D_MAIN: tl.constexpr, D_REST: tl.constexpr):
    store_rows(base, main, rows, row_ok, stride_row, tl.arange(0, D_MAIN))
    if D_REST > 0:
        store_rows(base, rest, rows, row_ok, stride_row, D_MAIN + tl.arange(0, D_REST))


@triton.jit
def dot_rows(a, a_rest, b, b_rest, D_REST: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b^T over the whole head dimension (both column chunks), fp32."""
    s = tl.dot(a, tl.trans(b), input_precision=PRECISION)
    if D_REST > 0:
        s = tl.dot(a_rest, tl.trans(b_rest), s, input_precision=PRECISION)
    return s


@triton.jit
def dot_accumulate(p, v, v_rest, acc, acc_rest, D_REST: tl.constexpr, PRECISION: tl.constexpr):
    """(acc, acc_rest) += p @ (v, v_rest), chunk by chunk; p is cast to v's dtype."""
    p = p.to(v.dtype)
    acc = tl.dot(p, v, acc, input_precision=PRECISION)
    if D_REST > 0:
        acc_rest = tl.dot(p, v_rest, acc_rest, input_precision=PRECISION)
    return acc, acc_rest


@triton.jit
def heavy_first_block(CAUSAL: tl.constexpr):
    """This program's block along grid axis 0. Under the causal mask the last query blocks see the
    most keys; blocks are dispatched in program-id order, so those run first and the longest
    programs do not trail at the end of the launch."""
    block = tl.program_id(0)
    if CAUSAL:
        block = tl.num_programs(0) - 1 - block
    return block


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
def load_tile(desc, batch, head, first_row, ROWS: tl.constexpr, D: tl.constexpr):
    """Rows [first_row, first_row + ROWS) of one (batch, head) from a (B, H, N, d) descriptor."""
    return desc.load([batch, head, first_row, 0]).reshape(ROWS, D)


@triton.jit
def _attend_key_blocks(acc, acc_rest, l_i, m_i, q, q_rest, K, V, KD, VD, batch, head, PadMask, offs_m, lo, hi,
                       stride_kn, stride_vn, n_kv, causal_offset, qk_scale,
                       CHECK_BOUNDS: tl.constexpr, CAUSAL: tl.constexpr, HAS_PAD_MASK: tl.constexpr,
                       D_MAIN: tl.constexpr, D_REST: tl.constexpr, BLOCK_N: tl.constexpr,
                       PRECISION: tl.constexpr, TMA: tl.constexpr, POSITIVE_SCALE: tl.constexpr):
    """Keys [lo, hi) in BLOCK_N steps; K / V blocks from the descriptors KD / VD when TMA (then
    D_REST is 0 and no bounds check is asked for), else through the pointers. POSITIVE_SCALE
    (qk_scale > 0, as always in practice): the row max is taken on the raw products and scaled
    once per row, and the exponent is one FFMA, s * qk_scale - m: one multiply per score fewer."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n < n_kv
        if TMA:
            k, k_rest = load_tile(KD, batch, head, start_n, BLOCK_N, D_MAIN), 0.0
        else:
            k, k_rest = load_head(K, offs_n, key_ok, stride_kn, D_MAIN, D_REST, CHECK_BOUNDS)
        s = dot_rows(q, q_rest, k, k_rest, D_REST, PRECISION)
        later_scale = qk_scale  # positive: applied after the max, masked scores stay -inf through it
        if not POSITIVE_SCALE:
            s = s * qk_scale
            later_scale = 1.0
        s = mask_scores(s, offs_m, offs_n, n_kv, causal_offset, PadMask, CHECK_BOUNDS, CAUSAL, HAS_PAD_MASK)
        m_new = tl.maximum(m_i, tl.max(s, 1) * later_scale)
        # A row that has seen only masked keys keeps m = -inf; shift it by 0 so exp2 gives 0, not NaN.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s * later_scale - m_shift[:, None])
        alpha = tl.math.exp2(m_i - m_shift)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if D_REST > 0:
            acc_rest = acc_rest * alpha[:, None]
        if TMA:
            v, v_rest = load_tile(VD, batch, head, start_n, BLOCK_N, D_MAIN), 0.0
        else:
            v, v_rest = load_head(V, offs_n, key_ok, stride_vn, D_MAIN, D_REST, CHECK_BOUNDS)
        acc, acc_rest = dot_accumulate(p, v, v_rest, acc, acc_rest, D_REST, PRECISION)
        m_i = m_new
    return acc, acc_rest, l_i, m_i


@triton.jit
def attention_fwd_kernel(
    Q, K, V, QD, KD, VD, PadMask, Out, Lse,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on, stride_mb,
    n_heads, n_q, n_kv, first_row, qk_scale, split_keys, stride_out_split, stride_lse_split, out_first_row,
    out_rows, CAUSAL: tl.constexpr, HAS_PAD_MASK: tl.constexpr, D_MAIN: tl.constexpr, D_REST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TAIL_N: tl.constexpr, PRECISION: tl.constexpr,
    TMA: tl.constexpr, POSITIVE_SCALE: tl.constexpr,
):
    """Q, K, V: pointers to the (B, H, N, d) views; QD, KD, VD: their descriptors when TMA (see
    the module docstring), else unused. Query row i is stored at row ``i - out_first_row`` of Out
    and of Lse, whose (batch, head) slices hold ``out_rows`` rows: (0, n_q) unsplit, and
    (first_row, this launch's rows) into the split partials, which hold this launch's rows only."""
    start_m = first_row + heavy_first_block(CAUSAL) * BLOCK_M
    bh = tl.program_id(1)
    batch32, head32 = bh // n_heads, bh % n_heads  # descriptor coordinates are 32-bit
    batch, head = batch32.to(tl.int64), head32.to(tl.int64)
    Q += batch * stride_qb + head * stride_qh
    K += batch * stride_kb + head * stride_kh
    V += batch * stride_vb + head * stride_vh
    split = tl.program_id(2).to(tl.int64)  # key range (module docstring); 0 unsplit
    Out += batch * stride_ob + head * stride_oh + split * stride_out_split
    Lse += bh.to(tl.int64) * out_rows + split * stride_lse_split
    if HAS_PAD_MASK:
        PadMask += batch * stride_mb

    offs_m = start_m + tl.arange(0, BLOCK_M)
    query_ok = offs_m < n_q
    if TMA:
        q, q_rest = load_tile(QD, batch32, head32, start_m, BLOCK_M, D_MAIN), 0.0
    else:
        q, q_rest = load_head(Q, offs_m, query_ok, stride_qn, D_MAIN, D_REST, True)

    causal_offset = n_kv - n_q
    full_blocks_end = (n_kv // BLOCK_N) * BLOCK_N  # keys [0, full_blocks_end) need no bounds check
    keys_end = n_kv
    if CAUSAL:
        # Every row of the tile sees keys j < start_m + causal_offset + 1 (its first row's limit).
        first_row_limit = tl.maximum(start_m + causal_offset + 1, 0)
        full_blocks_end = tl.minimum(full_blocks_end, (first_row_limit // BLOCK_N) * BLOCK_N)
        # No row of the tile sees keys j >= start_m + BLOCK_M + causal_offset.
        keys_end = tl.maximum(tl.minimum(n_kv, start_m + BLOCK_M + causal_offset), 0)

    # This program's keys: [key_lo, key_hi), cut from both loops' ranges.
    key_lo = tl.program_id(2) * split_keys
    key_hi = key_lo + split_keys
    masked_start = tl.maximum(full_blocks_end, key_lo)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_MAIN], dtype=tl.float32)
    acc_rest = 0.0
    if D_REST > 0:
        acc_rest = tl.zeros([BLOCK_M, D_REST], dtype=tl.float32)
    acc, acc_rest, l_i, m_i = _attend_key_blocks(
        acc, acc_rest, l_i, m_i, q, q_rest, K, V, KD, VD, batch32, head32, PadMask, offs_m, key_lo,
        tl.minimum(full_blocks_end, key_hi), stride_kn, stride_vn, n_kv, causal_offset, qk_scale, False, CAUSAL,
        HAS_PAD_MASK, D_MAIN, D_REST, BLOCK_N, PRECISION, TMA, POSITIVE_SCALE)
    acc, acc_rest, l_i, m_i = _attend_key_blocks(
        acc, acc_rest, l_i, m_i, q, q_rest, K, V, KD, VD, batch32, head32, PadMask, offs_m, masked_start,
        tl.minimum(keys_end, key_hi), stride_kn, stride_vn, n_kv, causal_offset, qk_scale, True, CAUSAL,
        HAS_PAD_MASK, D_MAIN, D_REST, TAIL_N, PRECISION, False, POSITIVE_SCALE)

    empty_row = l_i == 0.0  # no key to attend: output 0, lse +inf
    l_safe = tl.where(empty_row, 1.0, l_i)
    if D_REST > 0:
        acc_rest = acc_rest / l_safe[:, None]
    out_offs = offs_m - out_first_row
    store_head(Out, acc / l_safe[:, None], acc_rest, out_offs, query_ok, stride_on, D_MAIN, D_REST)
    lse = tl.where(empty_row, float("inf"), (m_i + tl.math.log2(l_safe)) * LN2)
    tl.store(Lse + out_offs, lse, mask=query_ok)


@triton.jit
def attention_combine_kernel(
    Part, PartLse, Out, Lse, stride_ps, stride_pb, stride_ph, stride_pn, stride_ob, stride_oh, stride_on,
    stride_lse_split, n_heads, n_q, first_row, row_end, n_splits,
    HEAD_DIM: tl.constexpr, D_POW2: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """Merges the split-key partials (module docstring) of rows [first_row, row_end): Part
    (splits, B, H, rows, d) and PartLse (splits, B, H, rows) fp32, which hold these rows only
    (rows = row_end - first_row) -> Out (B, H, Nq, d view) and Lse (B, H, Nq); +inf lse (and
    zeros) where no split saw a key."""
    bh = tl.program_id(1)
    batch, head = (bh // n_heads).to(tl.int64), (bh % n_heads).to(tl.int64)
    local = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # row in the partials
    offs_m = first_row + local
    row_ok = offs_m < row_end
    cols = tl.arange(0, D_POW2)
    tile_ok = row_ok[:, None] & (cols < HEAD_DIM)[None, :]
    PartLse += bh.to(tl.int64) * (row_end - first_row) + local
    Part += batch * stride_pb + head * stride_ph + local.to(tl.int64)[:, None] * stride_pn + cols[None, :]

    # Both loops walk the splits by advancing pointers (64-bit adds, no split * stride product).
    lse_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    lse_ptrs = PartLse
    for _ in range(n_splits):
        lse_s = tl.load(lse_ptrs, mask=row_ok, other=float("inf"))
        lse_max = tl.maximum(lse_max, tl.where(lse_s == float("inf"), float("-inf"), lse_s))
        lse_ptrs += stride_lse_split
    shift = tl.where(lse_max == float("-inf"), 0.0, lse_max)
    total = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_POW2], dtype=tl.float32)
    for _ in range(n_splits):
        lse_s = tl.load(PartLse, mask=row_ok, other=float("inf"))
        weight = tl.where(lse_s == float("inf"), 0.0, tl.exp(lse_s - shift))
        acc += weight[:, None] * tl.load(Part, mask=tile_ok, other=0.0)
        total += weight
        PartLse += stride_lse_split
        Part += stride_ps

    empty_row = total == 0.0
    total_safe = tl.where(empty_row, 1.0, total)
    out_ptrs = Out + batch * stride_ob + head * stride_oh + offs_m.to(tl.int64)[:, None] * stride_on + cols[None, :]
    tl.store(out_ptrs, (acc / total_safe[:, None]).to(Out.dtype.element_ty), mask=tile_ok)
    tl.store(Lse + bh.to(tl.int64) * n_q + offs_m, tl.where(empty_row, float("inf"), shift + tl.log(total_safe)),
             mask=row_ok)
