"""Triton attention backward, FlashAttention-2 style, atomic-free (two kernels).

With ``P = softmax(S)``, ``S = scale * Q K^T`` and the saved row logsumexp ``lse``:
``dV = P^T dO``, ``dP = dO V^T``, ``dS = P * (dP - delta)`` with ``delta = rowsum(dO * O)``,
``dQ = scale * dS K``, ``dK = scale * dS^T Q``. P is recomputed tile by tile from ``lse``
(``P = exp2(S * log2e - lse * log2e)``), so no N x N matrix ever exists in memory.

1. ``attention_bwd_dq_kernel``: a program owns BLOCK_M queries and walks their keys,
   accumulating dQ in registers; it computes its rows' ``delta`` first (from the O and dO tiles
   it loads once) and stores it for the dK / dV kernel, launched after it. Like the forward, it
   covers the rows from ``first_row`` on (short sequences: full tiles, then a small tile for the
   leftover rows).
2. ``attention_bwd_dkdv_kernel``: a program owns BLOCK_N keys and walks the queries that see
   them (causal: from the diagonal down), accumulating dK and dV in registers; it covers the
   keys from ``first_key`` on (short sequences: full tiles, then a small tile for the leftover keys).
   Its tiles are keys x queries (``P^T = exp(K Q^T - lse)``, ``dV += P^T dO``, ``dK += dS^T Q``):
   the program's keys are the M side of every product (_dkdv_over_queries).

As in the forward, each walk splits into the blocks that need the bounds / causal mask (the
causal diagonal, a partial last block) and those that do not; the padding mask, when present,
applies everywhere (the dK / dV kernel reads its keys' mask once, before its walk).

Head vectors are split in two column chunks as in the forward (attention_fwd.py's docstring).

With TMA (16-bit on sm_90, head_dim in one chunk), the blocks a program walks arrive through
tensor descriptors of the (B, H, N, d) views, as in the forward: query and dO blocks in the dK / dV
kernel (QD, DOD), key and value blocks in the dQ kernel (KD, VD), rows past N zero-filled (the same
zeros the pointer loads' masks give). The program's own tile is loaded once, through pointers.

Masked scores are -inf; rows with no key have ``lse = +inf``: both give P = 0, hence zero
gradients. Query rows past n_q load ``lse = +inf`` for the same reason.
"""

from __future__ import annotations

import triton
import triton.language as tl

from vtkernels.triton.attention_fwd import (dot_accumulate, dot_rows, heavy_first_block, load_head, load_tile,
                                            mask_scores, store_head)

LOG2E = tl.constexpr(1.4426950408889634)  # a constexpr global: readable inside @triton.jit


@triton.jit
def _probabilities(q, q_rest, k, k_rest, lse_log2, offs_m, offs_n, n_kv, causal_offset, PadMask, qk_scale,
                   CHECK_BOUNDS: tl.constexpr, CAUSAL: tl.constexpr, HAS_PAD_MASK: tl.constexpr,
                   D_REST: tl.constexpr, PRECISION: tl.constexpr):
    """P tile [BLOCK_M, BLOCK_N] recomputed from the saved logsumexp (log2 units)."""
    s = dot_rows(q, q_rest, k, k_rest, D_REST, PRECISION) * qk_scale
    s = mask_scores(s, offs_m, offs_n, n_kv, causal_offset, PadMask, CHECK_BOUNDS, CAUSAL, HAS_PAD_MASK)
    return tl.math.exp2(s - lse_log2[:, None])


@triton.jit
def _probabilities_by_key(k, k_rest, q, q_rest, lse_log2, offs_n, offs_m, causal_offset, key_visible, qk_scale,
                          CAUSAL_MASK: tl.constexpr, HAS_PAD_MASK: tl.constexpr, D_REST: tl.constexpr,
                          PRECISION: tl.constexpr):
    """P^T tile [BLOCK_N, BLOCK_M] (keys x queries) recomputed from the saved logsumexp: the
    transpose of _probabilities, masked by the causal rule (CAUSAL_MASK) and ``key_visible`` (the
    program's keys that are not padding, with HAS_PAD_MASK)."""
    s = dot_rows(k, k_rest, q, q_rest, D_REST, PRECISION) * qk_scale
    if CAUSAL_MASK:
        s = tl.where(offs_n[:, None] <= offs_m[None, :] + causal_offset, s, float("-inf"))
    if HAS_PAD_MASK:
        s = tl.where(key_visible[:, None], s, float("-inf"))
    return tl.math.exp2(s - lse_log2[None, :])


