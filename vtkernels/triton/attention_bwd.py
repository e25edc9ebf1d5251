"""Triton attention backward, FlashAttention-2 style, atomic-free (three kernels).

With ``P = softmax(S)``, ``S = scale * Q K^T`` and the saved row logsumexp ``lse``:
``dV = P^T dO``, ``dP = dO V^T``, ``dS = P * (dP - delta)`` with ``delta = rowsum(dO * O)``,
``dQ = scale * dS K``, ``dK = scale * dS^T Q``. P is recomputed tile by tile from ``lse``
(``P = exp2(S * log2e - lse * log2e)``), so no N x N matrix ever exists in memory.

1. ``attention_bwd_delta_kernel``: ``delta`` per query row (fp32).
2. ``attention_bwd_dkdv_kernel``: a program owns BLOCK_N keys and walks the queries that see
   them (causal: from the diagonal down), accumulating dK and dV in registers.
3. ``attention_bwd_dq_kernel``: a program owns BLOCK_M queries and walks their keys,
   accumulating dQ in registers; like the forward, it covers the rows from ``first_row`` on
   (short sequences: full tiles, then a small tile for the leftover rows).

As in the forward, each walk splits into the blocks that need the bounds / causal mask (the
causal diagonal, a partial last block) and those that do not; the padding mask, when present,
applies everywhere.

Masked scores are -inf; rows with no key have ``lse = +inf``: both give P = 0, hence zero
gradients. Query rows past n_q load ``lse = +inf`` for the same reason.
"""

from __future__ import annotations

import triton
import triton.language as tl

from vtkernels.triton.attention_fwd import load_rows, mask_scores, store_rows

LOG2E = tl.constexpr(1.4426950408889634)  # a constexpr global: readable inside @triton.jit


