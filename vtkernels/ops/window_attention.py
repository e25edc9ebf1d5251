"""Swin (shifted-)window attention: validation, dispatch, autograd, custom-op registration.

The kernel backends run behind ``vtkernels::window_attention_fwd`` / ``_bwd`` custom ops tied by
``register_autograd`` (fake implementations let ``torch.compile(fullgraph=True)`` trace them).
Every per-call quantity is an int / float argument: no masks or indices are built on the host,
so a call is capturable in a CUDA graph. The reference backend is plain PyTorch autograd.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
from torch import Tensor

from vtkernels._extension import device_guarded, extension_has, load_extension
from vtkernels.backend import OpDispatcher
from vtkernels.ops import checks
from vtkernels.ops.registration import backward_call, forward_call
from vtkernels.reference import window_attention as reference

MAX_WINDOW_TOKENS = 256  # Triton: one window's keys in one tile
MAX_HEAD_DIM = 128
CUDA_MAX_WINDOW_TOKENS = 144  # CUDA (SIMT, shared memory): csrc/window_attention/window_attention.h
CUDA_MAX_HEAD_DIM = 64


def _geometry(qkv: Tensor, num_heads: int, window: int, table_window: int, shift: int):
    from vtkernels.triton.window_attention import Geometry

    head_dim = qkv.shape[3] // (3 * num_heads)
    return Geometry(qkv.shape[1], qkv.shape[2], window, table_window, shift, num_heads, head_dim)


@functools.lru_cache(maxsize=None)
def cuda_shared_memory(device_index: int, window: int, head_dim: int, backward: bool) -> tuple[int, int]:
    """(bytes one CUDA block needs, bytes a block may have on the GPU)."""
    return tuple(load_extension().window_attention_shared_memory(window, head_dim, backward, device_index))


# (The cache sits inside: Dynamo traces an lru_cache wrapper's function, constant mark or not.)
@torch.compiler.assume_constant_result
def cuda_shared_memory_refusal(device_index: int, window: int, head_dim: int, backward: bool) -> Optional[str]:
    """Why the CUDA kernel's block cannot have the shared memory it needs on this GPU, or None:
    the backward of 12x12 windows at head_dim 64 takes ~163 KB, more than the 99 KB of sm_86 /
    sm_89 parts (sm_80 and sm_90 allow 163 / 227 KB)."""
    if not extension_has("window_attention_shared_memory"):
        return "vtkernels._C was built before window attention's shared-memory query; rebuild it (pip install -e .)"
    needed, available = cuda_shared_memory(device_index, window, head_dim, backward)
    if needed <= available:
        return None
    return (f"the CUDA {'backward' if backward else 'forward'} of {window}x{window} windows at head_dim {head_dim} "
            f"needs {needed} B of shared memory per block, this GPU allows {available} B")


def _kernel_refusals(backend: str, qkv: Tensor, rel_pos_table: Tensor, head_dim: int, window: int,
                     pad_qkv: Optional[Tensor] = None, **_) -> list[str]:
    reasons = []
    if rel_pos_table.dtype not in checks.KERNEL_DTYPES:
        reasons.append(f"rel_pos_table dtype {rel_pos_table.dtype} is not float32/float16/bfloat16")
    if backend == "cuda":
        max_tokens, max_dim = CUDA_MAX_WINDOW_TOKENS, CUDA_MAX_HEAD_DIM
    else:
        max_tokens, max_dim = MAX_WINDOW_TOKENS, MAX_HEAD_DIM
    if window * window > max_tokens:
        reasons.append(f"window of {window}x{window} tokens > {max_tokens} (one window must fit one {backend} block)")
    if head_dim > max_dim:
        reasons.append(f"head_dim {head_dim} > {max_dim}")
    n_windows = math.ceil(qkv.shape[1] / window) * math.ceil(qkv.shape[2] / window)
    if n_windows > checks.MAX_GRID_Y:
        reasons.append(f"{n_windows} windows per image > {checks.MAX_GRID_Y} (the grid's second axis)")
    if backend == "cuda" and not reasons and qkv.is_cuda:
        backward = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (qkv, rel_pos_table, pad_qkv))
        refusal = cuda_shared_memory_refusal(qkv.device.index, window, head_dim, backward)
        reasons += [refusal] if refusal else []
    return reasons


# Triton first without a measurement: it uses tensor cores, the CUDA kernel is SIMT.
dispatcher = OpDispatcher("window_attention", gpu_preference=("triton", "cuda"), dtype_of="qkv",
                          refusals=_kernel_refusals)


def _kernels(backend: str):
    """(forward, backward) taking (tensors..., Geometry, scale, mask_value, pad_first)."""
    if backend == "triton":
        from vtkernels.triton import window_attention as fwd, window_attention_bwd as bwd

        return device_guarded(fwd.forward), device_guarded(bwd.backward)

    ext = load_extension()

    def forward(qkv, table, pad_qkv, geo, scale, mask_value, pad_first):
        return ext.window_attention_fwd(qkv, table, pad_qkv, geo.heads, geo.window, geo.table_window, geo.shift,
                                        scale, mask_value, pad_first)

    def backward(dout, qkv, table, pad_qkv, geo, scale, mask_value, pad_first):
        return ext.window_attention_bwd(dout, qkv, table, pad_qkv, geo.heads, geo.window, geo.table_window,
                                        geo.shift, scale, mask_value, pad_first)

    return forward, backward


@torch.library.custom_op("vtkernels::window_attention_fwd", mutates_args=())
def window_attention_fwd(qkv: Tensor, table: Tensor, pad_qkv: Optional[Tensor], num_heads: int, window: int,
                         table_window: int, shift: int, scale: float, mask_value: float, pad_first: bool,
                         backend: str) -> Tensor:
    """qkv (B, H, W, 3C), unit channel stride -> (B, H, W, C); ``window``/``shift`` already effective."""
    forward, _ = _kernels(backend)
    geo = _geometry(qkv, num_heads, window, table_window, shift)
    return forward(qkv, table, pad_qkv, geo, scale, mask_value, pad_first)


@window_attention_fwd.register_fake
def _(qkv, table, pad_qkv, num_heads, window, table_window, shift, scale, mask_value, pad_first, backend):
    b, h, w, c3 = qkv.shape
    return qkv.new_empty(b, h, w, c3 // 3)


@torch.library.custom_op("vtkernels::window_attention_bwd", mutates_args=())
def window_attention_bwd(dout: Tensor, qkv: Tensor, table: Tensor, pad_qkv: Optional[Tensor], num_heads: int,
                         window: int, table_window: int, shift: int, scale: float, mask_value: float,
                         pad_first: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Returns d qkv, d table (deterministic), d pad_qkv (empty without pad_qkv)."""
    _, backward = _kernels(backend)
    geo = _geometry(qkv, num_heads, window, table_window, shift)
    return tuple(backward(dout, qkv, table, pad_qkv, geo, scale, mask_value, pad_first))