@triton.jit
def _dkdv_over_queries(dk, dk_rest, dv, dv_rest, k, k_rest, v, v_rest, Q, DOut, QD, DOD, batch, head, Lse, Delta,
                       key_visible, offs_n, lo, hi, stride_qn, stride_don, n_q, causal_offset, qk_scale,
                       CAUSAL_MASK: tl.constexpr, HAS_PAD_MASK: tl.constexpr, CHECK_QUERIES: tl.constexpr,
                       D_MAIN: tl.constexpr, D_REST: tl.constexpr, BLOCK_M: tl.constexpr, PRECISION: tl.constexpr,
                       TMA: tl.constexpr):
    # Every product is computed keys-major (S^T = K Q^T, dP^T = V dO^T): the program's BLOCK_N keys
    # are the M side of each tensor-core product and P^T, dS^T feed the next product straight from
    # registers. Queries-major (S = Q K^T) would put BLOCK_M = 32 rows on the M side, below
    # wgmma's 64 (sm_90 compiles those products to mma.sync), and P, dS would have to be
    # transposed through shared memory for dV and dK.
    # CHECK_QUERIES: the range may end inside a query block (rows past n_q: lse +inf, so P = 0).
    # Without it the loads need no predicates (sm_90: the per-query lse / delta loads were ~90 of
    # the loop's 340 instructions at ViT-B's 64-key tiles).
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        query_ok = offs_m < n_q
        if TMA:
            q, q_rest = load_tile(QD, batch, head, start_m, BLOCK_M, D_MAIN), 0.0
            do, do_rest = load_tile(DOD, batch, head, start_m, BLOCK_M, D_MAIN), 0.0
        else:
            q, q_rest = load_head(Q, offs_m, query_ok, stride_qn, D_MAIN, D_REST, CHECK_QUERIES)
            do, do_rest = load_head(DOut, offs_m, query_ok, stride_don, D_MAIN, D_REST, CHECK_QUERIES)
        if CHECK_QUERIES:
            lse_log2 = tl.load(Lse + offs_m, mask=query_ok, other=float("inf")) * LOG2E
            delta = tl.load(Delta + offs_m, mask=query_ok, other=0.0)
        else:
            lse_log2 = tl.load(Lse + offs_m) * LOG2E
            delta = tl.load(Delta + offs_m)
        p_t = _probabilities_by_key(k, k_rest, q, q_rest, lse_log2, offs_n, offs_m, causal_offset, key_visible,
                                    qk_scale, CAUSAL_MASK, HAS_PAD_MASK, D_REST, PRECISION)
        dv, dv_rest = dot_accumulate(p_t, do, do_rest, dv, dv_rest, D_REST, PRECISION)
        dp_t = dot_rows(v, v_rest, do, do_rest, D_REST, PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk, dk_rest = dot_accumulate(ds_t, q, q_rest, dk, dk_rest, D_REST, PRECISION)
    return dk, dk_rest, dv, dv_rest


@triton.jit
def attention_bwd_dkdv_kernel(
    Q, K, V, QD, DOD, PadMask, DOut, Lse, Delta, DK, DV,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don, stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
    stride_mb, n_heads, n_q, n_kv, first_key, scale, qk_scale,
    CAUSAL: tl.constexpr, HAS_PAD_MASK: tl.constexpr, D_MAIN: tl.constexpr, D_REST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr,
):
    """QD, DOD: descriptors of Q and DOut when TMA (module docstring), else unused."""
    start_n = first_key + tl.program_id(0) * BLOCK_N  # (causal: the first key blocks are the heavy ones)
    bh = tl.program_id(1)
    batch32, head32 = bh // n_heads, bh % n_heads  # descriptor coordinates are 32-bit
    batch, head = batch32.to(tl.int64), head32.to(tl.int64)
    Q += batch * stride_qb + head * stride_qh
    DOut += batch * stride_dob + head * stride_doh
    Lse += bh.to(tl.int64) * n_q
    Delta += bh.to(tl.int64) * n_q
    if HAS_PAD_MASK:
        PadMask += batch * stride_mb

    offs_n = start_n + tl.arange(0, BLOCK_N)
    key_ok = offs_n < n_kv
    k, k_rest = load_head(K + batch * stride_kb + head * stride_kh, offs_n, key_ok, stride_kn, D_MAIN, D_REST, True)
    v, v_rest = load_head(V + batch * stride_vb + head * stride_vh, offs_n, key_ok, stride_vn, D_MAIN, D_REST, True)
    dk = tl.zeros([BLOCK_N, D_MAIN], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D_MAIN], dtype=tl.float32)
    dk_rest = 0.0
    dv_rest = 0.0
    if D_REST > 0:
        dk_rest = tl.zeros([BLOCK_N, D_REST], dtype=tl.float32)
        dv_rest = tl.zeros([BLOCK_N, D_REST], dtype=tl.float32)

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
    # Keys past n_kv need no mask: they are zero rows whose scores only reach their own rows of dK
    # and dV, which are never stored. Padded keys do: their gradients must be zero.
    key_visible = key_ok
    if HAS_PAD_MASK:
        key_visible = tl.load(PadMask + offs_n, mask=key_ok, other=1) == 0
    masked_end = tl.minimum(masked_end, n_q)
    # The unmasked queries: whole blocks, then the rows of the last partial block (bounds-checked).
    full_end = masked_end + (n_q - masked_end) // BLOCK_M * BLOCK_M
    dk, dk_rest, dv, dv_rest = _dkdv_over_queries(
        dk, dk_rest, dv, dv_rest, k, k_rest, v, v_rest, Q, DOut, QD, DOD, batch32, head32, Lse, Delta, key_visible,
        offs_n, start_q, masked_end, stride_qn, stride_don, n_q, causal_offset, qk_scale, CAUSAL, HAS_PAD_MASK,
        True, D_MAIN, D_REST, BLOCK_M, PRECISION, TMA)
    dk, dk_rest, dv, dv_rest = _dkdv_over_queries(
        dk, dk_rest, dv, dv_rest, k, k_rest, v, v_rest, Q, DOut, QD, DOD, batch32, head32, Lse, Delta, key_visible,
        offs_n, masked_end, full_end, stride_qn, stride_don, n_q, causal_offset, qk_scale, False, HAS_PAD_MASK,
        False, D_MAIN, D_REST, BLOCK_M, PRECISION, TMA)
    dk, dk_rest, dv, dv_rest = _dkdv_over_queries(
        dk, dk_rest, dv, dv_rest, k, k_rest, v, v_rest, Q, DOut, QD, DOD, batch32, head32, Lse, Delta, key_visible,
        offs_n, full_end, n_q, stride_qn, stride_don, n_q, causal_offset, qk_scale, False, HAS_PAD_MASK,
        True, D_MAIN, D_REST, BLOCK_M, PRECISION, TMA)

    if D_REST > 0:
        dk_rest = dk_rest * scale
    store_head(DK + batch * stride_dkb + head * stride_dkh, dk * scale, dk_rest, offs_n, key_ok, stride_dkn,
               D_MAIN, D_REST)
    store_head(DV + batch * stride_dvb + head * stride_dvh, dv, dv_rest, offs_n, key_ok, stride_dvn, D_MAIN, D_REST)


