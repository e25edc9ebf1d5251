"""Triton GEMM with an fp32 output, for the clip_loss backward's strip products.

``C (+)= alpha * A @ B``: A (m, k) through any strides (the dS strip is read transposed for
dS^T @ I), B (k, n) and C (m, n) with unit column stride, C fp32 so that products of many
strips accumulate without rounding to the feature dtype. Few output tiles (dT: W x d) are
split along K into fp32 partials that are summed afterwards (no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vtkernels.backend import triton_interpreter_enabled
from vtkernels.triton.tiling import cdiv, grouped_tile, sm_count
from vtkernels.triton.tma import descriptor, tma_usable


@triton.jit
def strip_matmul_kernel(
    A, B, C, M, N, K, k_per_split, stride_am, stride_ak, stride_bk, stride_cm, stride_csplit, alpha,
    ACCUMULATE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr, A_TRANSPOSED: tl.constexpr,
):
    """C[split] (fp32) (+)= alpha * A[:, ks] @ B[ks, :] over the split's K range ``ks`` (split =
    program_id(1)); alpha is a power of two (exact). Pointers: B and C with unit column stride,
    A through any strides (the dS strip is also read transposed). TMA: A and B are tensor
    descriptors, A's of the (K, M) matrix A^T when A_TRANSPOSED (boxes [BLOCK_K, BLOCK_M],
    transposed after the load), else of (M, K); the strides are unused. Grouped launch order for L2 reuse."""
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    k_start = tl.program_id(1) * k_per_split
    k_len = min(K - k_start, k_per_split)
    C += tl.program_id(1).to(tl.int64) * stride_csplit

    om = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    on = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if ACCUMULATE:  # start from C: cheaper in registers than adding it after the loop
        acc = tl.load(C + om.to(tl.int64)[:, None] * stride_cm + on[None, :],
                      mask=(om < M)[:, None] & (on < N)[None, :], other=0.0) / alpha
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if TMA:
        # k_per_split is a multiple of BLOCK_K, so boxes never cross into the next split; past K
        # the unit zero-fills.
        for k in range(k_start, k_start + k_len, BLOCK_K):
            if A_TRANSPOSED:
                a = A.load([k, pid_m * BLOCK_M]).T
            else:
                a = A.load([pid_m * BLOCK_M, k])
            acc = tl.dot(a, B.load([k, pid_n * BLOCK_N]), acc, input_precision=PRECISION)
    else:
        # This split's K range: shift the base pointers, then walk k_len columns of A / rows of B.
        A += k_start.to(tl.int64) * stride_ak
        B += k_start.to(tl.int64) * stride_bk
        # Loads wrap rows / columns around (modulo) instead of masking them; only K is masked.
        rm = om % M
        rn = on % N
        ks = tl.arange(0, BLOCK_K)
        a_ptrs = A + rm.to(tl.int64)[:, None] * stride_am + ks[None, :] * stride_ak
        b_ptrs = B + ks[:, None] * stride_bk + rn[None, :]
        for k in range(0, k_len, BLOCK_K):
            a = tl.load(a_ptrs, mask=ks[None, :] < k_len - k, other=0.0)
            b = tl.load(b_ptrs, mask=ks[:, None] < k_len - k, other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            a_ptrs += BLOCK_K * stride_ak
            b_ptrs += BLOCK_K * stride_bk
    # C pointers are recomputed here rather than kept live (in registers) across the K loop.
    tl.store(C + om.to(tl.int64)[:, None] * stride_cm + on[None, :], acc * alpha,
             mask=(om < M)[:, None] & (on < N)[None, :])


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # only fp32 operands read it


def launch_config(dtype: torch.dtype = torch.bfloat16, interpret: bool = False) -> dict:
    """Tiles and launch options; ``TMA``: operands through tensor descriptors where they allow it."""
    if interpret:
        return {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4, "num_warps": 4, "TMA": False}
    wide = dtype != torch.float32
    return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64 if wide else 32, "GROUP_M": 8, "num_warps": 8,
            "num_stages": 3, "TMA": wide}


def _split_k(programs: int, k: int, block_k: int, device: torch.device) -> int:
    """K splits so that a GEMM with few output tiles (dT: W x d) still fills the GPU twice over
    (each split keeps >= 4 K blocks); on the interpreter 2, to exercise the path."""
    if device.type != "cuda" or triton_interpreter_enabled():
        return 2
    target = 2 * sm_count(device)
    return max(1, min(cdiv(target, programs), k // (4 * block_k)))


def matmul_fp32_out(a, b, c, accumulate: bool, interpret: bool, alpha: float = 1.0) -> None:
    """c (+)= alpha * a @ b: a (m, k) with a unit stride along either axis (a transposed view
    too), b (k, n) and c fp32 (m, n) with unit column stride."""
    (m, k), n = a.shape, b.shape[1]
    cfg = dict(launch_config(a.dtype, interpret))
    transposed = a.stride(1) != 1  # then a.t() is row-major
    use_tma = cfg.pop("TMA") and tma_usable(a.t() if transposed else a, b)
    tiles = cdiv(m, cfg["BLOCK_M"]) * cdiv(n, cfg["BLOCK_N"])
    splits = 1 if accumulate else _split_k(tiles, k, cfg["BLOCK_K"], c.device)
    per_split = cdiv(cdiv(k, splits), cfg["BLOCK_K"]) * cfg["BLOCK_K"]
    splits = cdiv(k, per_split)
    out = c if splits == 1 else torch.empty((splits, m, n), dtype=torch.float32, device=c.device)
    strides = (out.stride(0), 0) if splits == 1 else (out.stride(1), out.stride(0))
    a_op, b_op = a, b
    if use_tma:
        bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
        a_op = descriptor(a.t(), bk, bm) if transposed else descriptor(a, bm, bk)
        b_op = descriptor(b, bk, bn)
    strip_matmul_kernel[(tiles, splits)](a_op, b_op, out, m, n, k, per_split, a.stride(0), a.stride(1), b.stride(0),
                                         *strides, alpha, ACCUMULATE=accumulate, PRECISION=_precision(a.dtype),
                                         TMA=use_tma, A_TRANSPOSED=transposed, **cfg)
    if splits > 1:
        torch.sum(out, dim=0, out=c)


def aot_configs():
    """(kernel, signature, constexprs, options, launch values) for the sm_90 ahead-of-time compile
    check; the values are those of clip_loss's n = 65536, d = 768 backward (1024-column strips).
    The pointer kernel always (the fallback), the TMA kernel where ``launch_config`` picks it."""
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"), (torch.float32, "fp32")):
        prec = {"PRECISION": _precision(dtype)}
        mm = launch_config(dtype)
        opts = {"num_warps": mm.pop("num_warps"), "num_stages": mm.pop("num_stages")}
        tma = mm.pop("TMA")
        for row_major in (True, False):  # dI += dS @ T (accumulates); dT = dS^T @ I (split-K)
            sig = {"A": f"*{name}", "B": f"*{name}", "C": "*fp32", "M": "i32", "N": "i32", "K": "i32",
                   "k_per_split": "i32", "stride_am": "i32", "stride_ak": "i32", "stride_bk": "i32",
                   "stride_cm": "i32", "stride_csplit": "i32", "alpha": "fp32"}
            unit = {"stride_ak": 1} if row_major else {"stride_am": 1}
            n, d, width = 65536, 768, 1024
            values = ({"M": n, "N": d, "K": width, "k_per_split": width, "stride_am": width, "stride_bk": d,
                       "stride_cm": d, "stride_csplit": 0} if row_major else
                      {"M": width, "N": d, "K": n, "k_per_split": n // 8, "stride_ak": width, "stride_bk": d,
                       "stride_cm": d, "stride_csplit": width * d})
            constexprs = {"ACCUMULATE": row_major, "A_TRANSPOSED": not row_major, **mm, **prec}
            yield strip_matmul_kernel, sig, {**unit, **constexprs, "TMA": False}, opts, values
            if tma:
                bm, bn, bk = mm["BLOCK_M"], mm["BLOCK_N"], mm["BLOCK_K"]
                a_box = (bm, bk) if row_major else (bk, bm)
                tma_sig = {**sig, "A": f"tensordesc<{name}[{a_box[0]}, {a_box[1]}]>",
                           "B": f"tensordesc<{name}[{bk}, {bn}]>"}
                yield strip_matmul_kernel, tma_sig, {**unit, **constexprs, "TMA": True}, opts, values