@window_attention_bwd.register_fake
def _(dout, qkv, table, pad_qkv, num_heads, window, table_window, shift, scale, mask_value, pad_first, backend):
    dpad = pad_qkv.new_empty(pad_qkv.shape) if pad_qkv is not None else qkv.new_empty(0)
    return qkv.new_empty(qkv.shape), table.new_empty(table.shape), dpad


call_window_attention_bwd = backward_call(window_attention_bwd)


def _setup_context(ctx, inputs, output):
    qkv, table, pad_qkv, *config = inputs
    ctx.save_for_backward(qkv, table, pad_qkv)
    ctx.config = config


def _backward(ctx, dout):
    qkv, table, pad_qkv = ctx.saved_tensors
    dqkv, dtable, dpad = call_window_attention_bwd(checks.unit_stride(dout), qkv, table, pad_qkv, *ctx.config)
    return (dqkv, dtable, dpad if pad_qkv is not None else None) + (None,) * len(ctx.config)


call_window_attention_fwd = forward_call(window_attention_fwd, _backward, _setup_context)


def _validate(qkv, rel_pos_table, num_heads, window_size, shift_size, scale, pad_qkv):
    checks.check_tensor("qkv", qkv, ndim=4)
    checks.check_tensor("rel_pos_table", rel_pos_table, ndim=2)
    if not isinstance(num_heads, int) or num_heads <= 0:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    if not isinstance(window_size, int) or window_size <= 0:
        raise ValueError(f"window_size must be a positive int, got {window_size!r}")
    if not isinstance(shift_size, int) or not 0 <= shift_size < window_size:
        raise ValueError(f"shift_size must be an int in [0, window_size={window_size}), got {shift_size!r}")
    if qkv.shape[-1] == 0 or qkv.shape[-1] % (3 * num_heads):
        raise ValueError(f"qkv's last dimension ({qkv.shape[-1]}) must be 3 * num_heads ({num_heads}) * head_dim")
    if qkv.shape[1] == 0 or qkv.shape[2] == 0:
        raise ValueError(f"qkv must have a non-empty (H, W) map, got shape {tuple(qkv.shape)}")
    checks.check_shape("rel_pos_table", rel_pos_table, ((2 * window_size - 1) ** 2, num_heads))
    if scale is not None:
        checks.check_positive("scale", scale)
    if pad_qkv is not None:
        checks.check_tensor("pad_qkv", pad_qkv, ndim=1)
        checks.check_shape("pad_qkv", pad_qkv, (qkv.shape[-1],))
    checks.check_same_device("qkv", qkv, rel_pos_table=rel_pos_table, pad_qkv=pad_qkv)