@triton.jit
def _dq_over_keys(dq, dq_rest, q, q_rest, do, do_rest, lse_log2, delta, K, V, KD, VD, batch, head, PadMask, offs_m,
                  lo, hi, stride_kn, stride_vn, n_kv, causal_offset, qk_scale,
                  CHECK_BOUNDS: tl.constexpr, CAUSAL: tl.constexpr, HAS_PAD_MASK: tl.constexpr,
                  D_MAIN: tl.constexpr, D_REST: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
                  TMA: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n < n_kv
        if TMA:
            k, k_rest = load_tile(KD, batch, head, start_n, BLOCK_N, D_MAIN), 0.0
            v, v_rest = load_tile(VD, batch, head, start_n, BLOCK_N, D_MAIN), 0.0
        else:
            k, k_rest = load_head(K, offs_n, key_ok, stride_kn, D_MAIN, D_REST, CHECK_BOUNDS)
            v, v_rest = load_head(V, offs_n, key_ok, stride_vn, D_MAIN, D_REST, CHECK_BOUNDS)
        p = _probabilities(q, q_rest, k, k_rest, lse_log2, offs_m, offs_n, n_kv, causal_offset, PadMask, qk_scale,
                           CHECK_BOUNDS, CAUSAL, HAS_PAD_MASK, D_REST, PRECISION)
        dp = dot_rows(do, do_rest, v, v_rest, D_REST, PRECISION)
        ds = p * (dp - delta[:, None])
        dq, dq_rest = dot_accumulate(ds, k, k_rest, dq, dq_rest, D_REST, PRECISION)
    return dq, dq_rest


@triton.jit
def attention_bwd_dq_kernel(
    Q, K, V, KD, VD, PadMask, Out, DOut, Lse, Delta, DQ,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on, stride_dob, stride_doh, stride_don, stride_dqb, stride_dqh, stride_dqn,
    stride_mb, n_heads, n_q, n_kv, first_row, scale, qk_scale,
    CAUSAL: tl.constexpr, HAS_PAD_MASK: tl.constexpr, D_MAIN: tl.constexpr, D_REST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr,
):
    """KD, VD: descriptors of K and V when TMA (module docstring), else unused."""
    start_m = first_row + heavy_first_block(CAUSAL) * BLOCK_M
    bh = tl.program_id(1)
    batch32, head32 = bh // n_heads, bh % n_heads  # descriptor coordinates are 32-bit
    batch, head = batch32.to(tl.int64), head32.to(tl.int64)
    K += batch * stride_kb + head * stride_kh
    V += batch * stride_vb + head * stride_vh
    if HAS_PAD_MASK:
        PadMask += batch * stride_mb

    offs_m = start_m + tl.arange(0, BLOCK_M)
    query_ok = offs_m < n_q
    q, q_rest = load_head(Q + batch * stride_qb + head * stride_qh, offs_m, query_ok, stride_qn, D_MAIN, D_REST, True)
    do, do_rest = load_head(DOut + batch * stride_dob + head * stride_doh, offs_m, query_ok, stride_don,
                            D_MAIN, D_REST, True)
    lse_log2 = tl.load(Lse + bh.to(tl.int64) * n_q + offs_m, mask=query_ok, other=float("inf")) * LOG2E
    o, o_rest = load_head(Out + batch * stride_ob + head * stride_oh, offs_m, query_ok, stride_on, D_MAIN, D_REST, True)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    if D_REST > 0:
        delta += tl.sum(o_rest.to(tl.float32) * do_rest.to(tl.float32), axis=1)
    tl.store(Delta + bh.to(tl.int64) * n_q + offs_m, delta, mask=query_ok)  # for the dK / dV kernel
    dq = tl.zeros([BLOCK_M, D_MAIN], dtype=tl.float32)
    dq_rest = 0.0
    if D_REST > 0:
        dq_rest = tl.zeros([BLOCK_M, D_REST], dtype=tl.float32)

    # Same split of the key range as the forward: full blocks without masks, then the rest.
    causal_offset = n_kv - n_q
    full_blocks_end = (n_kv // BLOCK_N) * BLOCK_N
    keys_end = n_kv
    if CAUSAL:
        first_row_limit = tl.maximum(start_m + causal_offset + 1, 0)
        full_blocks_end = tl.minimum(full_blocks_end, (first_row_limit // BLOCK_N) * BLOCK_N)
        keys_end = tl.maximum(tl.minimum(n_kv, start_m + BLOCK_M + causal_offset), 0)
    dq, dq_rest = _dq_over_keys(
        dq, dq_rest, q, q_rest, do, do_rest, lse_log2, delta, K, V, KD, VD, batch32, head32, PadMask, offs_m, 0,
        full_blocks_end, stride_kn, stride_vn, n_kv, causal_offset, qk_scale, False, CAUSAL, HAS_PAD_MASK, D_MAIN,
        D_REST, BLOCK_N, PRECISION, TMA)
    dq, dq_rest = _dq_over_keys(
        dq, dq_rest, q, q_rest, do, do_rest, lse_log2, delta, K, V, KD, VD, batch32, head32, PadMask, offs_m,
        full_blocks_end, keys_end, stride_kn, stride_vn, n_kv, causal_offset, qk_scale, True, CAUSAL, HAS_PAD_MASK,
        D_MAIN, D_REST, BLOCK_N, PRECISION, TMA)

    if D_REST > 0:
        dq_rest = dq_rest * scale
    store_head(DQ + batch * stride_dqb + head * stride_dqh, dq * scale, dq_rest, offs_m, query_ok, stride_dqn,
               D_MAIN, D_REST)
