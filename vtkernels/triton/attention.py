"""Triton attention: launch configurations and the entry points the op calls.

Kernels are in attention_fwd.py (forward) and attention_bwd.py (backward). Every tensor here is
a logical (B, H, N, d) view with any batch / head / sequence strides and unit stride along d,
so the (B, N, H, d) layout of a fused qkv projection is read in place (the op passes
``t.transpose(1, 2)``). ``lse`` is (B, H, Nq) fp32, natural log, +inf on rows with no key.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from vtkernels.triton.attention_bwd import attention_bwd_dkdv_kernel, attention_bwd_dq_kernel
from vtkernels.backend import triton_interpreter_enabled
from vtkernels.triton.attention_fwd import attention_combine_kernel, attention_fwd_kernel
from vtkernels.triton.tiling import cdiv, next_power_of_2, sm_count, two_tiles
from vtkernels.triton.tma import descriptor, tma_usable

HEAD_DIMS = (32, 64, 80, 96, 128)
LOG2E = 1.4426950408889634


def head_chunks(head_dim: int) -> tuple[int, int]:
    """(D_MAIN, D_REST): the column chunks the kernels hold (see attention_fwd.py), which must
    cover head_dim exactly: 80 -> (64, 16), 96 -> (64, 32), 64 -> (64, 0)."""
    main, rest = two_tiles(head_dim)
    if main + rest != head_dim:
        raise ValueError(f"head_dim {head_dim} is not a power of two >= 16 plus 0 or a power of two >= 16")
    return main, rest


def _precision(dtype: torch.dtype) -> str:
    # fp32 must be correct (1e-5), so no tf32: exact fp32 products ("ieee").
    return "ieee" if dtype == torch.float32 else "tf32"


# The tile each kernel's programs split their sequence axis into: queries (fwd, dq), keys (dkdv).
PROGRAM_TILE = {"fwd": "BLOCK_M", "dq": "BLOCK_M", "dkdv": "BLOCK_N"}


def launch_config(head_dim: int, dtype: torch.dtype, kernel: str, n: Optional[int] = None) -> dict:
    """Tile sizes, warps and pipeline stages for ``kernel`` in ("fwd", "dkdv", "dq", "combine");
    with ``n``, the program tile (PROGRAM_TILE: queries for fwd / dq, keys for dkdv) shrinks to
    the smallest that holds n rows."""
    wide = head_dim > 64
    if kernel == "combine":  # a row-wise pass
        return {"BLOCK_M": 16, "num_warps": 4}
    if dtype == torch.float32:  # ieee dots run on FMA units: small tiles, correctness first
        block_m, block_n, warps, stages = 32, 32, 8, 2
    elif kernel == "fwd":
        block_m, block_n, warps, stages = 128, 64, 8 if wide else 4, 3
    elif kernel == "dkdv":  # 8 warps from d = 64 up: dK and dV both live in registers
        block_m, block_n, warps, stages = 32, 64 if wide else 128, 8 if head_dim >= 64 else 4, 3
    else:  # dq
        block_m, block_n, warps, stages = 64 if wide else 128, 32, 8 if head_dim == 64 else 4, 3
    cfg = {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": warps, "num_stages": stages}
    if kernel in TMA_OPERANDS:  # descriptors where kernel and tensors allow (tma_applies); not interpreted by default
        cfg["TMA"] = dtype != torch.float32 and not triton_interpreter_enabled()
    if n is not None:  # decode (n_q = 1), short sequences: no empty rows
        tile = PROGRAM_TILE[kernel]
        cfg[tile] = min(cfg[tile], max(16, next_power_of_2(n)))
        if dtype != torch.float32 and (cfg[tile] == 64 or (cfg[tile] < 64 and not wide)):
            # One warpgroup per 64-row tile: 8 warps would split each product's N between two
            # warpgroups (wgmma N = 16 for the backward's 32-wide products at ViT-B's 64-row
            # tiles), each reading the whole A operand. sm_90: no spills at 4 warps for any head_dim
            # (fwd 128-177 registers, dkdv 156-221, dq 95-158). Smaller (mma.sync) tiles keep 8
            # warps for d > 64 (dK / dV off the stack), fp32 everywhere (FMA tiles).
            cfg["num_warps"] = 4
    return cfg


# The (B, H, N, d) operands each kernel walks block by block through tensor descriptors when TMA
# applies, in the kernel's argument order: (tensor, its descriptor argument, the launch-config tile
# that sets the box's rows).
TMA_OPERANDS = {
    "fwd": (("q", "QD", "BLOCK_M"), ("k", "KD", "BLOCK_N"), ("v", "VD", "BLOCK_N")),
    "dkdv": (("q", "QD", "BLOCK_M"), ("dout", "DOD", "BLOCK_M")),
    "dq": (("k", "KD", "BLOCK_N"), ("v", "VD", "BLOCK_N")),
}


def tma_applies(asked: bool, head_dim: int) -> bool:
    """Whether a kernel runs on descriptors: asked for (launch_config's "TMA") and head_dim in one
    column chunk (80 and 96 are held as two, which the descriptors' boxes do not split)."""
    return asked and head_chunks(head_dim)[1] == 0


def _descriptors(kernel: str, cfg: dict, head_dim: int, **tensors: torch.Tensor) -> tuple[tuple, bool]:
    """(the kernel's descriptor arguments, TMA on?) for a launch; pops cfg's "TMA". The arguments
    are None (the pointer path) unless TMA applies and the tensors qualify (tma_usable)."""
    operands = TMA_OPERANDS[kernel]
    views = [tensors[name] for name, _, _ in operands]
    if not (tma_applies(cfg.pop("TMA"), head_dim) and tma_usable(*views)):
        return (None,) * len(operands), False
    return tuple(descriptor(t, 1, 1, cfg[tile], head_dim) for t, (_, _, tile) in zip(views, operands)), True


def key_tail_block(n_kv: int, block_n: int, causal: bool) -> int:
    """Key block of the forward's bounds-checked last step. Without causal masking that step only
    holds the n_kv % BLOCK_N leftover keys, so it shrinks to fit them (>= 16, a power of two): at
    ViT-B's 197 keys, 5 keys ride in a 16-wide block instead of a 64-wide one, and the keys
    computed fall from 256 to 208. Causal tiles keep BLOCK_N: their masked steps span the diagonal."""
    leftover = n_kv % block_n
    if causal or leftover == 0:
        return block_n
    return min(block_n, max(16, next_power_of_2(leftover)))


# Attention calls below this many FLOPs (4 * batch * heads * n_q * n_kv * head_dim) run each
# kernel as one launch (see program_launches): their kernels take less GPU time than the host
# spends on a second launch. On the H200 machine (session 23) a Triton launch cost 30-40 us of host
# time; CLIP text at batch 512 (6 GFLOP) and DETR at batch 8 (6 GFLOP) were host-bound there,
# ViT-B/16 (30 GFLOP) and ViT-H/14 (22 GFLOP) at their benchmark batches were not.
ONE_LAUNCH_FLOPS = 10e9


def _small(batch: int, heads: int, n_q: int, n_kv: int, head_dim: int) -> bool:
    return 4 * batch * heads * n_q * n_kv * head_dim < ONE_LAUNCH_FLOPS


def one_launch(q: torch.Tensor, n_kv: int) -> bool:
    """Whether a call on the (B, H, Nq, d) query view ``q`` is small enough for one launch per
    kernel (ONE_LAUNCH_FLOPS); on a GPU only: the interpreter keeps splitting, which the tests check."""
    return q.device.type == "cuda" and _small(*q.shape[:3], n_kv, q.shape[3])


def program_launches(head_dim: int, dtype: torch.dtype, kernel: str, n: int,
                     single: bool = False) -> tuple[tuple[int, int, dict], ...]:
    """How the rows of ``kernel``'s program axis (queries of "fwd" / "dq", keys of "dkdv"; n of
    them) split into launches: [(first row, rows, launch config)]. Tiles of T rows waste up to
    T - 1 rows per (batch, head), a large share at ViT's 197 tokens (256 computed with 128-row
    tiles). The rows that fill whole tiles run in one launch and the leftover rows in a second one
    with the smallest tile that holds them; the tile (the default or 64 rows) that computes the
    fewest rows wins, ties to one launch: 197 -> 3 x 64 + 16, 257 -> 2 x 128 + 16,
    577 -> 9 x 64 + 16, 1024 -> 8 x 128. ``single`` (a small call, :func:`one_launch`): one
    launch, of the tile that computes the fewest rows that way.

    Cached (these heuristics took ~10 us of host time per call), so the configs are shared: copy
    one before changing it."""
    return _program_launches(head_dim, dtype, kernel, n, single, launch_config, triton_interpreter_enabled())


@functools.lru_cache(maxsize=4096)
def _program_launches(head_dim: int, dtype: torch.dtype, kernel: str, n: int, single: bool, config,
                      _interpreted: bool):
    # Keyed on ``config``, the module's launch_config when called (tests replace it), and on the
    # interpreter setting, which launch_config's TMA default reads.
    tile = PROGRAM_TILE[kernel]
    default = config(head_dim, dtype, kernel, n)
    candidates = [default]
    if default[tile] > 64 and dtype != torch.float32:
        candidates.append(config(head_dim, dtype, kernel, 64))
    best, best_rows = None, None
    for cfg in candidates:
        size = cfg[tile]
        full_rows, leftover = n // size * size, n % size
        tail = config(head_dim, dtype, kernel, leftover) if leftover and not single else None
        if tail is None or tail[tile] >= size or full_rows == 0:  # one launch covers it
            launches, rows = ((0, n, cfg),), cdiv(n, size) * size
        else:
            launches, rows = ((0, full_rows, cfg), (full_rows, leftover, tail)), full_rows + tail[tile]
        if best is None or rows < best_rows:
            best, best_rows = launches, rows
    return best


# Key blocks per split at least. A program over 4 blocks takes a microsecond or two: splitting
# fewer saves less than the merge's extra launch costs (ViT-B at batch 1, 197 keys, stays whole).
MIN_SPLIT_BLOCKS = 4


def split_slots(device: torch.device) -> int:
    """Programs a forward launch should reach before its keys are split: two per SM (none on the
    interpreter, which runs programs one by one; the tests force splits through this function)."""
    return 2 * sm_count(device) if device.type == "cuda" else 0


def key_splits(programs: int, n_kv: int, block_n: int, slots: int) -> tuple[int, int]:
    """(splits, keys per split) for a forward launch of ``programs`` (query tiles x batch x heads):
    unsplit (1, all keys rounded up to BLOCK_N) when the launch fills ``slots`` or the keys are
    few; else enough splits of at least MIN_SPLIT_BLOCKS key blocks to reach ``slots`` programs.
    iGPT-S decoding (64 programs, 1025 keys, 64-key blocks) on 132 SMs: 4 splits of 320 keys."""
    blocks = cdiv(n_kv, block_n)
    if programs >= slots or blocks < 2 * MIN_SPLIT_BLOCKS:
        return 1, max(blocks, 1) * block_n
    splits = min(cdiv(slots, programs), blocks // MIN_SPLIT_BLOCKS)
    per_split = cdiv(blocks, splits)
    return cdiv(blocks, per_split), per_split * block_n


def _bhn_strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride()[:3]


def _pad_mask_args(key_padding_mask: Optional[torch.Tensor]):
    if key_padding_mask is None:
        return None, 0
    mask = key_padding_mask.view(torch.uint8)  # bool -> uint8 is a reinterpretation, no copy
    return mask, mask.stride(0)


def _common_constexprs(q: torch.Tensor, causal: bool, key_padding_mask) -> dict:
    return _constexprs(q.shape[-1], q.dtype, causal, key_padding_mask is not None)


@functools.lru_cache(maxsize=None)
def _constexprs(head_dim: int, dtype: torch.dtype, causal: bool, has_pad_mask: bool) -> dict:
    """Shared: callers pass it as ``**`` keyword arguments and never change it."""
    d_main, d_rest = head_chunks(head_dim)
    return {"CAUSAL": causal, "HAS_PAD_MASK": has_pad_mask, "D_MAIN": d_main, "D_REST": d_rest,
            "PRECISION": _precision(dtype)}


def forward(q, k, v, key_padding_mask, out, lse, causal: bool, scale: float) -> None:
    """Writes ``out`` (B, H, Nq, d view) and ``lse`` (B, H, Nq) fp32."""
    batch, heads, n_q, head_dim = q.shape
    n_kv = k.shape[2]
    if out.numel() == 0:
        return
    mask, stride_mb = _pad_mask_args(key_padding_mask)
    constexprs = _common_constexprs(q, causal, key_padding_mask)
    for first_row, rows, cfg in program_launches(head_dim, q.dtype, "fwd", n_q, one_launch(q, n_kv)):
        cfg = dict(cfg)
        tail_n = key_tail_block(n_kv, cfg["BLOCK_N"], causal)
        descriptors, tma = _descriptors("fwd", cfg, head_dim, q=q, k=k, v=v)
        grid = (cdiv(rows, cfg["BLOCK_M"]), batch * heads)
        splits, split_keys = key_splits(grid[0] * grid[1], n_kv, cfg["BLOCK_N"], split_slots(q.device))
        if splits == 1:  # straight into out / lse
            target, target_lse, split_strides, target_strides = out, lse, (0, 0), _bhn_strides(out)
            out_first_row, out_rows = 0, n_q
        else:  # fp32 partials of this launch's rows (attention_fwd.py's docstring), merged below
            target = torch.empty((splits, batch, heads, rows, head_dim), device=q.device, dtype=torch.float32)
            target_lse = torch.empty((splits, batch, heads, rows), device=q.device, dtype=torch.float32)
            split_strides, target_strides = (target.stride(0), target_lse.stride(0)), target.stride()[1:4]
            out_first_row, out_rows = first_row, rows
        attention_fwd_kernel[(*grid, splits)](
            q, k, v, *descriptors, mask, target, target_lse, *_bhn_strides(q), *_bhn_strides(k), *_bhn_strides(v),
            *target_strides, stride_mb, heads, n_q, n_kv, first_row, scale * LOG2E, split_keys, *split_strides,
            out_first_row, out_rows, **constexprs, TAIL_N=tail_n, TMA=tma, POSITIVE_SCALE=scale > 0, **cfg,
        )
        if splits > 1:
            _combine(target, target_lse, out, lse, first_row, rows)


def _combine(part, part_lse, out, lse, first_row: int, rows: int) -> None:
    """out / lse rows [first_row, first_row + rows) from the split partials."""
    batch, heads, n_q, head_dim = out.shape
    cfg = launch_config(head_dim, out.dtype, "combine")
    attention_combine_kernel[(cdiv(rows, cfg["BLOCK_M"]), batch * heads)](
        part, part_lse, out, lse, *part.stride()[:4], *_bhn_strides(out), part_lse.stride(0),
        heads, n_q, first_row, first_row + rows, part.shape[0], HEAD_DIM=head_dim,
        D_POW2=next_power_of_2(head_dim), **cfg,
    )


def backward(dout, q, k, v, key_padding_mask, out, lse, dq, dk, dv, causal: bool, scale: float) -> None:
    """Writes dq, dk, dv (B, H, N, d views) from dout and the forward's out and lse."""
    batch, heads, n_q, head_dim = q.shape
    n_kv = k.shape[2]
    if q.numel() == 0:
        return
    mask, stride_mb = _pad_mask_args(key_padding_mask)
    constexprs = _common_constexprs(q, causal, key_padding_mask)

    # The dQ launches store delta = rowsum(dO * O) for the dK / dV launches, which come after them.
    delta = torch.empty((batch, heads, n_q), device=q.device, dtype=torch.float32)
    operands = (*_bhn_strides(q), *_bhn_strides(k), *_bhn_strides(v))
    single = one_launch(q, n_kv)
    for first_row, rows, cfg in program_launches(head_dim, q.dtype, "dq", n_q, single):
        cfg = dict(cfg)
        descriptors, tma = _descriptors("dq", cfg, head_dim, k=k, v=v)
        attention_bwd_dq_kernel[(cdiv(rows, cfg["BLOCK_M"]), batch * heads)](
            q, k, v, *descriptors, mask, out, dout, lse, delta, dq, *operands, *_bhn_strides(out),
            *_bhn_strides(dout), *_bhn_strides(dq), stride_mb, heads, n_q, n_kv, first_row, scale, scale * LOG2E,
            **constexprs, TMA=tma, **cfg,
        )
    for first_key, keys, cfg in program_launches(head_dim, q.dtype, "dkdv", n_kv, single):
        cfg = dict(cfg)
        descriptors, tma = _descriptors("dkdv", cfg, head_dim, q=q, dout=dout)
        attention_bwd_dkdv_kernel[(cdiv(keys, cfg["BLOCK_N"]), batch * heads)](
            q, k, v, *descriptors, mask, dout, lse, delta, dk, dv, *operands, *_bhn_strides(dout), *_bhn_strides(dk),
            *_bhn_strides(dv), stride_mb, heads, n_q, n_kv, first_key, scale, scale * LOG2E, **constexprs, TMA=tma,
            **cfg,
        )


def _signature(names: str, pointers: dict) -> dict:
    """i32 for every scalar name, the given pointer types, fp32 for the scales."""
    sig = {}
    for name in names.split():
        if name in pointers:
            sig[name] = pointers[name]
        elif name in ("scale", "qk_scale"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


_STRIDES = "stride_qb stride_qh stride_qn stride_kb stride_kh stride_kn stride_vb stride_vh stride_vn"
_FWD_ARGS = (f"Q K V QD KD VD PadMask Out Lse {_STRIDES} stride_ob stride_oh stride_on stride_mb n_heads n_q n_kv "
             "first_row qk_scale split_keys stride_out_split stride_lse_split out_first_row out_rows")
_DKDV_ARGS = (f"Q K V QD DOD PadMask DOut Lse Delta DK DV {_STRIDES} stride_dob stride_doh stride_don stride_dkb "
              "stride_dkh stride_dkn stride_dvb stride_dvh stride_dvn stride_mb n_heads n_q n_kv first_key scale "
              "qk_scale")
_DQ_ARGS = (f"Q K V KD VD PadMask Out DOut Lse Delta DQ {_STRIDES} stride_ob stride_oh stride_on stride_dob stride_doh "
            "stride_don stride_dqb stride_dqh stride_dqn stride_mb n_heads n_q n_kv first_row scale qk_scale")
_COMBINE_ARGS = ("Part PartLse Out Lse stride_ps stride_pb stride_ph stride_pn stride_ob stride_oh stride_on "
                 "stride_lse_split n_heads n_q first_row row_end n_splits")
_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# Per head_dim, a benchmark shape (batch, heads, n_q = n_kv) whose contiguous (B, H, N, d)
# launch gives the compile check its launch-time specializations.
_AOT_SHAPES = {32: (8, 8, 850), 64: (256, 12, 197), 80: (64, 16, 257), 96: (4, 16, 4096), 128: (16, 8, 1024)}


def _aot_launch_values(head_dim: int) -> dict:
    batch, heads, n = _AOT_SHAPES[head_dim]
    values = {"n_heads": heads, "n_q": n, "n_kv": n, "stride_mb": n, "stride_out_split": heads * n * head_dim,
              "stride_lse_split": heads * n, "out_first_row": 0, "out_rows": n}
    for t in ("q", "k", "v", "o", "do", "dk", "dv", "dq"):
        values.update({f"stride_{t}b": heads * n * head_dim, f"stride_{t}h": n * head_dim, f"stride_{t}n": head_dim})
    return values


def _tma_variants(kernel: str, args: str, cfg: dict, name: str, head_dim: int, ptrs: dict):
    """(signature, constexprs) of the launches ``cfg`` (a launch_config without the launch options)
    compiles to: the pointer kernel (descriptor arguments None), and the descriptor one where TMA
    applies."""
    operands = TMA_OPERANDS[kernel]
    pointers = {k: v for k, v in _signature(args, ptrs).items() if k not in [arg for _, arg, _ in operands]}
    tma = tma_applies(cfg.pop("TMA"), head_dim)
    yield pointers, {**cfg, **{arg: None for _, arg, _ in operands}, "TMA": False}
    if tma:
        boxes = {arg: f"tensordesc<{name}[1, 1, {cfg[tile]}, {head_dim}]>" for _, arg, tile in operands}
        yield _signature(args, {**ptrs, **boxes}), {**cfg, "TMA": True}


def aot_configs():
    """Every (kernel, signature, constexprs, options, launch values) the benchmark shapes launch
    (sm_90 check)."""
    for head_dim in HEAD_DIMS:
        values = _aot_launch_values(head_dim)
        batch, heads, n = _AOT_SHAPES[head_dim]
        single = _small(batch, heads, n, n, head_dim)  # (as one_launch on a GPU)
        for name, dtype in _TORCH_DTYPES.items():
            if dtype == torch.float32 and head_dim not in (64, 80):
                continue  # fp32 tiles do not depend on head_dim beyond padding; two suffice
            t = f"*{name}"
            ptrs = {"Q": t, "K": t, "V": t, "PadMask": "*u8", "Out": t, "DOut": t, "DK": t, "DV": t, "DQ": t,
                    "Lse": "*fp32", "Delta": "*fp32"}
            for causal, pad in ((False, True), (True, False)):
                d_main, d_rest = head_chunks(head_dim)
                base = {"CAUSAL": causal, "HAS_PAD_MASK": pad, "D_MAIN": d_main, "D_REST": d_rest,
                        "PRECISION": _precision(dtype)}
                for kernel, fn, args in (("fwd", attention_fwd_kernel, _FWD_ARGS),
                                         ("dkdv", attention_bwd_dkdv_kernel, _DKDV_ARGS),
                                         ("dq", attention_bwd_dq_kernel, _DQ_ARGS)):
                    for first, _, cfg in program_launches(head_dim, dtype, kernel, values["n_q"], single):
                        cfg = dict(cfg)
                        options = {"num_warps": cfg.pop("num_warps"), "num_stages": cfg.pop("num_stages")}
                        first_name = "first_key" if kernel == "dkdv" else "first_row"
                        launch = {**values, first_name: first}
                        if kernel == "fwd":
                            cfg["TAIL_N"] = key_tail_block(values["n_kv"], cfg["BLOCK_N"], causal)
                            cfg["POSITIVE_SCALE"] = True
                            launch["split_keys"] = key_splits(1, values["n_kv"], cfg["BLOCK_N"], 0)[1]
                        for sig, constexprs in _tma_variants(kernel, args, cfg, name, head_dim, ptrs):
                            yield fn, sig, {**base, **constexprs}, options, launch
            if dtype == torch.bfloat16:
                yield from _aot_decode(head_dim, name, base, ptrs, values)


def _aot_decode(head_dim: int, name: str, base: dict, ptrs: dict, values: dict):
    """iGPT decoding: one query of 64 (batch, head) pairs against the 1024-slot cache, the slots
    not yet written hidden by a key-padding mask broadcast over the batch (stride 0; no causal
    rule), split in key ranges (fp32 partial outputs) and merged, as on an H100 (132 SMs)."""
    n_kv = 1024
    cfg = launch_config(head_dim, torch.bfloat16, "fwd", n=1)
    cfg["TAIL_N"] = key_tail_block(n_kv, cfg["BLOCK_N"], causal=False)
    options = {"num_warps": cfg.pop("num_warps"), "num_stages": cfg.pop("num_stages")}
    pairs, heads = 64, values["n_heads"]
    splits, split_keys = key_splits(pairs, n_kv, cfg["BLOCK_N"], 2 * 132)
    rows = {"stride_ob": heads * head_dim, "stride_oh": head_dim, "stride_on": head_dim}  # (B, H, 1, d)
    decode = {**values, **rows, "n_q": 1, "n_kv": n_kv, "stride_mb": 0, "first_row": 0, "split_keys": split_keys,
              "stride_out_split": pairs * head_dim, "stride_lse_split": pairs, "out_rows": 1}
    flags = {**base, "CAUSAL": False, "HAS_PAD_MASK": True, "POSITIVE_SCALE": True}
    for sig, constexprs in _tma_variants("fwd", _FWD_ARGS, cfg, name, head_dim, {**ptrs, "Out": "*fp32"}):
        yield attention_fwd_kernel, sig, {**flags, **constexprs}, options, decode
    cfg = launch_config(head_dim, torch.bfloat16, "combine")
    sig = _signature(_COMBINE_ARGS, {"Part": "*fp32", "PartLse": "*fp32", "Out": f"*{name}", "Lse": "*fp32"})
    partials = {"stride_ps": pairs * head_dim, "stride_pb": heads * head_dim, "stride_ph": head_dim,
                "stride_pn": head_dim, "row_end": 1, "n_splits": splits}
    yield (attention_combine_kernel, sig, {"HEAD_DIM": head_dim, "D_POW2": next_power_of_2(head_dim),
                                           "BLOCK_M": cfg["BLOCK_M"]},
           {"num_warps": cfg["num_warps"]}, {**decode, **partials})
