"""Triton Swin window attention, backward (layout and index math: see window_attention.py).

A program owns GROUPS consecutive groups of G windows of one (batch, head). Per group it keeps
K and V on chip, walks the query chunks, recomputes the exact softmax P (whole windows on chip,
so neither the output nor the row statistics are needed), and produces

    dP = dO V^T,  dS = P * (dP - rowsum(P * dP)),
    dQ = dS K * scale (stored per chunk),  dK += dS^T Q * scale,  dV += P^T dO (stored per group),

each scattered straight to image order in dqkv: every real token belongs to exactly one window,
so there are no atomics. The bias-table gradient is deterministic: each program first reduces
its windows' dS into one (N, N) partial indexed by the two tokens' positions in their window
(on chip for windows of <= 64 tokens; a larger window's dS is added into the program's own slab
in memory, in a fixed order), torch.sum adds the partials over batch and programs, and
``bias_table_grad_kernel`` gathers each table row's token pairs out of the (heads, N * N) sums
(one launch, writing the table gradient in the table's layout and dtype).
Padding tokens' dK / dV rows are summed per program into a partial for ``pad_qkv``'s gradient.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from vtkernels.reference.window_attention import relative_position_index
from vtkernels.triton.window_attention import (
    Geometry, chunk_bias, attention_probs, common_args, common_constexprs, dense_bias_tiles, dense_tile_shape,
    launch_config, load_tokens, program_bias, same_window, shares_bias, token_offsets, window_keys, window_tokens,
)
from vtkernels.triton.tiling import cdiv, next_power_of_2, sm_count


@triton.jit
def store_tokens(DQKV, x, b, tokens, part, h, C, stride_b, stride_h, stride_w,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    _, real, _, _, _, _, _, _ = tokens
    d = tl.arange(0, BLOCK_D)
    offs = token_offsets(b, tokens, stride_b, stride_h, stride_w, part * C + h * HEAD_DIM + d)
    tl.store(DQKV + offs, x.to(DQKV.dtype.element_ty), mask=real[:, None] & (d < HEAD_DIM)[None, :])


@triton.jit
def add_bias_partial(DBIAS_PARTIAL, ds, q_tokens, k_tokens, slab, N: tl.constexpr, MW: tl.constexpr):
    """slab[p_i, p_j] += dS[i, j] over one key chunk, (p_i, p_j) the tokens' positions in their window
    (one window per tile here: G = 1). The program owns its slab: no other program touches it."""
    _, _, _, _, q_pr, q_pc, _, _ = q_tokens
    _, _, _, _, k_pr, k_pc, _, _ = k_tokens
    ptrs = DBIAS_PARTIAL + slab * (N * N) + ((q_pr * MW + q_pc) * N)[:, None] + (k_pr * MW + k_pc)[None, :]
    same = same_window(q_tokens, k_tokens)
    tl.store(ptrs, tl.load(ptrs, mask=same, other=0.0) + ds, mask=same)


@triton.jit
def padding_grad(acc, k_tokens, dkv):
    """acc + the sum of dkv's rows that belong to padding tokens (in a window, not a real pixel)."""
    valid, real, _, _, _, _, _, _ = k_tokens
    return acc + tl.sum(tl.where((valid & (real == 0))[:, None], dkv, 0.0), axis=0)


@triton.jit
def fold_dot(x, onehot):
    """x @ onehot for fp32 x and an exact 0/1 matrix ``onehot``.

    fp32 onehot (fp32 inputs, and the interpreter): exact fp32 products and accumulation ("ieee",
    FMA units), i.e. an fp32 sum, like the reference's. bf16 onehot (fp16 / bf16 inputs on the
    GPU): tensor cores, x = hi + lo, each in bf16 (fp32's exponent range, so tiny gradients keep
    their precision): 16 significant bits (~1e-5 per element), far inside the fp16 / bf16 bound.
    (tf32 would keep 11 bits: ~5e-4 on the table gradient, whose dS mostly cancel.)"""
    if onehot.dtype == tl.float32:
        acc = tl.dot(x, onehot, input_precision="ieee")
    else:
        hi = x.to(tl.bfloat16)
        lo = (x - hi.to(tl.float32)).to(tl.bfloat16)
        acc = tl.dot(hi, onehot) + tl.dot(lo, onehot)
    return acc


