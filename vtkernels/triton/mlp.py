"""Triton GEMMs with the MLP's activation fused in (spec: vtkernels/reference/activation.py: mlp).

The MLP ``fc2(act(fc1(x)))`` writes its largest tensor, the hidden activations (M x 4·dim),
three times in eager PyTorch: fc1 writes the pre-activation, the activation reads it and writes
h. Here fc1's GEMM applies the bias and the activation to its fp32 accumulator and stores h once
(and the pre-activation as well only when a backward will need it). In the backward, the GEMM
that produces d h = d out @ W2 multiplies by act'(pre) before its store, so d h never exists:
eager writes it, then reads it and the pre-activation to write d pre.

One kernel does both: C = epilogue(A @ B), A (M, K) and B (K, N) read through strides, so B = W1^T
is W1 (N, K) with its strides swapped and B = W2 is W2 (K, N) as it is. fc2 and the remaining
gradient GEMMs are cuBLAS's (vtkernels/ops/mlp.py).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from vtkernels.backend import triton_interpreter_enabled
from vtkernels.triton.activation import ACTIVATION_CODE, activate, activation_grad
from vtkernels.triton.tiling import grouped_tile


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
    if BACKWARD:
        pre = tl.load(PRE + offs, mask=in_range, other=0.0).to(tl.float32)
        out = acc * activation_grad(pre, ACT)
    else:
        if HAS_BIAS:
            acc += tl.load(BIAS + on, mask=on < N, other=0.0).to(tl.float32)[None, :]
        if SAVE_PRE:
            tl.store(PRE + offs, acc.to(PRE.dtype.element_ty), mask=in_range)
        out = activate(acc, ACT)
    tl.store(C + offs, out.to(C.dtype.element_ty), mask=in_range)


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # only fp32 operands read it


def launch_config(dtype: torch.dtype = torch.bfloat16, backward: bool = False,
                  interpret: Optional[bool] = None) -> dict:
    """Tile sizes and launch options; ``backward`` is the d pre GEMM (it loads the pre-activation
    tile in its epilogue). 128 x 128 tiles at 8 warps hold 64 fp32 accumulators per thread,
    leaving room for the activation's temporaries without spilling (sm_90 compile check)."""
    if triton_interpreter_enabled() if interpret is None else interpret:
        return {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4, "num_warps": 4}
    wide = dtype != torch.float32
    return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64 if wide else 32, "GROUP_M": 8, "num_warps": 8,
            "num_stages": 4 if wide else 3}


def _launch(a, b_matrix, b_strides, bias, pre, c, activation, backward, save_pre):
    m, k = a.shape
    n = c.shape[1]
    if m == 0 or n == 0:
        return
    cfg = launch_config(a.dtype, backward)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    gemm_act_kernel[grid](
        a, b_matrix, bias if bias is not None else c, pre if pre is not None else c, c, m, n, k,
        a.stride(0), a.stride(1), *b_strides, c.stride(0),
        ACT=ACTIVATION_CODE[activation], BACKWARD=backward, HAS_BIAS=bias is not None, SAVE_PRE=save_pre,
        EVEN_K=k % cfg["BLOCK_K"] == 0, PRECISION=_precision(a.dtype), **cfg)


def linear_act(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: str,
               save_pre: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K), weight (N, K) -> (act(x @ weight^T + bias), the pre-activation or an empty
    tensor when not ``save_pre``), both (M, N) contiguous in x's dtype."""
    m, n = x.shape[0], weight.shape[0]
    h = torch.empty((m, n), dtype=x.dtype, device=x.device)
    pre = torch.empty((m, n) if save_pre else (0,), dtype=x.dtype, device=x.device)
    # B[k, n] = weight[n, k]: weight read with its strides swapped.
    _launch(x, weight, (weight.stride(1), weight.stride(0)), bias, pre if save_pre else None, h, activation,
            backward=False, save_pre=save_pre)
    return h, pre


def matmul_act_grad(dout: torch.Tensor, weight: torch.Tensor, pre: torch.Tensor, activation: str) -> torch.Tensor:
    """dout (M, K), weight (K, N) (fc2's weight), pre (M, N) contiguous -> d pre =
    (dout @ weight) * act'(pre), (M, N) contiguous."""
    dpre = torch.empty_like(pre)
    _launch(dout, weight, (weight.stride(0), weight.stride(1)), None, pre, dpre, activation, backward=True,
            save_pre=False)
    return dpre


# (M, dim, hidden) of the MLPs the compile check covers: ViT-B/16 and CLIP-B/16 at B=256, Swin-T
# stage 1 at B=256 (dim 96: a ragged K), DETR's encoder FFN (B=8, 850 tokens).
AOT_SHAPES = {"gelu": (256 * 197, 768, 3072), "quick_gelu": (256 * 197, 768, 3072), "relu": (8 * 850, 256, 2048),
              "gelu_tanh": (256 * 3136, 96, 384)}


def aot_configs():
    """(kernel, signature, constexprs, options, launch values) for the sm_90 ahead-of-time compile
    check: forward with and without the saved pre-activation, and backward, per activation and dtype."""
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"), (torch.float32, "fp32")):
        t = f"*{name}"
        sig = {"A": t, "B": t, "BIAS": t, "PRE": t, "C": t, "M": "i32", "N": "i32", "K": "i32", "stride_am": "i32",
               "stride_ak": "i32", "stride_bk": "i32", "stride_bn": "i32", "stride_cm": "i32"}
        for activation, (m, dim, hidden) in AOT_SHAPES.items():
            for backward, save_pre in ((False, False), (False, True), (True, False)):
                cfg = launch_config(dtype, backward, interpret=False)
                options = {"num_warps": cfg.pop("num_warps"), "num_stages": cfg.pop("num_stages")}
                # Both GEMMs reduce over dim: x @ W1^T (W1 (hidden, dim)) and d out @ W2 (W2 (dim, hidden)).
                b_strides = {"stride_bk": hidden, "stride_bn": 1} if backward else {"stride_bk": 1, "stride_bn": dim}
                values = {"M": m, "N": hidden, "K": dim, "stride_am": dim, "stride_ak": 1, "stride_cm": hidden,
                          **b_strides}
                constexprs = {"ACT": ACTIVATION_CODE[activation], "BACKWARD": backward,
                              "HAS_BIAS": not backward, "SAVE_PRE": save_pre, "EVEN_K": dim % cfg["BLOCK_K"] == 0,
                              "PRECISION": _precision(dtype), **cfg}
                yield gemm_act_kernel, sig, constexprs, options, values
