"""Triton patch embedding: a GEMM whose A operand is gathered from the image on the fly.

Notation: B images of C x H x W, patch p, grid Hp x Wp = (H // p) x (W // p), N = Hp * Wp patches,
D = embed dim, P = 1 with a cls token else 0. The convolution is the GEMM
``tokens[m, d] = sum_k A[m, k] * Wt[k, d]`` with M = B * N rows (one per patch) and
K = C * p * p, where

    row m -> (b, py, px) = (m // N, (m % N) // Wp, (m % N) % Wp)
    A[m, k] = image[b, c, py * p + ky, px * p + kx]      Wt[k, d] = weight[d, c, ky, kx]

The image offset splits into a row part ``b*sb + py*p*sh + px*p*sw`` and a column part
``c*sc + ky*sh + kx*sw``, so a tile's offsets are one broadcast add. The k -> (c, ky, kx) order is
a choice: (c, ky, kx) with kx fastest when the image's width stride is 1 (NCHW), (ky, kx, c) with
c fastest when its channel stride is 1 (NHWC, where a patch row is one run of p * C elements);
the weight is read as the (D, K) matrix in the same order (a view of a contiguous Conv2d weight
for (c, ky, kx), a small permuted copy for (ky, kx, c)), so the sum is unchanged. Normalization
(``x * scale[c] + shift[c]``, fp32) and the cast to the weight dtype happen right after the load.

Forward epilogue: + bias[d] + pos[pos_start + n, d], stored to out[b, P + n, d]; a few extra
programs of the same launch write the cls rows out[b, 0, :] = cls (+ pos[0]). With TMA (16-bit on
sm_90) the forward's weight tiles arrive through a tensor descriptor of the (D, K) matrix
(columns past K and rows past D zero-filled); the gathered A operand has no such box (that would
take im2col mode, which Triton does not expose) and keeps pointer loads.
Backward: d images = dY @ W scattered back with the same index math (patches do not overlap: no
atomics; pixels past the last full patch get zeros); d weight = dY^T @ A with A re-gathered, split
over M into fp32 partials summed afterwards (deterministic). d bias / d cls / d pos are batch
sums, done by the caller.

Tile sizes come from sm_90 compiles with the launch-time specializations (see ``launch_config``).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from vtkernels.backend import triton_interpreter_enabled
from vtkernels.triton.tiling import cdiv, next_power_of_2, sm_count
from vtkernels.triton.tma import descriptor, tma_usable


@triton.jit
def _k_coords(k, PATCH: tl.constexpr, CHANNELS: tl.constexpr, CHANNELS_INNER: tl.constexpr):
    """Column k of A -> (c, ky, kx) in the chosen order (see the module docstring)."""
    if CHANNELS_INNER:
        c = k % CHANNELS
        kx = (k // CHANNELS) % PATCH
        ky = k // (CHANNELS * PATCH)
    else:
        kx = k % PATCH
        ky = (k // PATCH) % PATCH
        c = k // (PATCH * PATCH)
    return c, ky, kx


@triton.jit
def _patch_rows(m, num_patches, grid_w, stride_b, stride_h, stride_w, PATCH: tl.constexpr):
    """Row m -> (b, n, image offset of the patch's top-left pixel) (64-bit offsets)."""
    b = m // num_patches
    n = m % num_patches
    py = n // grid_w
    px = n % grid_w
    offset = b.to(tl.int64) * stride_b + (py * PATCH).to(tl.int64) * stride_h + (px * PATCH).to(tl.int64) * stride_w
    return b, n, offset


@triton.jit
def _gather_a(IMG, SCALE, SHIFT, row_off, m_ok, k, stride_c, stride_h, stride_w, out_dtype,
              PATCH: tl.constexpr, CHANNELS: tl.constexpr, CHANNELS_INNER: tl.constexpr,
              NORMALIZE: tl.constexpr, VEC: tl.constexpr):
    """The A tile [rows, k] in ``out_dtype``, normalized; zeros outside the matrix."""
    c, ky, kx = _k_coords(k, PATCH, CHANNELS, CHANNELS_INNER)
    col_off = c * stride_c + ky * stride_h + kx * stride_w
    if VEC > 1:  # the host checked: runs of VEC consecutive k are contiguous, aligned pixels
        col_off = tl.max_contiguous(tl.multiple_of(col_off, VEC), VEC)
        row_off = tl.multiple_of(row_off, VEC)
    # k < K, written on the slowest coordinate: a bound the compiler sees as constant keeps the
    # loads pipelined when K (588 for patch 14) is not a multiple of 16.
    if CHANNELS_INNER:
        k_ok = ky < PATCH
    else:
        k_ok = c < CHANNELS
    a = tl.load(IMG + row_off[:, None] + col_off[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0)
    if NORMALIZE:
        scale = tl.load(SCALE + c, mask=k_ok, other=0.0)
        shift = tl.load(SHIFT + c, mask=k_ok, other=0.0)
        a = a.to(tl.float32) * scale[None, :] + shift[None, :]
    return a.to(out_dtype)


@triton.jit
def _cls_rows(CLS, POS, OUT, batch, D, row_stride, program, CLS_HAS_POS: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """out[b, 0, :] = cls (+ pos[0]) for the BLOCK_M images of this program."""
    b = program * BLOCK_M + tl.arange(0, BLOCK_M)
    for d0 in range(0, D, BLOCK_N):
        d = d0 + tl.arange(0, BLOCK_N)
        cls = tl.load(CLS + d, mask=d < D, other=0.0).to(tl.float32)
        if CLS_HAS_POS:
            cls += tl.load(POS + d, mask=d < D, other=0.0).to(tl.float32)
        tile = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32) + cls[None, :]
        tl.store(OUT + b.to(tl.int64)[:, None] * row_stride + d[None, :], tile.to(OUT.dtype.element_ty),
                 mask=(b < batch)[:, None] & (d < D)[None, :])


@triton.jit
def store_tokens(acc, OUT, BIAS, POS, b, n, rows_ok, d, D, num_patches, prefix, pos_start,
                 HAS_BIAS: tl.constexpr, HAS_POS: tl.constexpr):
    """The forward's epilogue: acc (rows, d) + bias[d] + pos[pos_start + n, d], stored to
    out[b, prefix + n, d] (b per row, or one image for the whole tile)."""
    d_ok = d < D
    if HAS_BIAS:
        acc += tl.load(BIAS + d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    ok = rows_ok[:, None] & d_ok[None, :]
    if HAS_POS:
        acc += tl.load(POS + (pos_start + n)[:, None] * D + d[None, :], mask=ok, other=0.0).to(tl.float32)
    out_row = b.to(tl.int64) * (num_patches + prefix) + prefix + n  # out[b, P + n]
    tl.store(OUT + out_row[:, None] * D + d[None, :], acc.to(OUT.dtype.element_ty), mask=ok)


@triton.jit
def patch_embed_fwd_kernel(
    IMG, W, WD, BIAS, CLS, POS, SCALE, SHIFT, OUT,
    M, D, K, w_cols, num_patches, grid_w, prefix, pos_start, gemm_programs,
    stride_ib, stride_ic, stride_ih, stride_iw, stride_wd, stride_wk,
    PATCH: tl.constexpr, CHANNELS: tl.constexpr, CHANNELS_INNER: tl.constexpr, NORMALIZE: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_CLS: tl.constexpr, HAS_POS: tl.constexpr, CLS_HAS_POS: tl.constexpr,
    VEC: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, TMA: tl.constexpr,
):
    """W is the (D, K) weight matrix in this call's k order, zero-padded to ``w_cols`` columns (a
    multiple of 16); WD its descriptor (boxes [BLOCK_N, BLOCK_K]) when TMA, else unused. Programs
    past ``gemm_programs`` write the cls rows (BLOCK_M images each)."""
    pid = tl.program_id(0)
    if pid >= gemm_programs:
        if HAS_CLS:
            _cls_rows(CLS, POS, OUT, M // num_patches, D, (num_patches + 1) * D, pid - gemm_programs, CLS_HAS_POS,
                      BLOCK_M, BLOCK_N)
    else:
        # The D tiles of one row tile run next to each other, so its gathered pixels come from L2.
        n_tiles = tl.cdiv(D, BLOCK_N)
        pid_m = pid // n_tiles
        pid_n = pid % n_tiles
        m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        d = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok = m < M
        b, n, row_off = _patch_rows(m, num_patches, grid_w, stride_ib, stride_ih, stride_iw, PATCH)

        # The weight is a plain matrix: a block pointer (no per-element pointers in registers).
        w_block = tl.make_block_ptr(W, shape=(D, w_cols), strides=(stride_wd, stride_wk), offsets=(pid_n * BLOCK_N, 0),
                                    block_shape=(BLOCK_N, BLOCK_K), order=(1, 0))
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            a = _gather_a(IMG, SCALE, SHIFT, row_off, m_ok, k, stride_ic, stride_ih, stride_iw,
                          W.dtype.element_ty, PATCH, CHANNELS, CHANNELS_INNER, NORMALIZE, VEC)
            if TMA:
                w = WD.load([pid_n * BLOCK_N, k0])  # [d, k]
            else:
                w = tl.load(w_block, boundary_check=(0, 1), padding_option="zero")
                w_block = tl.advance(w_block, (0, BLOCK_K))
            acc = tl.dot(a, tl.trans(w), acc, input_precision=DOT_PRECISION)

        store_tokens(acc, OUT, BIAS, POS, b, n, m_ok, d, D, num_patches, prefix, pos_start, HAS_BIAS, HAS_POS)


@triton.jit
def patch_embed_bwd_images_kernel(
    DY, W, SCALE, DIMG,
    M, D, K, num_patches, grid_w, prefix,
    stride_ib, stride_ic, stride_ih, stride_iw, stride_wd, stride_wk,
    PATCH: tl.constexpr, CHANNELS: tl.constexpr, CHANNELS_INNER: tl.constexpr, NORMALIZE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """d images [m, k] = sum_d dY[m, d] * W[d, k] (* scale[c]), scattered to the image; W is the
    (D, K) weight matrix in this call's k order."""
    k_tiles = tl.cdiv(K, BLOCK_K)
    pid_m = tl.program_id(0) // k_tiles
    pid_k = tl.program_id(0) % k_tiles
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    m_ok = m < M
    k_ok = k < K
    b, n, row_off = _patch_rows(m, num_patches, grid_w, stride_ib, stride_ih, stride_iw, PATCH)
    dy_row = b.to(tl.int64) * (num_patches + prefix) + prefix + n
    c, ky, kx = _k_coords(k, PATCH, CHANNELS, CHANNELS_INNER)

    acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_N):
        d = d0 + tl.arange(0, BLOCK_N)
        d_ok = d < D
        dy = tl.load(DY + dy_row[:, None] * D + d[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0)
        w = tl.load(W + d[:, None] * stride_wd + k[None, :] * stride_wk, mask=d_ok[:, None] & k_ok[None, :], other=0)
        acc = tl.dot(dy, w, acc, input_precision=DOT_PRECISION)
    if NORMALIZE:
        acc *= tl.load(SCALE + c, mask=k_ok, other=0.0)[None, :]
    col_off = c * stride_ic + ky * stride_ih + kx * stride_iw
    tl.store(DIMG + row_off[:, None] + col_off[None, :], acc.to(DIMG.dtype.element_ty),
             mask=m_ok[:, None] & k_ok[None, :])


@triton.jit
def patch_embed_bwd_weight_kernel(
    DY, IMG, SCALE, SHIFT, PARTIAL,
    M, D, K, num_patches, grid_w, prefix, tiles_per_split,
    stride_ib, stride_ic, stride_ih, stride_iw,
    PATCH: tl.constexpr, CHANNELS: tl.constexpr, CHANNELS_INNER: tl.constexpr, NORMALIZE: tl.constexpr,
    VEC: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """PARTIAL[split, d, c*p*p + ky*p + kx] = sum over the split's rows m of dY[m, d] * A[m, k]."""
    k_tiles = tl.cdiv(K, BLOCK_K)
    pid_d = tl.program_id(0) // k_tiles
    pid_k = tl.program_id(0) % k_tiles
    split = tl.program_id(1)
    d = pid_d * BLOCK_N + tl.arange(0, BLOCK_N)
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    d_ok = d < D
    dy_ty = DY.dtype.element_ty

    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for t in range(tiles_per_split):
        m = (split * tiles_per_split + t) * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = m < M
        b, n, row_off = _patch_rows(m, num_patches, grid_w, stride_ib, stride_ih, stride_iw, PATCH)
        dy_row = b.to(tl.int64) * (num_patches + prefix) + prefix + n
        dy = tl.load(DY + dy_row[:, None] * D + d[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0)
        a = _gather_a(IMG, SCALE, SHIFT, row_off, m_ok, k, stride_ic, stride_ih, stride_iw, dy_ty,
                      PATCH, CHANNELS, CHANNELS_INNER, NORMALIZE, VEC)
        acc = tl.dot(tl.trans(dy), a, acc, input_precision=DOT_PRECISION)
    c, ky, kx = _k_coords(k, PATCH, CHANNELS, CHANNELS_INNER)
    w_flat = c * (PATCH * PATCH) + ky * PATCH + kx  # Conv2d layout (D, C, p, p), contiguous
    out = PARTIAL + split.to(tl.int64) * D * K + d[:, None] * K + w_flat[None, :]
    tl.store(out, acc, mask=d_ok[:, None] & (k < K)[None, :])


# ---------------------------------------------------------------------------------------------
# Host side. ``images`` is always the (B, C, H, W) view (any strides); ``weight`` is (D, C, p, p)
# (any strides); bias / cls are (D,) and pos is (rows, D), all contiguous; scale / shift are
# fp32 (C,) or None (no normalization).


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 dots follow what the Conv2d path does (cuDNN's TF32 switch); 16-bit dots are exact."""
    return "tf32" if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else "ieee"


def channels_inner(images: torch.Tensor) -> bool:
    """Order k as (ky, kx, c) when channels are the image's fastest dimension (NHWC memory)."""
    return images.stride(1) < images.stride(3)


def gather_vec(images: torch.Tensor, patch: int, max_bytes: int = 16) -> int:
    """Largest v (power of 2, <= max_bytes) such that every group of v consecutive k of A is v
    contiguous, v-aligned pixels. 1 when the layout gives no such guarantee."""
    sb, sc, sh, sw = images.stride()
    c = images.shape[1]
    if channels_inner(images):
        if sc != 1 or sw != c:
            return 1
        run, strides = patch * c, (sb, patch * sh, patch * sw, sh)
    else:
        if sw != 1:
            return 1
        run, strides = patch, (sb, patch * sh, sc, sh)
    size = images.element_size()
    v = max(1, max_bytes // size)
    while v > 1 and (run % v or any(s % v for s in strides) or images.data_ptr() % (v * size)):
        v //= 2
    return v


def weight_matrix(weight: torch.Tensor, inner: bool) -> torch.Tensor:
    """The (D, K) weight matrix whose column k matches A's column k (see ``channels_inner``), as a
    view of (D, K_16) storage with K_16 = K rounded up to 16 (zeros past K): 16-byte aligned rows
    keep the weight loads pipelined. A view of the weight itself when it already is one."""
    dim = weight.shape[0]
    matrix = (weight.permute(0, 2, 3, 1) if inner else weight).reshape(dim, -1)
    k_size = matrix.shape[1]
    if k_size % 16 == 0 and matrix.stride(1) == 1 and matrix.stride(0) % 16 == 0:
        return matrix
    padded = matrix.new_zeros(dim, cdiv(k_size, 16) * 16)
    padded[:, :k_size] = matrix
    return padded[:, :k_size]


def launch_config(kind: str, dtype: torch.dtype, dim: int, k_size: int) -> dict:
    """Tiles and warps for ``kind`` in ("fwd", "bwd_images", "bwd_weight"); small tiles in the
    interpreter (more programs, so small test shapes still cross tile edges)."""
    if triton_interpreter_enabled():
        return {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16, "num_warps": 4, "num_stages": 1,
                **({"TMA": False, "IMAGE_TMA": False} if kind == "fwd" else {})}
    # Chosen from sm_90 compiles with the launch-time specializations (16-divisible sizes and
    # strides, aligned pointers): these tiles are software-pipelined (cp.async, 3 stages), use
    # wgmma and do not spill. fp32 halves the k depth (twice the bytes per element).
    wide = dtype != torch.float32
    if kind == "fwd":
        block_k = min(64 if wide else 32, max(16, next_power_of_2(k_size)))
        # IMAGE_TMA: the image through a descriptor too (patch_embed_image_tma.py), where it
        # applies; off until timed (tools/tune.py sweeps it).
        return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": block_k, "num_warps": 8, "num_stages": 3, "TMA": wide,
                "IMAGE_TMA": False}
    # bwd_images: output tile (BLOCK_M patches, BLOCK_K columns), loop over D in BLOCK_N steps;
    # bwd_weight: output tile (BLOCK_N of D, BLOCK_K columns), loop over patches in BLOCK_M steps.
    return {"BLOCK_M": 64 if wide else 32, "BLOCK_N": 128, "BLOCK_K": 128, "num_warps": 8, "num_stages": 3}


def _geometry(images: torch.Tensor, weight: torch.Tensor):
    batch, channels, height, width = images.shape
    dim, patch = weight.shape[0], weight.shape[2]
    grid_h, grid_w = height // patch, width // patch
    return batch, channels, dim, patch, grid_w, grid_h * grid_w


def _launch_args(cfg: dict) -> tuple[dict, dict]:
    """(constexprs, launch options) of a launch config (tools/tune.py may add maxnreg)."""
    cfg = dict(cfg)
    return cfg, {key: cfg.pop(key) for key in ("num_warps", "num_stages", "maxnreg") if key in cfg}


def forward(images, weight, bias: Optional[torch.Tensor], cls_token: Optional[torch.Tensor],
            pos_embed: Optional[torch.Tensor], scale: Optional[torch.Tensor], shift: Optional[torch.Tensor]):
    """Tokens (B, P + N, D) in weight.dtype."""
    batch, channels, dim, patch, grid_w, num_patches = _geometry(images, weight)
    prefix = int(cls_token is not None)
    out = weight.new_empty(batch, prefix + num_patches, dim)
    rows, k_size = batch * num_patches, channels * patch * patch
    if rows == 0:
        return out
    pos_start = int(pos_embed is not None and pos_embed.shape[0] == num_patches + 1)
    tiles, launch = _launch_args(launch_config("fwd", weight.dtype, dim, k_size))
    inner = channels_inner(images)
    w = weight_matrix(weight, inner)
    tma = tiles.pop("TMA") and tma_usable(w)
    if tiles.pop("IMAGE_TMA") and tma:
        from vtkernels.triton import patch_embed_image_tma  # (it imports this module's helpers)

        view = patch_embed_image_tma.image_view(images, weight)
        if view is not None:
            patch_embed_image_tma.forward(view, w, bias, cls_token, pos_embed, scale, shift, out,
                                          images.shape[2] // patch, grid_w, pos_start, tiles, launch)
            return out
    gemm_programs = cdiv(rows, tiles["BLOCK_M"]) * cdiv(dim, tiles["BLOCK_N"])
    cls_programs = cdiv(batch, tiles["BLOCK_M"]) if cls_token is not None else 0
    w_desc = descriptor(w, tiles["BLOCK_N"], tiles["BLOCK_K"]) if tma else None
    patch_embed_fwd_kernel[(gemm_programs + cls_programs,)](
        images, w, w_desc, bias, cls_token, pos_embed, scale, shift, out,
        rows, dim, k_size, cdiv(k_size, 16) * 16, num_patches, grid_w, prefix, pos_start, gemm_programs,
        *images.stride(), *w.stride(),
        PATCH=patch, CHANNELS=channels, CHANNELS_INNER=inner, NORMALIZE=scale is not None,
        HAS_BIAS=bias is not None, HAS_CLS=cls_token is not None, HAS_POS=pos_embed is not None,
        CLS_HAS_POS=bool(pos_start) and cls_token is not None, VEC=gather_vec(images, patch),
        DOT_PRECISION=dot_precision(weight.dtype), TMA=w_desc is not None, **tiles, **launch,
    )
    return out


def backward_images(grad_out: torch.Tensor, images: torch.Tensor, weight: torch.Tensor,
                    scale: Optional[torch.Tensor]) -> torch.Tensor:
    """d images, laid out like ``images`` where it is dense (zeros past the last full patch)."""
    batch, channels, dim, patch, grid_w, num_patches = _geometry(images, weight)
    height, width = images.shape[2:]
    covered = height % patch == 0 and width % patch == 0
    grad = torch.empty_like(images) if covered else torch.zeros_like(images)
    rows, k_size = batch * num_patches, channels * patch * patch
    if rows == 0:
        return grad
    tiles, launch = _launch_args(launch_config("bwd_images", weight.dtype, dim, k_size))
    grid = (cdiv(rows, tiles["BLOCK_M"]) * cdiv(k_size, tiles["BLOCK_K"]),)
    inner = channels_inner(grad)
    w = weight_matrix(weight, inner)
    patch_embed_bwd_images_kernel[grid](
        grad_out, w, scale, grad, rows, dim, k_size, num_patches, grid_w, grad_out.shape[1] - num_patches,
        *grad.stride(), *w.stride(),
        PATCH=patch, CHANNELS=channels, CHANNELS_INNER=inner, NORMALIZE=scale is not None,
        DOT_PRECISION=dot_precision(weight.dtype), **tiles, **launch,
    )
    return grad


def _splits(device: torch.device, output_tiles: int, row_tiles: int) -> tuple[int, int]:
    """(splits of M, row tiles per split): about two programs per SM (four in the interpreter,
    so the tests exercise the partial sums)."""
    target = 2 * sm_count(device) if device.type == "cuda" else 4
    splits = max(1, min(row_tiles, cdiv(target, output_tiles)))
    per_split = cdiv(row_tiles, splits)
    return cdiv(row_tiles, per_split), per_split


def backward_weight(grad_out: torch.Tensor, images: torch.Tensor, weight: torch.Tensor,
                    scale: Optional[torch.Tensor], shift: Optional[torch.Tensor]) -> torch.Tensor:
    """d weight (D, C, p, p) in weight.dtype."""
    batch, channels, dim, patch, grid_w, num_patches = _geometry(images, weight)
    rows, k_size = batch * num_patches, channels * patch * patch
    if rows == 0:
        return torch.zeros_like(weight, memory_format=torch.contiguous_format)
    tiles, launch = _launch_args(launch_config("bwd_weight", weight.dtype, dim, k_size))
    output_tiles = cdiv(dim, tiles["BLOCK_N"]) * cdiv(k_size, tiles["BLOCK_K"])
    splits, per_split = _splits(images.device, output_tiles, cdiv(rows, tiles["BLOCK_M"]))
    partial = torch.empty(splits, dim, k_size, device=weight.device, dtype=torch.float32)
    patch_embed_bwd_weight_kernel[(output_tiles, splits)](
        grad_out, images, scale, shift, partial, rows, dim, k_size, num_patches, grid_w,
        grad_out.shape[1] - num_patches, per_split, *images.stride(),
        PATCH=patch, CHANNELS=channels, CHANNELS_INNER=channels_inner(images), NORMALIZE=scale is not None,
        VEC=gather_vec(images, patch), DOT_PRECISION=dot_precision(weight.dtype), **tiles, **launch,
    )
    return partial.sum(0).view(dim, channels, patch, patch).to(weight.dtype)


def _aot_launch_values(side: int, patch: int, dim: int, inner: bool, cls: bool, batch: int = 256) -> dict:
    """The integer arguments a launch on a (batch, 3, side, side) image passes, for the compile
    check's launch-time specializations (divisible-by-16 and unit values)."""
    grid, k_size = side // patch, 3 * patch * patch
    w_cols = cdiv(k_size, 16) * 16
    rows = batch * grid * grid
    hw = side * side
    strides = (3 * hw, 1, 3 * side, 3) if inner else (3 * hw, hw, side, 1)
    fwd = launch_config("fwd", torch.bfloat16, dim, k_size)
    return {**dict(zip(("stride_ib", "stride_ic", "stride_ih", "stride_iw"), strides)),
            "M": rows, "D": dim, "K": k_size, "w_cols": w_cols, "num_patches": grid * grid, "grid_w": grid,
            "prefix": int(cls), "pos_start": int(cls), "stride_wd": w_cols, "stride_wk": 1, "tiles_per_split": 8,
            "gemm_programs": cdiv(rows, fwd["BLOCK_M"]) * cdiv(dim, fwd["BLOCK_N"])}


def aot_configs():
    """(kernel, signature, constexprs, options, launch values) for the benchmark shapes at B = 256
    (ViT-B/16 224, ViT-L/14 336, Swin-T/4 224; float images NCHW, plus NHWC for ViT-L/14, and
    uint8 NHWC), for the ahead-of-time sm_90 compile check."""
    shapes = [  # (side, patch, dim, channels_inner, vec, image dtype or None for the weight's)
        (224, 16, 768, False, 8, None), (336, 14, 1024, False, 2, None), (336, 14, 1024, True, 2, None),
        (224, 4, 96, False, 4, None), (224, 4, 96, True, 16, "u8"), (224, 16, 768, True, 16, "u8")]
    strides = {f"stride_i{a}": "i32" for a in "bchw"}
    w_strides = {"stride_wd": "i32", "stride_wk": "i32"}
    sizes = {"M": "i32", "D": "i32", "K": "i32", "num_patches": "i32", "grid_w": "i32", "prefix": "i32"}
    fwd_sizes = {"M": "i32", "D": "i32", "K": "i32", "w_cols": "i32", **sizes}
    for side, patch, dim, inner, vec, image_dtype in shapes:
        for dtype in ("bf16", "fp16", "fp32"):
            torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
            img = image_dtype or dtype
            cls = patch != 4
            values = _aot_launch_values(side, patch, dim, inner, cls)
            common = {"PATCH": patch, "CHANNELS": 3, "CHANNELS_INNER": inner, "NORMALIZE": img == "u8",
                      "DOT_PRECISION": "tf32" if dtype == "fp32" else "ieee"}
            vec = min(vec, 16 // {"u8": 1, "fp32": 4}.get(img, 2))
            tiles, launch = _launch_args(launch_config("fwd", torch_dtype, dim, 3 * patch * patch))
            sig = {"IMG": f"*{img}", "W": f"*{dtype}", "BIAS": f"*{dtype}", "CLS": f"*{dtype}", "POS": f"*{dtype}",
                   "SCALE": "*fp32", "SHIFT": "*fp32", "OUT": f"*{dtype}", **fwd_sizes, "pos_start": "i32",
                   "gemm_programs": "i32",
                   **strides, **w_strides}
            flags = {"HAS_BIAS": True, "HAS_CLS": cls, "HAS_POS": cls, "CLS_HAS_POS": cls}
            tma = tiles.pop("TMA")
            tiles.pop("IMAGE_TMA")
            constexprs = {**common, **flags, "VEC": vec, **tiles}
            yield patch_embed_fwd_kernel, sig, {**constexprs, "WD": None, "TMA": False}, launch, values
            if tma:  # the weight tiles through a descriptor instead
                box = f"tensordesc<{dtype}[{tiles['BLOCK_N']}, {tiles['BLOCK_K']}]>"
                yield patch_embed_fwd_kernel, {**sig, "WD": box}, {**constexprs, "TMA": True}, launch, values
            tiles, launch = _launch_args(launch_config("bwd_weight", torch_dtype, dim, 3 * patch * patch))
            sig = {"DY": f"*{dtype}", "IMG": f"*{img}", "SCALE": "*fp32", "SHIFT": "*fp32", "PARTIAL": "*fp32",
                   **sizes, "tiles_per_split": "i32", **strides}
            yield patch_embed_bwd_weight_kernel, sig, {**common, "VEC": vec, **tiles}, launch, values
            if img != "u8":
                sig = {"DY": f"*{dtype}", "W": f"*{dtype}", "SCALE": "*fp32", "DIMG": f"*{dtype}", **sizes,
                       **strides, **w_strides}
                yield patch_embed_bwd_images_kernel, sig, {**common, **tiles}, launch, values