@triton.jit
def window_attn_bwd_kernel(
    QKV, TABLE, TILES, PAD, DOUT, DQKV, DBIAS_PARTIAL, DPAD_PARTIAL,
    H, W, Hp, Wp, nWw, n_win, heads, C, SH, SW, stride_b, stride_h, stride_w,
    dout_b, dout_h, dout_w, dqkv_b, dqkv_h, dqkv_w, scale, mask_value,
    MH: tl.constexpr, MW: tl.constexpr, MHT: tl.constexpr, MWT: tl.constexpr, G: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    KEYS_REST: tl.constexpr,
    PAD_FIRST: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
    GROUPS: tl.constexpr, FOLD: tl.constexpr, NP: tl.constexpr, FOLD_DTYPE: tl.constexpr,
    DENSE_BIAS: tl.constexpr, TILE_ROWS: tl.constexpr, TILE_KEYS: tl.constexpr,
):
    """Program (b * heads + h, i) owns window groups [i * GROUPS, (i + 1) * GROUPS) of (b, h).

    FOLD (windows of <= NP = 64 tokens, one key chunk): dS is folded on chip by local token
    index, acc[p_i, p_j] += sum over rows/cols with those indices (two one-hot dots), over all
    its windows. Otherwise (one window per tile) each window's dS is added to the program's slab
    in memory, tile by tile. Either way one (N, N) partial per program.
    Keys as in the forward: BLOCK_N, then (KEYS_REST > 0) a rest chunk, each with its own dK, dV,
    and P recomputed as in the forward (DENSE_BIAS: from its dense bias tiles).
    """
    N: tl.constexpr = MH * MW
    # One window per tile, all its rows in one query chunk: packed row i is token i of the window,
    # so dS is already indexed by (query token, key token) and the fold is a plain sum.
    FOLD_IS_IDENTITY: tl.constexpr = FOLD and G == 1 and BLOCK_M == NP and BLOCK_N == NP
    bh = tl.program_id(0)  # (batch, head) fastest, as in the forward
    b = bh // heads
    h = bh % heads
    program = bh.to(tl.int64) * tl.num_programs(1) + tl.program_id(1)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    local = tl.arange(0, NP)
    bias_acc = tl.zeros([NP, NP], dtype=tl.float32)
    pad_dk = tl.zeros([BLOCK_D], dtype=tl.float32)
    pad_dv = tl.zeros([BLOCK_D], dtype=tl.float32)

    SHARED_BIAS: tl.constexpr = shares_bias(G * N, BLOCK_M, KEYS_REST, GROUPS, DENSE_BIAS)
    first = tl.program_id(1) * GROUPS
    shared_bias = program_bias(TABLE, h, heads, first, n_win, nWw, H, W, Hp, Wp, SH, SW, G, MH, MW, MHT, MWT,
                               BLOCK_M, BLOCK_N, PAD_FIRST, SHARED_BIAS)
    for group in range(GROUPS):
        w0 = first + group  # past the last window: every row masked off
        k_tokens, k, v, k_rest_tokens, k_rest, v_rest = window_keys(
            QKV, PAD, w0, n_win, b, h, C, stride_b, stride_h, stride_w, H, W, Hp, Wp, nWw, SH, SW, G, MH, MW,
            HEAD_DIM, BLOCK_D, BLOCK_N, KEYS_REST, PAD_FIRST, HAS_PAD)
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dk_rest, dv_rest = 0.0, 0.0
        if KEYS_REST > 0:
            dk_rest = tl.zeros([KEYS_REST, BLOCK_D], dtype=tl.float32)
            dv_rest = tl.zeros([KEYS_REST, BLOCK_D], dtype=tl.float32)

        for start in range(0, G * N, BLOCK_M):
            q_tokens = window_tokens(start + tl.arange(0, BLOCK_M), w0, n_win, G, MH, MW, nWw, H, W, Hp, Wp, SH, SW,
                                     PAD_FIRST)
            q = load_tokens(QKV, PAD, b, q_tokens, 0, h, C, stride_b, stride_h, stride_w, HEAD_DIM, BLOCK_D, False)
            # dO of a padding row is 0: timm / HF crop those outputs away.
            _, q_real, _, _, _, _, _, _ = q_tokens
            do_offs = token_offsets(b, q_tokens, dout_b, dout_h, dout_w, h * HEAD_DIM + d)
            do = tl.load(DOUT + do_offs, mask=q_real[:, None] & d_ok[None, :], other=0.0).to(v.dtype)
            bias, rest_bias = chunk_bias(TILES, shared_bias, w0, nWw, n_win, h, heads, start, BLOCK_M, BLOCK_N,
                                         KEYS_REST, TILE_ROWS, TILE_KEYS, HAS_SHIFT, DENSE_BIAS)
            p, p_rest = attention_probs(q, k, k_rest, TABLE, h, heads, bias, rest_bias, scale, mask_value, q_tokens,
                                        k_tokens, k_rest_tokens, MHT, MWT, SHARED_BIAS, HAS_SHIFT, KEYS_REST,
                                        DOT_PRECISION, DENSE_BIAS)
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
            row_dot = tl.sum(p * dp, axis=1)
            dp_rest = 0.0
            if KEYS_REST > 0:
                dp_rest = tl.dot(do, tl.trans(v_rest), input_precision=DOT_PRECISION)
                row_dot += tl.sum(p_rest * dp_rest, axis=1)
            ds = p * (dp - row_dot[:, None])  # zero outside each row's own window
            dq = tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
            ds_rest = 0.0
            if KEYS_REST > 0:
                ds_rest = p_rest * (dp_rest - row_dot[:, None])
                dq = tl.dot(ds_rest.to(k.dtype), k_rest, dq, input_precision=DOT_PRECISION)
            store_tokens(DQKV, dq * scale, b, q_tokens, 0, h, C, dqkv_b, dqkv_h, dqkv_w, HEAD_DIM, BLOCK_D)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION) * scale
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
            if KEYS_REST > 0:
                dk_rest += tl.dot(tl.trans(ds_rest.to(q.dtype)), q, input_precision=DOT_PRECISION) * scale
                dv_rest += tl.dot(tl.trans(p_rest.to(do.dtype)), do, input_precision=DOT_PRECISION)

            if FOLD_IS_IDENTITY:
                bias_acc += ds  # row i, column j are tokens i, j of the tile's one window
            elif FOLD:
                q_ok, _, _, _, q_pr, q_pc, _, _ = q_tokens
                k_ok, _, _, _, k_pr, k_pc, _, _ = k_tokens
                key_onehot = (((k_pr * MW + k_pc)[:, None] == local[None, :]) & k_ok[:, None]).to(FOLD_DTYPE)
                query_onehot = (((q_pr * MW + q_pc)[:, None] == local[None, :]) & q_ok[:, None]).to(FOLD_DTYPE)
                by_key = fold_dot(ds, key_onehot)  # (BLOCK_M, NP)
                bias_acc += fold_dot(tl.trans(by_key), query_onehot)  # (NP keys, NP queries)
            else:
                add_bias_partial(DBIAS_PARTIAL, ds, q_tokens, k_tokens, program, N, MW)
                if KEYS_REST > 0:
                    add_bias_partial(DBIAS_PARTIAL, ds_rest, q_tokens, k_rest_tokens, program, N, MW)

        store_tokens(DQKV, dk, b, k_tokens, 1, h, C, dqkv_b, dqkv_h, dqkv_w, HEAD_DIM, BLOCK_D)
        store_tokens(DQKV, dv, b, k_tokens, 2, h, C, dqkv_b, dqkv_h, dqkv_w, HEAD_DIM, BLOCK_D)
        if HAS_PAD:
            pad_dk = padding_grad(pad_dk, k_tokens, dk)
            pad_dv = padding_grad(pad_dv, k_tokens, dv)
        if KEYS_REST > 0:
            store_tokens(DQKV, dk_rest, b, k_rest_tokens, 1, h, C, dqkv_b, dqkv_h, dqkv_w, HEAD_DIM, BLOCK_D)
            store_tokens(DQKV, dv_rest, b, k_rest_tokens, 2, h, C, dqkv_b, dqkv_h, dqkv_w, HEAD_DIM, BLOCK_D)
            if HAS_PAD:
                pad_dk = padding_grad(pad_dk, k_rest_tokens, dk_rest)
                pad_dv = padding_grad(pad_dv, k_rest_tokens, dv_rest)
        if not FOLD:
            tl.debug_barrier()  # the next group's read-modify-write of the slab sees this group's writes

    if FOLD:
        if FOLD_IS_IDENTITY:
            pair = local[:, None] * N + local[None, :]  # bias_acc is [query p_i, key p_j]
        else:
            pair = local[None, :] * N + local[:, None]  # bias_acc is transposed: [key p_j, query p_i]
        tl.store(DBIAS_PARTIAL + program * (N * N) + pair, bias_acc, mask=(local[:, None] < N) & (local[None, :] < N))
    if HAS_PAD:
        tl.store(DPAD_PARTIAL + program * 2 * HEAD_DIM + d, pad_dk, mask=d_ok)
        tl.store(DPAD_PARTIAL + program * 2 * HEAD_DIM + HEAD_DIM + d, pad_dv, mask=d_ok)