def window_attention(qkv: Tensor, rel_pos_table: Tensor, num_heads: int, window_size: int, shift_size: int = 0,
                     scale: Optional[float] = None, mask_value: float = -100.0, backend: Optional[str] = None, *,
                     pad_qkv: Optional[Tensor] = None, pad_first: bool = False) -> Tensor:
    """Swin window attention with cyclic shift, fused: (B, H, W, 3C) qkv -> (B, H, W, C) in image order.

    ``qkv`` is the qkv Linear's output (channels ordered (3, heads, head_dim) as in timm);
    ``rel_pos_table`` is the ((2M-1)^2, heads) relative-position-bias table of windows of
    M = ``window_size``. The shift mask adds ``mask_value`` (Swin's -100; ``float('-inf')`` for
    a hard mask) between tokens the roll brought together. A window that does not fit the map
    shrinks to ``min(H, W)``, unshifted; a map that is not a multiple of the window is padded
    bottom/right with tokens whose q/k/v are ``pad_qkv`` (pass the qkv Linear's bias: timm and HF
    zero-pad that Linear's input; None means zeros). timm rolls then pads; ``pad_first=True``
    pads then rolls (HF transformers). Gradients flow to qkv, rel_pos_table and pad_qkv.
    """
    _validate(qkv, rel_pos_table, num_heads, window_size, shift_size, scale, pad_qkv)
    head_dim = qkv.shape[-1] // (3 * num_heads)
    scale = float(head_dim ** -0.5 if scale is None else scale)
    window, shift = reference.effective_window(qkv.shape[1], qkv.shape[2], window_size, shift_size)
    chosen = dispatcher.choose(qkv.device, backend, qkv=qkv, rel_pos_table=rel_pos_table, head_dim=head_dim, window=window,
                               pad_qkv=pad_qkv)
    if chosen == "reference":
        return reference.window_attention(qkv, rel_pos_table, num_heads, window_size, shift_size, scale,
                                          mask_value, pad_qkv, pad_first)
    if qkv.shape[1] % window == 0 and qkv.shape[2] % window == 0:
        pad_qkv = None  # no padding tokens: nothing reads it and its gradient is zero
    qkv = checks.unit_stride(qkv)
    return call_window_attention_fwd(qkv, rel_pos_table.contiguous(), None if pad_qkv is None else pad_qkv.contiguous(),
                                     num_heads, window, window_size, shift, scale, float(mask_value), pad_first, chosen)


__all__ = ["window_attention", "dispatcher"]


def selfcheck_cases(backend: str = "triton", dtypes=(torch.float32, torch.float16)):
    """Small kernel-vs-reference checks (forward, d qkv, d table, d pad_qkv) for `python -m vtkernels selfcheck`."""
    from vtkernels.testing import assert_close, grads, upcast, check_device

    def check(height, width, shift, pad_first, dtype):
        device = check_device()
        heads, head_dim, window = 2, 32, 7
        inputs = [torch.randn(s, device=device).to(dtype).requires_grad_()
                  for s in ((2, height, width, 3 * heads * head_dim), (169, heads), (3 * heads * head_dim,))]

        def run(qkv, table, pad, backend):
            return window_attention(qkv, table, heads, window, shift, None, -100.0, backend, pad_qkv=pad,
                                    pad_first=pad_first)

        out = run(*inputs, backend)
        ref_inputs = upcast(*inputs)
        ref_out = run(*ref_inputs, "reference")
        assert_close(out, ref_out, dtype)
        cot = torch.randn_like(out)
        assert_close(grads(out, inputs, cot), grads(ref_out, ref_inputs, cot), dtype,
                     tol=None if dtype == torch.float32 else 2e-2)

    for height, width, shift, pad_first in ((14, 14, 3, False), (9, 11, 3, False), (9, 11, 3, True), (14, 14, 0, False)):
        for dtype in dtypes:
            name = f"{height}x{width} shift {shift}{' HF order' if pad_first else ''} {dtype}"
            yield name, (lambda a=(height, width, shift, pad_first, dtype): check(*a))
