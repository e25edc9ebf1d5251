"""Triton GEMMs with the MLP's activation fused in (spec: vtkernels/reference/activation.py: mlp).

The MLP ``fc2(act(fc1(x)))`` writes its largest tensor, the hidden activations (M x 4·dim),
three times in eager PyTorch: fc1 writes the pre-activation, the activation reads it and writes
h. Here fc1's GEMM applies the bias and the activation to its fp32 accumulator and stores h once
(and the pre-activation as well only when a backward will need it). In the backward, the GEMM
that produces d h = d out @ W2 multiplies by act'(pre) before its store, so d h never exists:
eager writes it, then reads it and the pre-activation to write d pre.

Both directions are C = epilogue(A @ B) with A (M, K) and B (K, N): B = W1^T (W1 (N, K) read
K-major) forward, B = W2 (K, N) as it is backward. Two kernels compute it, sharing the epilogue:
- ``gemm_act_tma_kernel`` (sm_90+, 16-bit): persistent (one program per SM walks the output
  tiles, so tile i's epilogue overlaps tile i+1's first loads), operands through TMA tensor
  descriptors (vtkernels/triton/tma.py: no masks, no modulo index math), which contiguous
  activations and weights qualify for.
- ``gemm_act_kernel``: pointer loads through any strides (fp32, older GPUs, unaligned views).
fc2 and the remaining gradient GEMMs are cuBLAS's (vtkernels/ops/mlp.py).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from vtkernels.backend import triton_interpreter_enabled
from vtkernels.triton.activation import ACTIVATION_CODE, activate, activation_grad
from vtkernels.triton.tiling import cdiv, grouped_tile, sm_count
from vtkernels.triton.tma import descriptor, tma_usable


@triton.jit
def act_epilogue(acc, BIAS, on, N, pre, ACT: tl.constexpr, BACKWARD: tl.constexpr, HAS_BIAS: tl.constexpr):
    """(C tile, pre-activation tile) from the fp32 accumulator of output columns ``on``: forward,
    pre = acc (+ bias[n]) and C = act(pre); backward, C = acc * act'(pre) with ``pre`` the loaded
    pre-activation tile (returned unchanged)."""
    if BACKWARD:
        out = acc * activation_grad(pre.to(tl.float32), ACT)
    else:
        if HAS_BIAS:
            acc += tl.load(BIAS + on, mask=on < N, other=0.0).to(tl.float32)[None, :]
        pre = acc
        out = activate(acc, ACT)
    return out, pre


@triton.jit
def gemm_act_kernel(
    A, B, BIAS, PRE, C, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm,
    ACT: tl.constexpr, BACKWARD: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE_PRE: tl.constexpr,
    EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, PRECISION: tl.constexpr,
):
    """Forward (BACKWARD false): pre = A @ B (+ bias[n]); C = act(pre); PRE = pre if SAVE_PRE.
    Backward: C = (A @ B) * act'(PRE). C and PRE are (M, N) with row stride stride_cm."""
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    om = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    on = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Loads wrap rows / columns past the end around (modulo) instead of masking them: they stay in
    # bounds and their results are never stored. Only K is masked, and only when it is ragged.
    rm = om % M
    rn = on % N
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = A + rm.to(tl.int64)[:, None] * stride_am + ks[None, :] * stride_ak
    b_ptrs = B + ks[:, None] * stride_bk + rn[None, :] * stride_bn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            a = tl.load(a_ptrs, mask=ks[None, :] < K - k, other=0.0)
            b = tl.load(b_ptrs, mask=ks[:, None] < K - k, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    offs = om.to(tl.int64)[:, None] * stride_cm + on[None, :]
    in_range = (om < M)[:, None] & (on < N)[None, :]
    pre = 0.0
    if BACKWARD:
        pre = tl.load(PRE + offs, mask=in_range, other=0.0)
    out, pre = act_epilogue(acc, BIAS, on, N, pre, ACT, BACKWARD, HAS_BIAS)
    if SAVE_PRE:
        tl.store(PRE + offs, pre.to(PRE.dtype.element_ty), mask=in_range)
    tl.store(C + offs, out.to(C.dtype.element_ty), mask=in_range)


@triton.jit
def gemm_act_tma_kernel(
    A, B, BIAS, PRE, C, M, N, K,
    ACT: tl.constexpr, BACKWARD: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE_PRE: tl.constexpr,
    B_K_MAJOR: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """gemm_act_kernel's computation, persistent, on tensor descriptors: A [BLOCK_M, BLOCK_K]
    blocks of (M, K); B [BLOCK_N, BLOCK_K] blocks of (N, K) when B_K_MAJOR (W1, transposed after
    the load), else [BLOCK_K, BLOCK_N] blocks of (K, N); PRE and C [BLOCK_M, BLOCK_N] blocks of
    (M, N). Of P programs, program p computes the output tiles p, p + P, p + 2P, ... in grouped order."""
    n_m, n_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    # flatten: the tile loop and the K loop are pipelined as one, so the next tile's loads are in
    # flight during this tile's epilogue.
    for tile in tl.range(tl.program_id(0), n_m * n_n, tl.num_programs(0), flatten=True):
        pid_m, pid_n = grouped_tile(tile, n_m, n_n, GROUP_M)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            a = A.load([pid_m * BLOCK_M, k])
            if B_K_MAJOR:
                b = B.load([pid_n * BLOCK_N, k]).T
            else:
                b = B.load([k, pid_n * BLOCK_N])
            acc = tl.dot(a, b, acc)
        off_m, off_n = pid_m * BLOCK_M, pid_n * BLOCK_N
        pre = 0.0
        if BACKWARD:
            pre = PRE.load([off_m, off_n])
        out, pre = act_epilogue(acc, BIAS, off_n + tl.arange(0, BLOCK_N), N, pre, ACT, BACKWARD, HAS_BIAS)
        if SAVE_PRE:
            PRE.store([off_m, off_n], pre.to(PRE.dtype))
        C.store([off_m, off_n], out.to(C.dtype))


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # only fp32 operands read it


def launch_config(dtype: torch.dtype = torch.bfloat16, backward: bool = False,
                  interpret: Optional[bool] = None) -> dict:
    """Tile sizes and launch options; ``backward`` is the d pre GEMM (it loads the pre-activation
    tile in its epilogue). 128 x 128 tiles at 8 warps hold 64 fp32 accumulators per thread,
    leaving room for the activation's temporaries without spilling (sm_90 compile check).
    ``TMA``: run the persistent tensor-descriptor kernel where the GPU and the tensors allow it
    (vtkernels/triton/tma.py); fp32 keeps the pointer kernel (exact "ieee" products on FMA units).
    ``PROGRAMS_PER_SM``: the persistent kernel's programs per SM. At 2 (where two fit: 128 x 128
    tiles with 2 stages take 96 KB of shared memory) one program's epilogue overlaps the other's
    tensor-core work; not measured yet (tools/tune.py sweeps it)."""
    if triton_interpreter_enabled() if interpret is None else interpret:
        return {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4, "num_warps": 4, "TMA": False,
                "PROGRAMS_PER_SM": 1}
    wide = dtype != torch.float32
    return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64 if wide else 32, "GROUP_M": 8, "num_warps": 8,
            "num_stages": 4 if wide else 3, "TMA": wide, "PROGRAMS_PER_SM": 1}


def _program_count(device: torch.device, tiles: int, per_sm: int) -> int:
    """Persistent programs: ``per_sm`` per SM (a few on the interpreter, so each walks several tiles)."""
    slots = per_sm * sm_count(device) if device.type == "cuda" else 3
    return min(slots, tiles)


def _launch(a, b_matrix, b_k_major, bias, pre, c, activation, backward, save_pre):
    """C = epilogue(A @ B) with B = b_matrix^T when ``b_k_major`` (b_matrix (N, K)), else
    b_matrix (K, N)."""
    m, k = a.shape
    n = c.shape[1]
    if m == 0 or n == 0:
        return
    cfg = dict(launch_config(a.dtype, backward))
    use_tma = cfg.pop("TMA") and tma_usable(*(t for t in (a, b_matrix, pre, c) if t is not None))
    per_sm = cfg.pop("PROGRAMS_PER_SM")
    constexprs = dict(ACT=ACTIVATION_CODE[activation], BACKWARD=backward, HAS_BIAS=bias is not None,
                      SAVE_PRE=save_pre)
    bias = bias if bias is not None else c
    tiles = cdiv(m, cfg["BLOCK_M"]) * cdiv(n, cfg["BLOCK_N"])
    if use_tma:
        bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
        out_desc = descriptor(c, bm, bn)
        gemm_act_tma_kernel[(_program_count(a.device, tiles, per_sm),)](
            descriptor(a, bm, bk), descriptor(b_matrix, bn, bk) if b_k_major else descriptor(b_matrix, bk, bn), bias,
            descriptor(pre, bm, bn) if pre is not None else out_desc, out_desc, m, n, k,
            B_K_MAJOR=b_k_major, **constexprs, **cfg)
        return
    # B[k, n] = b_matrix[n, k] when K-major: read with its strides swapped.
    b_strides = (b_matrix.stride(1), b_matrix.stride(0)) if b_k_major else (b_matrix.stride(0), b_matrix.stride(1))
    gemm_act_kernel[(tiles,)](
        a, b_matrix, bias, pre if pre is not None else c, c, m, n, k, a.stride(0), a.stride(1), *b_strides,
        c.stride(0), EVEN_K=k % cfg["BLOCK_K"] == 0, PRECISION=_precision(a.dtype), **constexprs, **cfg)


def linear_act(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: str,
               save_pre: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K), weight (N, K) -> (act(x @ weight^T + bias), the pre-activation or an empty
    tensor when not ``save_pre``), both (M, N) contiguous in x's dtype."""
    m, n = x.shape[0], weight.shape[0]
    h = torch.empty((m, n), dtype=x.dtype, device=x.device)
    pre = torch.empty((m, n) if save_pre else (0,), dtype=x.dtype, device=x.device)
    _launch(x, weight, True, bias, pre if save_pre else None, h, activation, backward=False, save_pre=save_pre)
    return h, pre


def matmul_act_grad(dout: torch.Tensor, weight: torch.Tensor, pre: torch.Tensor, activation: str) -> torch.Tensor:
    """dout (M, K), weight (K, N) (fc2's weight), pre (M, N) contiguous -> d pre =
    (dout @ weight) * act'(pre), (M, N) contiguous."""
    dpre = torch.empty_like(pre)
    _launch(dout, weight, False, None, pre, dpre, activation, backward=True, save_pre=False)
    return dpre


# (M, dim, hidden) of the MLPs the compile check covers: ViT-B/16 and CLIP-B/16 at B=256, Swin-T
# stage 1 at B=256 (dim 96: a ragged K), DETR's encoder FFN (B=8, 850 tokens).
AOT_SHAPES = {"gelu": (256 * 197, 768, 3072), "quick_gelu": (256 * 197, 768, 3072), "relu": (8 * 850, 256, 2048),
              "gelu_tanh": (256 * 3136, 96, 384)}


def aot_configs():
    """(kernel, signature, constexprs, options, launch values) for the sm_90 ahead-of-time compile
    check: forward with and without the saved pre-activation, and backward, per activation and
    dtype; the pointer kernel always (the fallback), the TMA kernel where ``launch_config`` picks it."""
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"), (torch.float32, "fp32")):
        t = f"*{name}"
        sig = {"A": t, "B": t, "BIAS": t, "PRE": t, "C": t, "M": "i32", "N": "i32", "K": "i32", "stride_am": "i32",
               "stride_ak": "i32", "stride_bk": "i32", "stride_bn": "i32", "stride_cm": "i32"}
        for activation, (m, dim, hidden) in AOT_SHAPES.items():
            for backward, save_pre in ((False, False), (False, True), (True, False)):
                cfg = launch_config(dtype, backward, interpret=False)
                options = {"num_warps": cfg.pop("num_warps"), "num_stages": cfg.pop("num_stages")}
                tma = cfg.pop("TMA")
                cfg.pop("PROGRAMS_PER_SM")  # (the grid, not the compile)
                common = {"ACT": ACTIVATION_CODE[activation], "BACKWARD": backward, "HAS_BIAS": not backward,
                          "SAVE_PRE": save_pre, **cfg}
                # Both GEMMs reduce over dim: x @ W1^T (W1 (hidden, dim)) and d out @ W2 (W2 (dim, hidden)).
                b_strides = {"stride_bk": hidden, "stride_bn": 1} if backward else {"stride_bk": 1, "stride_bn": dim}
                values = {"M": m, "N": hidden, "K": dim, "stride_am": dim, "stride_ak": 1, "stride_cm": hidden,
                          **b_strides}
                yield gemm_act_kernel, sig, {**common, "EVEN_K": dim % cfg["BLOCK_K"] == 0,
                                             "PRECISION": _precision(dtype)}, options, values
                if tma:
                    bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]

                    def desc(*block):
                        return f"tensordesc<{name}[{', '.join(map(str, block))}]>"

                    tma_sig = {"A": desc(bm, bk), "B": desc(bk, bn) if backward else desc(bn, bk), "BIAS": t,
                               "PRE": desc(bm, bn), "C": desc(bm, bn), "M": "i32", "N": "i32", "K": "i32"}
                    yield gemm_act_tma_kernel, tma_sig, {**common, "B_K_MAJOR": not backward}, \
                        options, {"M": m, "N": hidden, "K": dim}
