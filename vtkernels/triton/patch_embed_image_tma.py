"""Triton patch embedding forward with the image itself read through a TMA tensor descriptor.

The gathered A operand of patch_embed.py (rows = patches, columns k = (c, ky, kx)) is, for a
contiguous NCHW image, a plain strided view: (B * C, Hp, Wp, p, p) with strides
(H * W, p * W, p, W, 1), i.e. [image and channel, patch row, patch column, pixel row, pixel
column]. The dimensions need not be in stride order, only the last one contiguous, so a 5-D
descriptor of that view loads the box [1, ROWS_H, ROWS_W, KY, p]: ROWS_H x ROWS_W patches of one
image and channel, KY pixel rows of each, laid out in shared memory exactly as the
[ROWS_H * ROWS_W, KY * p] tile of A (patch-major, (ky, kx) within), which a reshape hands to the
dot. The K loop walks the channels and, within each, the patch's pixel rows KY at a time; the
weight's (D, K) matrix arrives through a 2-D descriptor as in patch_embed.py. Patches past the
map's edge (a partial ROWS_H x ROWS_W block) load zeros and are not stored.

What it takes (``image_view``): 16-bit images in the weight's dtype, unit width stride, batch
stride C times the channel stride (the two merge into one dimension), 16-byte strides and a
patch row of 16-byte multiples (p = 8, 16, 32 in 16 bits); the descriptor box's sizes are
powers of two. Anything else keeps patch_embed.py's pointer gather. Normalization (mean / std)
scales the loaded tile by its channel's factors; uint8 images are not 16-bit and never come here.
The block of patches spans one image, so its rows are (hp, wp) with wp fastest: ROWS_W of a
14-patch row waste 2 of 16 rows (ViT-B/16 at 224: 14 x 14 patches in 2 x 1 blocks of 8 x 16, 77%
useful); at 384 (24 x 24), 8 x 8 blocks are exact. Untimed: tools/tune.py sweeps IMAGE_TMA.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from vtkernels.triton.patch_embed import _cls_rows, store_tokens
from vtkernels.triton.tiling import cdiv
from vtkernels.triton.tma import TMA_DTYPES, descriptor, tma_usable


@triton.jit
def patch_embed_fwd_image_tma_kernel(
    ID, WD, BIAS, CLS, POS, SCALE, SHIFT, OUT,
    D, num_patches, grid_h, grid_w, prefix, pos_start, gemm_programs, batch,
    PATCH: tl.constexpr, CHANNELS: tl.constexpr, NORMALIZE: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_CLS: tl.constexpr, HAS_POS: tl.constexpr, CLS_HAS_POS: tl.constexpr,
    ROWS_H: tl.constexpr, ROWS_W: tl.constexpr, KY: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """ID: the image view's descriptor (boxes [1, ROWS_H, ROWS_W, KY, PATCH]); WD: the (D, K)
    weight matrix's (boxes [BLOCK_N, KY * PATCH]). Programs past ``gemm_programs`` write the cls
    rows (ROWS_H * ROWS_W images each)."""
    BLOCK_M: tl.constexpr = ROWS_H * ROWS_W
    pid = tl.program_id(0)
    if pid >= gemm_programs:
        if HAS_CLS:
            _cls_rows(CLS, POS, OUT, batch, D, (num_patches + 1) * D, pid - gemm_programs, CLS_HAS_POS,
                      BLOCK_M, BLOCK_N)
    else:
        # The D tiles of one block of patches run next to each other (its pixels come from L2).
        n_tiles = tl.cdiv(D, BLOCK_N)
        pid_m = pid // n_tiles
        pid_n = pid % n_tiles
        blocks_h = tl.cdiv(grid_h, ROWS_H)
        blocks_w = tl.cdiv(grid_w, ROWS_W)
        b = pid_m // (blocks_h * blocks_w)
        hp0 = pid_m // blocks_w % blocks_h * ROWS_H
        wp0 = pid_m % blocks_w * ROWS_W
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for c in range(CHANNELS):
            for ky0 in range(0, PATCH, KY):
                a = tl.reshape(ID.load([b * CHANNELS + c, hp0, wp0, ky0, 0]), [BLOCK_M, KY * PATCH])
                if NORMALIZE:
                    a = (a.to(tl.float32) * tl.load(SCALE + c) + tl.load(SHIFT + c)).to(OUT.dtype.element_ty)
                w = WD.load([pid_n * BLOCK_N, (c * PATCH + ky0) * PATCH])  # [d, k]
                acc = tl.dot(a, tl.trans(w), acc)
        r = tl.arange(0, BLOCK_M)
        hp = hp0 + r // ROWS_W
        wp = wp0 + r % ROWS_W
        store_tokens(acc, OUT, BIAS, POS, b, hp * grid_w + wp, (hp < grid_h) & (wp < grid_w),
                     pid_n * BLOCK_N + tl.arange(0, BLOCK_N), D, num_patches, prefix, pos_start, HAS_BIAS, HAS_POS)


def image_view(images: torch.Tensor, weight: torch.Tensor) -> Optional[torch.Tensor]:
    """The (B * C, Hp, Wp, p, p) view of ``images`` the descriptor reads, or None where this path
    does not apply (see the module docstring)."""
    batch, channels, height, width = images.shape  # (at least one whole patch: the caller returns early otherwise)
    patch = weight.shape[2]
    sb, sc, sh, sw = images.stride()
    if (images.dtype != weight.dtype or images.dtype not in TMA_DTYPES or sw != 1 or sb != channels * sc
            or patch * images.element_size() % 16):
        return None
    view = images.as_strided((batch * channels, height // patch, width // patch, patch, patch),
                             (sc, patch * sh, patch, sh, 1))
    return view if tma_usable(view) else None


def patch_block(grid_h: int, grid_w: int, block_m: int) -> tuple[int, int]:
    """(ROWS_H, ROWS_W): the block of block_m patches per program whose blocks cover the
    grid_h x grid_w map with the fewest padding patches (ties: the wider; ROWS_W <= 16)."""
    def covered(rows_w: int) -> int:
        return cdiv(grid_w, rows_w) * rows_w * cdiv(grid_h, block_m // rows_w) * (block_m // rows_w)

    rows_w = min((w for w in (16, 8, 4, 2, 1) if w <= block_m), key=lambda w: (covered(w), -w))
    return block_m // rows_w, rows_w


def forward(view: torch.Tensor, w: torch.Tensor, bias, cls_token, pos_embed, scale, shift, out: torch.Tensor,
            grid_h: int, grid_w: int, pos_start: int, tiles: dict, launch: dict) -> None:
    """Writes ``out`` (B, P + N, D) from the image view (image_view) and the (D, K) weight matrix."""
    channels_batch, _, _, patch, _ = view.shape
    batch, dim = out.shape[0], out.shape[2]
    rows_h, rows_w = patch_block(grid_h, grid_w, tiles["BLOCK_M"])
    ky = max(1, min(patch, tiles["BLOCK_K"] // patch))
    gemm_programs = batch * cdiv(grid_h, rows_h) * cdiv(grid_w, rows_w) * cdiv(dim, tiles["BLOCK_N"])
    cls_programs = cdiv(batch, rows_h * rows_w) if cls_token is not None else 0
    patch_embed_fwd_image_tma_kernel[(gemm_programs + cls_programs,)](
        descriptor(view, 1, rows_h, rows_w, ky, patch), descriptor(w, tiles["BLOCK_N"], ky * patch),
        bias, cls_token, pos_embed, scale, shift, out,
        dim, grid_h * grid_w, grid_h, grid_w, out.shape[1] - grid_h * grid_w, pos_start, gemm_programs, batch,
        PATCH=patch, CHANNELS=channels_batch // batch, NORMALIZE=scale is not None,
        HAS_BIAS=bias is not None, HAS_CLS=cls_token is not None, HAS_POS=pos_embed is not None,
        CLS_HAS_POS=bool(pos_start) and cls_token is not None, ROWS_H=rows_h, ROWS_W=rows_w, KY=ky,
        BLOCK_N=tiles["BLOCK_N"], **launch,
    )


def aot_configs():
    """ViT-B/16 at 224 (14 x 14 patches) and 384 (24 x 24), B = 256, 16-bit, with and without
    normalization, for the ahead-of-time sm_90 compile check."""
    from vtkernels.triton.patch_embed import _launch_args, launch_config

    for side in (224, 384):
        grid, patch, dim, batch = side // 16, 16, 768, 256
        tiles, launch = _launch_args(launch_config("fwd", torch.bfloat16, dim, 3 * patch * patch))
        rows_h, rows_w = patch_block(grid, grid, tiles["BLOCK_M"])
        ky = tiles["BLOCK_K"] // patch
        gemm_programs = batch * cdiv(grid, rows_h) * cdiv(grid, rows_w) * cdiv(dim, tiles["BLOCK_N"])
        values = {"D": dim, "num_patches": grid * grid, "grid_h": grid, "grid_w": grid, "prefix": 1,
                  "pos_start": 1, "gemm_programs": gemm_programs, "batch": batch}
        for dtype in ("bf16", "fp16"):
            for normalize in (False, True):
                sig = {"ID": f"tensordesc<{dtype}[1, {rows_h}, {rows_w}, {ky}, {patch}]>",
                       "WD": f"tensordesc<{dtype}[{tiles['BLOCK_N']}, {ky * patch}]>",
                       **{name: f"*{dtype}" for name in ("BIAS", "CLS", "POS")}, "SCALE": "*fp32", "SHIFT": "*fp32",
                       "OUT": f"*{dtype}", **{name: "i32" for name in values}}
                constexprs = {"PATCH": patch, "CHANNELS": 3, "NORMALIZE": normalize, "HAS_BIAS": True, "HAS_CLS": True,
                              "HAS_POS": True, "CLS_HAS_POS": True, "ROWS_H": rows_h, "ROWS_W": rows_w, "KY": ky,
                              "BLOCK_N": tiles["BLOCK_N"]}
                yield patch_embed_fwd_image_tma_kernel, sig, constexprs, launch, values