@triton.jit
def attention_bwd_delta_kernel(
    Out, DOut, Delta, stride_ob, stride_oh, stride_on, stride_db, stride_dh, stride_dn, n_heads, n_q,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
):
    bh = tl.program_id(1)
    batch, head = (bh // n_heads).to(tl.int64), (bh % n_heads).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, D_PAD)
    query_ok = offs_m < n_q
    o = load_rows(Out + batch * stride_ob + head * stride_oh, offs_m, query_ok, stride_on, cols, HEAD_DIM, D_PAD, True)
    do = load_rows(DOut + batch * stride_db + head * stride_dh, offs_m, query_ok, stride_dn, cols, HEAD_DIM, D_PAD, True)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(Delta + bh.to(tl.int64) * n_q + offs_m, delta, mask=query_ok)


@triton.jit
def _probabilities(q, k, lse_log2, offs_m, offs_n, n_kv, causal_offset, PadMask, qk_scale,
                   CHECK_BOUNDS: tl.constexpr, CAUSAL: tl.constexpr, HAS_PAD_MASK: tl.constexpr,
                   PRECISION: tl.constexpr):
    """P tile [BLOCK_M, BLOCK_N] recomputed from the saved logsumexp (log2 units)."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    s = mask_scores(s, offs_m, offs_n, n_kv, causal_offset, PadMask, CHECK_BOUNDS, CAUSAL, HAS_PAD_MASK)
    return tl.math.exp2(s - lse_log2[:, None])


@triton.jit
def _dkdv_over_queries(dk, dv, k, v, Q, DOut, Lse, Delta, PadMask, offs_n, cols, lo, hi, stride_qn, stride_don,
                       n_q, n_kv, causal_offset, qk_scale,
                       CHECK_BOUNDS: tl.constexpr, CAUSAL: tl.constexpr, HAS_PAD_MASK: tl.constexpr,
                       HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, PRECISION: tl.constexpr):
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        query_ok = offs_m < n_q
        q = load_rows(Q, offs_m, query_ok, stride_qn, cols, HEAD_DIM, D_PAD, True)
        do = load_rows(DOut, offs_m, query_ok, stride_don, cols, HEAD_DIM, D_PAD, True)
        lse_log2 = tl.load(Lse + offs_m, mask=query_ok, other=float("inf")) * LOG2E
        delta = tl.load(Delta + offs_m, mask=query_ok, other=0.0)
        p = _probabilities(q, k, lse_log2, offs_m, offs_n, n_kv, causal_offset, PadMask, qk_scale,
                           CHECK_BOUNDS, CAUSAL, HAS_PAD_MASK, PRECISION)
        dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q, dk, input_precision=PRECISION)
    return dk, dv


@triton.jit
def attention_bwd_dkdv_kernel(
    Q, K, V, PadMask, DOut, Lse, Delta, DK, DV,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don, stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
    stride_mb, n_heads, n_q, n_kv, scale, qk_scale,
    CAUSAL: tl.constexpr, HAS_PAD_MASK: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    batch, head = (bh // n_heads).to(tl.int64), (bh % n_heads).to(tl.int64)
    Q += batch * stride_qb + head * stride_qh
    DOut += batch * stride_dob + head * stride_doh
    Lse += bh.to(tl.int64) * n_q
    Delta += bh.to(tl.int64) * n_q
    if HAS_PAD_MASK:
        PadMask += batch * stride_mb

    offs_n = start_n + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, D_PAD)
    key_ok = offs_n < n_kv
    k = load_rows(K + batch * stride_kb + head * stride_kh, offs_n, key_ok, stride_kn, cols, HEAD_DIM, D_PAD, True)
    v = load_rows(V + batch * stride_vb + head * stride_vh, offs_n, key_ok, stride_vn, cols, HEAD_DIM, D_PAD, True)
    dk = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)

    # Query blocks [start_q, masked_end) need the causal mask, [masked_end, n_q) do not.
    causal_offset = n_kv - n_q
    start_q = 0
    masked_end = 0
    if CAUSAL:
        # Query i sees key j iff i >= j - causal_offset: the first query block seeing this key
        # block, and the first one whose every row sees all of it (ceil to a block boundary).
        start_q = (tl.maximum(start_n - causal_offset, 0) // BLOCK_M) * BLOCK_M
        last_key_first_row = tl.maximum(start_n + BLOCK_N - 1 - causal_offset, 0)
        masked_end = tl.maximum(start_q, tl.cdiv(last_key_first_row, BLOCK_M) * BLOCK_M)
    # A partial last key block needs no bounds mask here: its keys past n_kv are zero rows whose
    # scores only reach their own rows of dK and dV, which are never stored.
    masked_end = tl.minimum(masked_end, n_q)
    dk, dv = _dkdv_over_queries(dk, dv, k, v, Q, DOut, Lse, Delta, PadMask, offs_n, cols, start_q, masked_end,
                                stride_qn, stride_don, n_q, n_kv, causal_offset, qk_scale, True, CAUSAL,
                                HAS_PAD_MASK, HEAD_DIM, D_PAD, BLOCK_M, PRECISION)
    dk, dv = _dkdv_over_queries(dk, dv, k, v, Q, DOut, Lse, Delta, PadMask, offs_n, cols, masked_end, n_q,
                                stride_qn, stride_don, n_q, n_kv, causal_offset, qk_scale, False, CAUSAL,
                                HAS_PAD_MASK, HEAD_DIM, D_PAD, BLOCK_M, PRECISION)

    store_rows(DK + batch * stride_dkb + head * stride_dkh, dk * scale, offs_n, key_ok, stride_dkn, cols, HEAD_DIM)
    store_rows(DV + batch * stride_dvb + head * stride_dvh, dv, offs_n, key_ok, stride_dvn, cols, HEAD_DIM)


@triton.jit
def _dq_over_keys(dq, q, do, lse_log2, delta, K, V, PadMask, offs_m, cols, lo, hi, stride_kn, stride_vn,
                  n_kv, causal_offset, qk_scale,
                  CHECK_BOUNDS: tl.constexpr, CAUSAL: tl.constexpr, HAS_PAD_MASK: tl.constexpr,
                  HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n < n_kv
        k = load_rows(K, offs_n, key_ok, stride_kn, cols, HEAD_DIM, D_PAD, CHECK_BOUNDS)
        v = load_rows(V, offs_n, key_ok, stride_vn, cols, HEAD_DIM, D_PAD, CHECK_BOUNDS)
        p = _probabilities(q, k, lse_log2, offs_m, offs_n, n_kv, causal_offset, PadMask, qk_scale,
                           CHECK_BOUNDS, CAUSAL, HAS_PAD_MASK, PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    return dq


@triton.jit
def attention_bwd_dq_kernel(
    Q, K, V, PadMask, DOut, Lse, Delta, DQ,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don, stride_dqb, stride_dqh, stride_dqn,
    stride_mb, n_heads, n_q, n_kv, first_row, scale, qk_scale,
    CAUSAL: tl.constexpr, HAS_PAD_MASK: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    start_m = first_row + tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    batch, head = (bh // n_heads).to(tl.int64), (bh % n_heads).to(tl.int64)
    K += batch * stride_kb + head * stride_kh
    V += batch * stride_vb + head * stride_vh
    if HAS_PAD_MASK:
        PadMask += batch * stride_mb

    offs_m = start_m + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, D_PAD)
    query_ok = offs_m < n_q
    q = load_rows(Q + batch * stride_qb + head * stride_qh, offs_m, query_ok, stride_qn, cols, HEAD_DIM, D_PAD, True)
    do = load_rows(DOut + batch * stride_dob + head * stride_doh, offs_m, query_ok, stride_don, cols, HEAD_DIM, D_PAD, True)
    lse_log2 = tl.load(Lse + bh.to(tl.int64) * n_q + offs_m, mask=query_ok, other=float("inf")) * LOG2E
    delta = tl.load(Delta + bh.to(tl.int64) * n_q + offs_m, mask=query_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)

    # Same split of the key range as the forward: full blocks without masks, then the rest.
    causal_offset = n_kv - n_q
    full_blocks_end = (n_kv // BLOCK_N) * BLOCK_N
    keys_end = n_kv
    if CAUSAL:
        first_row_limit = tl.maximum(start_m + causal_offset + 1, 0)
        full_blocks_end = tl.minimum(full_blocks_end, (first_row_limit // BLOCK_N) * BLOCK_N)
        keys_end = tl.maximum(tl.minimum(n_kv, start_m + BLOCK_M + causal_offset), 0)
    dq = _dq_over_keys(dq, q, do, lse_log2, delta, K, V, PadMask, offs_m, cols, 0, full_blocks_end, stride_kn,
                       stride_vn, n_kv, causal_offset, qk_scale, False, CAUSAL, HAS_PAD_MASK, HEAD_DIM, D_PAD,
                       BLOCK_N, PRECISION)
    dq = _dq_over_keys(dq, q, do, lse_log2, delta, K, V, PadMask, offs_m, cols, full_blocks_end, keys_end, stride_kn,
                       stride_vn, n_kv, causal_offset, qk_scale, True, CAUSAL, HAS_PAD_MASK, HEAD_DIM, D_PAD,
                       BLOCK_N, PRECISION)

    store_rows(DQ + batch * stride_dqb + head * stride_dqh, dq * scale, offs_m, query_ok, stride_dqn, cols, HEAD_DIM)