@functools.lru_cache(maxsize=None)
def _pairs_by_offset_cpu(window: int, table_window: int) -> torch.Tensor:
    """(T, N) flat (p * N + q) positions of the token pairs at each table row, int32; N * N pads."""
    tokens = window * window
    rel = relative_position_index(window, table_window).flatten()
    rows = (2 * table_window - 1) ** 2
    order = torch.argsort(rel, stable=True)
    counts = torch.bincount(rel, minlength=rows)
    starts = torch.cumsum(counts, 0) - counts
    slots = torch.full((rows, tokens), tokens * tokens, dtype=torch.long)
    sorted_rows = rel[order]
    slots[sorted_rows, torch.arange(tokens * tokens) - starts[sorted_rows]] = order
    return slots.to(torch.int32)


_pairs_cache: dict = {}


def pairs_by_offset(window: int, table_window: int, device: torch.device) -> torch.Tensor:
    """Device copy, made once per (window, device), so later calls do no host work."""
    key = (window, table_window, str(device))
    if key not in _pairs_cache:
        _pairs_cache[key] = _pairs_by_offset_cpu(window, table_window).to(device)
    return _pairs_cache[key]


@triton.jit
def bias_table_grad_kernel(PER_PAIR, PAIRS, DTABLE, heads, n_tokens,
                           BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr):
    """DTABLE[r, h] = sum over j of PER_PAIR[h, PAIRS[r, j]]: table row r's gradient is the sum of
    the (query, key) pair gradients at its relative offset. PER_PAIR (heads, N * N) fp32; PAIRS
    (T, N) int32, N * N where a row has fewer than N pairs; DTABLE (T, heads) in the table's dtype.
    One program per (table row, BLOCK_H heads); a fixed-order sum (deterministic)."""
    row = tl.program_id(0)
    hs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    j = tl.arange(0, BLOCK_P)
    pairs = tl.load(PAIRS + row * n_tokens + j, mask=j < n_tokens, other=n_tokens * n_tokens)
    head_ok = hs < heads
    grads = tl.load(PER_PAIR + hs[:, None] * (n_tokens * n_tokens) + pairs[None, :],
                    mask=head_ok[:, None] & (pairs < n_tokens * n_tokens)[None, :], other=0.0)
    tl.store(DTABLE + row * heads + hs, tl.sum(grads, axis=1).to(DTABLE.dtype.element_ty), mask=head_ok)


