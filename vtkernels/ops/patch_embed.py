"""Fused patch embedding: validation, dispatch, autograd.

The kernel backends run behind two ``torch.library`` custom ops, ``vtkernels::patch_embed_fwd``
and ``vtkernels::patch_embed_bwd``, tied together by ``register_autograd``. Inside them the
images are always the (B, C, H, W) view (an NHWC or uint8 tensor is passed as its permuted view,
no copy) and normalization is a per-channel fp32 affine ``x * scale[c] + shift[c]``. The reference
backend is plain PyTorch and gets its gradients from autograd.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from vtkernels._extension import extension_has, kernel_functions
from vtkernels.backend import OpDispatcher
from vtkernels.ops import checks
from vtkernels.ops.registration import backward_call, forward_call
from vtkernels.reference import patch_embed as reference

IMAGE_DTYPES = checks.FLOAT_DTYPES + (torch.uint8,)


def _kernel_refusals(backend: str, weight: Tensor, **_) -> list[str]:
    if backend == "cuda" and not extension_has("patch_embed_fwd"):
        return ["vtkernels._C was built without patch_embed; rebuild it (pip install -e .)"]
    if backend == "cuda" and weight.dtype == torch.float32:
        return ["the CUDA patch embedding runs fp16 / bf16 tensor-core MMAs only; float32 runs on Triton"]
    return []


dispatcher = OpDispatcher("patch_embed", gpu_preference=("triton", "cuda"), dtype_of="weight",
                          refusals=_kernel_refusals)


def _kernels(backend: str):
    """The backend's (forward, backward_images, backward_weight)."""
    return kernel_functions(backend, triton_module="vtkernels.triton.patch_embed",
                            triton=("forward", "backward_images", "backward_weight"),
                            cuda=("patch_embed_fwd", "patch_embed_bwd_images", "patch_embed_bwd_weight"))


def _num_patches(images: Tensor, weight: Tensor) -> int:
    return (images.shape[2] // weight.shape[2]) * (images.shape[3] // weight.shape[3])


@torch.library.custom_op("vtkernels::patch_embed_fwd", mutates_args=())
def patch_embed_fwd(images: Tensor, weight: Tensor, bias: Optional[Tensor], cls_token: Optional[Tensor],
                    pos_embed: Optional[Tensor], scale: Optional[Tensor], shift: Optional[Tensor],
                    backend: str) -> Tensor:
    """images (B, C, H, W) view; weight (D, C, p, p); bias, cls (D,); pos (N [+1], D); scale, shift
    fp32 (C,) or None. Returns tokens (B, [1 +] N, D)."""
    forward, _, _ = _kernels(backend)
    return forward(images, weight, bias, cls_token, pos_embed, scale, shift)


@patch_embed_fwd.register_fake
def _(images, weight, bias, cls_token, pos_embed, scale, shift, backend):
    prefix = int(cls_token is not None)
    return weight.new_empty(images.shape[0], prefix + _num_patches(images, weight), weight.shape[0])


@torch.library.custom_op("vtkernels::patch_embed_bwd", mutates_args=())
def patch_embed_bwd(grad_out: Tensor, images: Tensor, weight: Tensor, scale: Optional[Tensor],
                    shift: Optional[Tensor], needs_images: bool, needs_weight: bool, has_bias: bool,
                    has_cls: bool, pos_rows: int, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns d images, d weight, d bias, d cls, d pos; an empty tensor for each one not wanted."""
    _, backward_images, backward_weight = _kernels(backend)
    # Outputs may not alias each other: a fresh empty tensor for each one not wanted.
    d_images = backward_images(grad_out, images, weight, scale) if needs_images else weight.new_empty(0)
    d_weight = backward_weight(grad_out, images, weight, scale, shift) if needs_weight else weight.new_empty(0)
    d_bias, d_cls, d_pos = weight.new_empty(0), weight.new_empty(0), weight.new_empty(0)
    if has_bias or has_cls or pos_rows:
        # Batch sums of the token gradients: row 0 is the cls token's, the rest the patches'.
        per_token = grad_out.sum(0, dtype=torch.float32)
        prefix = grad_out.shape[1] - _num_patches(images, weight)
        if has_bias:
            d_bias = per_token[prefix:].sum(0).to(weight.dtype)
        if has_cls:
            d_cls = per_token[0].to(weight.dtype, copy=True)
        if pos_rows:
            d_pos = per_token[per_token.shape[0] - pos_rows:].to(weight.dtype, copy=True)
    return d_images, d_weight, d_bias, d_cls, d_pos


@patch_embed_bwd.register_fake
def _(grad_out, images, weight, scale, shift, needs_images, needs_weight, has_bias, has_cls, pos_rows, backend):
    dim = weight.shape[0]
    return (torch.empty_like(images) if needs_images else weight.new_empty(0),
            weight.new_empty(weight.shape) if needs_weight else weight.new_empty(0),
            weight.new_empty(dim if has_bias else 0),
            weight.new_empty(dim if has_cls else 0),
            weight.new_empty((pos_rows, dim) if pos_rows else (0,)))


call_patch_embed_bwd = backward_call(patch_embed_bwd)


def _setup_context(ctx, inputs, output):
    images, weight, bias, cls_token, pos_embed, scale, shift, backend = inputs
    ctx.save_for_backward(images, weight, scale, shift)
    ctx.backend = backend
    ctx.has_bias, ctx.has_cls = bias is not None, cls_token is not None
    ctx.pos_rows = 0 if pos_embed is None else pos_embed.shape[0]


def _backward(ctx, grad_out):
    images, weight, scale, shift = ctx.saved_tensors
    wants = ctx.needs_input_grad
    d_images, d_weight, d_bias, d_cls, d_pos = call_patch_embed_bwd(
        grad_out.contiguous(), images, weight, scale, shift, wants[0], wants[1],
        ctx.has_bias and wants[2], ctx.has_cls and wants[3], ctx.pos_rows if wants[4] else 0, ctx.backend)
    return (d_images if wants[0] else None, d_weight if wants[1] else None, d_bias if wants[2] else None,
            d_cls if wants[3] else None, d_pos if wants[4] else None, None, None, None)


call_patch_embed_fwd = forward_call(patch_embed_fwd, _backward, _setup_context)


def _validate(images, weight, bias, patch_size, cls_token, pos_embed, mean, std, channels_last) -> int:
    """Checks every argument; returns the number of patches N."""
    checks.check_tensor("images", images, dtypes=IMAGE_DTYPES, ndim=4)
    checks.check_tensor("weight", weight, ndim=4)
    patch = patch_size if isinstance(patch_size, int) else tuple(patch_size)
    if isinstance(patch, tuple):
        if len(patch) != 2 or patch[0] != patch[1]:
            raise ValueError(f"patch_size must be an int or a square (p, p), got {patch_size}")
        patch = patch[0]
    if patch <= 0 or tuple(weight.shape[2:]) != (patch, patch):
        raise ValueError(f"weight must have shape (D, C, {patch}, {patch}) for patch_size={patch_size}, "
                         f"got {tuple(weight.shape)}")
    dim, channels = weight.shape[:2]
    nchw = reference.images_as_nchw(images, channels_last)
    if nchw.shape[1] != channels:
        layout = "(B, H, W, C)" if images.dtype == torch.uint8 or channels_last else "(B, C, H, W)"
        raise ValueError(f"images {tuple(images.shape)} read as {layout} have {nchw.shape[1]} channels "
                         f"but weight expects {channels}")
    height, width = nchw.shape[2:]
    if height < patch or width < patch:
        raise ValueError(f"images of {height}x{width} pixels are smaller than patch_size={patch}")
    if images.dtype != torch.uint8:
        checks.check_same_dtype("weight", weight, images=images)
    for name, t in (("bias", bias), ("cls_token", cls_token), ("pos_embed", pos_embed)):
        if t is not None:
            checks.check_tensor(name, t)
    checks.check_same_dtype("weight", weight, bias=bias, cls_token=cls_token, pos_embed=pos_embed)
    checks.check_same_device("weight", weight, images=images, bias=bias, cls_token=cls_token, pos_embed=pos_embed,
                             mean=mean, std=std)
    checks.check_shape("bias", bias, (dim,))
    if cls_token is not None and (cls_token.numel() != dim or cls_token.shape[-1] != dim):
        raise ValueError(f"cls_token must have shape (D,), (1, D) or (1, 1, D) with D={dim}, got {tuple(cls_token.shape)}")
    num_patches = (height // patch) * (width // patch)
    if pos_embed is not None:
        rows = (num_patches, num_patches + 1) if cls_token is not None else (num_patches,)
        lead_ok = pos_embed.dim() == 2 or (pos_embed.dim() == 3 and pos_embed.shape[0] == 1)
        if not lead_ok or pos_embed.shape[-1] != dim or pos_embed.shape[-2] not in rows:
            raise ValueError(f"pos_embed must have shape (1, R, {dim}) or (R, {dim}) with R in {rows}, "
                             f"got {tuple(pos_embed.shape)}")
    for name, t in (("mean", mean), ("std", std)):
        if t is not None:
            checks.check_tensor(name, t)
            checks.check_shape(name, t, (channels,))
            if t.requires_grad:
                raise ValueError(f"{name} is a normalization constant and must not require grad")
    return num_patches


def _affine(images: Tensor, mean: Optional[Tensor], std: Optional[Tensor], channels: int):
    """Per-channel fp32 (scale, shift) with normalized = pixel * scale + shift, or (None, None)."""
    if images.dtype != torch.uint8 and mean is None and std is None:
        return None, None
    f32 = dict(dtype=torch.float32, device=images.device)
    scale = 1.0 / std.float() if std is not None else torch.ones(channels, **f32)
    shift = -mean.float() * scale if mean is not None else torch.zeros(channels, **f32)
    if images.dtype == torch.uint8:
        scale = scale / 255
    return scale.contiguous(), shift.contiguous()


def patch_embed(images: Tensor, weight: Tensor, bias: Optional[Tensor], patch_size, cls_token: Optional[Tensor] = None,
                pos_embed: Optional[Tensor] = None, mean: Optional[Tensor] = None, std: Optional[Tensor] = None,
                channels_last: bool = False, backend: Optional[str] = None) -> Tensor:
    """Conv2d(stride = kernel = patch_size) + flatten + [cls] + [pos] in one kernel: (B, [1 +] N, D).

    images: (B, C, H, W) float, (B, H, W, C) float with ``channels_last``, or (B, H, W, C) uint8
    (normalized as ``(u8 / 255 - mean) / std``; float images are normalized as ``(x - mean) / std``
    when mean / std are given). weight: Conv2d layout (D, C, p, p); bias (D,) or None; cls_token
    (1, 1, D) / (D,) or None; pos_embed (1, N [+ 1], D) like timm (N rows: the cls token gets no
    position). Pixels past the last full patch are ignored, as Conv2d does. Output dtype is
    ``weight.dtype``. Gradients flow to float images, weight, bias, cls_token and pos_embed.
    """
    num_patches = _validate(images, weight, bias, patch_size, cls_token, pos_embed, mean, std, channels_last)
    chosen = dispatcher.choose(weight.device, backend, weight=weight, images=images,
                               channels_last=channels_last, num_patches=num_patches)
    if chosen == "reference":
        return reference.patch_embed(images, weight, bias, weight.shape[2], cls_token, pos_embed, mean, std,
                                     channels_last)
    dim = weight.shape[0]
    scale, shift = _affine(images, mean, std, weight.shape[1])
    return call_patch_embed_fwd(
        reference.images_as_nchw(images, channels_last), weight, None if bias is None else bias.contiguous(),
        None if cls_token is None else cls_token.reshape(dim).contiguous(),
        None if pos_embed is None else pos_embed.reshape(-1, dim).contiguous(),
        scale, shift, chosen)


def selfcheck_cases(backend: str = "triton", dtypes=(torch.float32, torch.float16)):
    """Small kernel-vs-reference checks (forward and every gradient) for `python -m vtkernels selfcheck`."""
    from vtkernels.testing import assert_close, grads, upcast, check_device

    def check(patch, layout, dtype):
        device = check_device()
        dim, (height, width) = 32, (32, 48)
        num_patches = (height // patch) * (width // patch)

        def rand(*size, grad=True):
            return (torch.randn(size, device=device) * 0.2).to(dtype).requires_grad_(grad)

        mean = std = None
        if layout == "uint8":
            images = torch.randint(0, 256, (2, height, width, 3), device=device, dtype=torch.uint8)
            mean, std = torch.rand(3, device=device), torch.rand(3, device=device) + 0.5
        else:
            images = rand(2, height, width, 3) if layout == "nhwc" else rand(2, 3, height, width)
        params = [rand(dim, 3, patch, patch), rand(dim), rand(1, 1, dim), rand(1, num_patches + 1, dim)]
        args = dict(patch_size=patch, mean=mean, std=std, channels_last=layout == "nhwc")
        out = patch_embed(images, *params[:2], cls_token=params[2], pos_embed=params[3], backend=backend, **args)
        up = upcast(images, *params)
        up[0] = images if layout == "uint8" else up[0]
        ref = patch_embed(up[0], *up[1:3], cls_token=up[3], pos_embed=up[4], backend="reference", **args)
        cot = torch.randn(out.shape, device=device)
        wanted = [images if images.dtype != torch.uint8 else None, *params]
        ours = grads(out, wanted, cot)
        theirs = grads(ref, [up[0] if wanted[0] is not None else None, *up[1:]], cot)
        kept = [i for i, t in enumerate(wanted) if t is not None]
        tol = None if dtype == torch.float32 else 2e-2
        assert_close([out] + [ours[i] for i in kept], [ref] + [theirs[i] for i in kept], dtype, tol=tol)

    for patch, layout in ((16, "nchw"), (4, "nhwc"), (16, "uint8")):
        for dtype in dtypes:
            yield f"patch {patch} {layout} {dtype}", (lambda p=patch, lay=layout, d=dtype: check(p, lay, d))