def bias_table_config(heads: int, tokens: int) -> dict:
    return {"BLOCK_H": min(16, next_power_of_2(heads)), "BLOCK_P": next_power_of_2(tokens)}


def bias_table_grad(per_pair: torch.Tensor, pairs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The (T, heads) table gradient in ``dtype`` from the (heads, N * N) per-pair sums."""
    heads = per_pair.shape[0]
    rows, tokens = pairs.shape
    dtable = torch.empty((rows, heads), dtype=dtype, device=per_pair.device)
    cfg = bias_table_config(heads, tokens)
    bias_table_grad_kernel[(rows, cdiv(heads, cfg["BLOCK_H"]))](per_pair, pairs, dtable, heads, tokens, **cfg)
    return dtable


FOLD_MAX_TOKENS = 64


def fold_dtype_for(dtype: torch.dtype, on_gpu: bool):
    """One-hot dtype of the bias fold: fp32 (exact fp32 sums) for fp32 inputs and in the interpreter
    (whose bf16 is broken); a bf16 hi/lo split on tensor cores for fp16 / bf16 inputs on the GPU."""
    return tl.bfloat16 if on_gpu and dtype != torch.float32 else tl.float32


def backward_schedule(n_groups: int, batch_heads: int, tokens: int, device: torch.device, dtype: torch.dtype) -> dict:
    """Window groups per program: enough programs to fill the GPU (about 8 per SM), the rest
    looped on chip so that the bias partials (one per program) stay few. No on-chip folding
    above 64 tokens."""
    fold = {"FOLD": True, "NP": FOLD_MAX_TOKENS} if tokens <= FOLD_MAX_TOKENS else {"FOLD": False, "NP": 16}
    if device.type == "cuda":
        wanted = max(1, 8 * sm_count(device) // max(batch_heads, 1))
        groups = max(1, min(8, n_groups // wanted))
    else:
        groups = min(3, n_groups)  # the interpreter: exercise the loop and a ragged last program
    return {"GROUPS": groups, **fold, "FOLD_DTYPE": fold_dtype_for(dtype, device.type == "cuda")}


def backward(dout: torch.Tensor, qkv: torch.Tensor, table: torch.Tensor, pad_qkv, geo: Geometry, scale: float,
             mask_value: float, pad_first: bool):
    """Returns (dqkv (B, H, W, 3C), dtable like table, dpad (3C) or empty)."""
    batch = qkv.shape[0]
    dqkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
    cfg = launch_config(geo.tokens, geo.head_dim, backward=True)
    options = {"num_warps": cfg.pop("num_warps"), "num_stages": cfg.pop("num_stages")}
    n_groups = cdiv(geo.n_windows, cfg["G"])
    schedule = backward_schedule(n_groups, batch * geo.heads, geo.tokens, qkv.device, qkv.dtype)
    programs = cdiv(n_groups, schedule["GROUPS"])
    n_tokens = geo.tokens
    # One (N, N) bias partial per program: written once when folded, accumulated into otherwise.
    allocate = torch.empty if schedule["FOLD"] else torch.zeros
    bias_partial = allocate(batch * geo.heads * programs, n_tokens, n_tokens, dtype=torch.float32, device=qkv.device)
    has_pad = pad_qkv is not None
    pad_partial = torch.empty((batch * geo.heads * programs, 2, geo.head_dim) if has_pad else (0,), dtype=torch.float32,
                              device=qkv.device)
    if dqkv.numel() > 0:
        dense = cfg["G"] == 1
        tiles = dense_bias_tiles(table, geo, cfg, mask_value) if dense else table
        tile_rows, tile_keys = dense_tile_shape(cfg, geo.tokens) if dense else (1, 1)
        window_attn_bwd_kernel[(batch * geo.heads, programs)](
            qkv, table, tiles, pad_qkv, dout, dqkv, bias_partial, pad_partial, *common_args(qkv, geo),
            dout.stride(0), dout.stride(1), dout.stride(2), dqkv.stride(0), dqkv.stride(1), dqkv.stride(2),
            scale, mask_value, **common_constexprs(qkv, geo, pad_first, has_pad), **cfg, **schedule, **options,
            DENSE_BIAS=dense, TILE_ROWS=tile_rows, TILE_KEYS=tile_keys,
        )
    # Deterministic reductions: fixed-shape sums, then a fixed gather per table row.
    per_pair = bias_partial.view(batch, geo.heads, programs, n_tokens * n_tokens).sum((0, 2))
    dtable = bias_table_grad(per_pair, pairs_by_offset(geo.window, geo.table_window, qkv.device), table.dtype)
    if not has_pad:
        return dqkv, dtable, qkv.new_empty(0)
    dkv = pad_partial.view(batch, geo.heads, programs, 2, geo.head_dim).sum((0, 2)).transpose(0, 1)  # 2, heads, D
    dpad = torch.cat([torch.zeros_like(dkv[:1]), dkv]).reshape(-1).to(pad_qkv.dtype)
    return dqkv, dtable, dpad


def aot_signature(dtype: str, ints: list[str]):
    sig = {"QKV": f"*{dtype}", "TABLE": "*fp32", "TILES": "*fp32", "PAD": f"*{dtype}", "DOUT": f"*{dtype}",
           "DQKV": f"*{dtype}",
           "DBIAS_PARTIAL": "*fp32", "DPAD_PARTIAL": "*fp32", **{n: "i32" for n in ints},
           "dout_b": "i32", "dout_h": "i32", "dout_w": "i32", "dqkv_b": "i32", "dqkv_h": "i32", "dqkv_w": "i32",
           "scale": "fp32", "mask_value": "fp32"}
    return window_attn_bwd_kernel, sig


def aot_bias_table_config(window: int, heads: int, dtype: str, values: dict):
    """(kernel, signature, constexprs, options, launch values) of the table-gradient gather."""
    sig = {"PER_PAIR": "*fp32", "PAIRS": "*i32", "DTABLE": f"*{dtype}", "heads": "i32", "n_tokens": "i32"}
    return (bias_table_grad_kernel, sig, bias_table_config(heads, window * window), {"num_warps": 4},
            {**values, "heads": heads, "n_tokens": window * window})


def aot_schedule(tokens: int, dtype: torch.dtype) -> dict:
    fold = {"FOLD": True, "NP": FOLD_MAX_TOKENS} if tokens <= FOLD_MAX_TOKENS else {"FOLD": False, "NP": 16}
    return {"GROUPS": 4, **fold, "FOLD_DTYPE": fold_dtype_for(dtype, on_gpu=True)}

