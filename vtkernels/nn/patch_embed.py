"""Drop-in for timm's PatchEmbed on the fused kernel, and position-embedding resampling.

``PatchEmbed`` keeps timm's constructor, attributes and state_dict (``proj.weight``,
``proj.bias``: ``proj`` is an ``nn.Conv2d`` used only as the parameter holder, so initialization
and checkpoints match exactly). ``forward(images)`` returns what timm's does; ``forward_tokens``
also writes the cls token and adds the position embedding in the same kernel.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from vtkernels.ops.patch_embed import patch_embed
from vtkernels.reference.patch_embed import resample_pos_embed as _resample

OUTPUT_FORMATS = ("NCHW", "NHWC", "NCL", "NLC")


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def resample_pos_embed(pos_embed: torch.Tensor, new_grid, old_grid=None, num_prefix_tokens: int = 1,
                       antialias: bool = True) -> torch.Tensor:
    """Bicubic resampling of a (1, prefix + Ho*Wo, D) position embedding to ``new_grid``.

    ``antialias=True`` matches timm's ``resample_abs_pos_embed``; ``antialias=False`` matches HF
    transformers' ``interpolate_pos_encoding``. ``old_grid`` defaults to the square grid.
    """
    return _resample(pos_embed, new_grid, old_grid, num_prefix_tokens, antialias)


class PatchEmbed(nn.Module):
    """timm.layers.PatchEmbed on the fused kernel.

    Extra keyword arguments: ``image_mean`` / ``image_std`` (per channel, used for uint8 (B, H, W, C)
    input, which is normalized in the kernel), ``channels_last`` (float input is (B, H, W, C)),
    ``backend`` (forced vtkernels backend).
    """

    def __init__(self, img_size: Optional[Union[int, Sequence[int]]] = 224, patch_size: Union[int, Sequence[int]] = 16,
                 in_chans: int = 3, embed_dim: int = 768, norm_layer=None, flatten: bool = True,
                 output_fmt: Optional[str] = None, bias: bool = True, strict_img_size: bool = True,
                 dynamic_img_pad: bool = False, device=None, dtype=None, *, image_mean=None, image_std=None,
                 channels_last: bool = False, backend: Optional[str] = None):
        super().__init__()
        self.patch_size = _pair(patch_size)
        if self.patch_size[0] != self.patch_size[1]:
            raise ValueError(f"patch_size must be square, got {patch_size}")
        if img_size is None:
            self.img_size = self.grid_size = self.num_patches = None
        else:
            self.img_size = _pair(img_size)
            self.grid_size = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
            self.num_patches = self.grid_size[0] * self.grid_size[1]
        if output_fmt is not None:
            if output_fmt not in OUTPUT_FORMATS:
                raise ValueError(f"output_fmt must be one of {OUTPUT_FORMATS}, got {output_fmt!r}")
            self.flatten, self.output_fmt = False, output_fmt
        else:
            self.flatten, self.output_fmt = flatten, "NCHW"
        self.strict_img_size = strict_img_size
        self.dynamic_img_pad = dynamic_img_pad
        self.channels_last = channels_last
        self.backend = backend
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias,
                              device=device, dtype=dtype)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()
        for name, value in (("image_mean", image_mean), ("image_std", image_std)):
            tensor = None if value is None else torch.as_tensor(value, dtype=torch.float32, device=device)
            self.register_buffer(name, tensor, persistent=False)  # not in the state_dict, as in timm

    def feat_ratio(self, as_scalar: bool = True):
        return self.patch_size[0] if as_scalar else self.patch_size

    def dynamic_feat_size(self, img_size) -> tuple[int, int]:
        height, width = _pair(img_size)
        p = self.patch_size[0]
        if self.dynamic_img_pad:
            return -(-height // p), -(-width // p)
        return height // p, width // p

    def _hw(self, images: torch.Tensor) -> tuple[int, int]:
        nhwc = images.dtype == torch.uint8 or self.channels_last
        return (images.shape[1], images.shape[2]) if nhwc else (images.shape[2], images.shape[3])

    def _prepare(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.dtype]:
        """Checks the size like timm, pads when asked; returns (images, compute dtype)."""
        height, width = self._hw(images)
        p = self.patch_size[0]
        if self.img_size is not None:
            if self.strict_img_size and (height, width) != self.img_size:
                raise ValueError(f"images are {height}x{width}, the model expects {self.img_size[0]}x{self.img_size[1]}")
            if not self.strict_img_size and not self.dynamic_img_pad and (height % p or width % p):
                raise ValueError(f"images of {height}x{width} are not a multiple of patch size {p}")
        if self.dynamic_img_pad and (height % p or width % p):
            pad_h, pad_w = (-height) % p, (-width) % p
            nhwc = images.dtype == torch.uint8 or self.channels_last
            images = F.pad(images, (0, 0, 0, pad_w, 0, pad_h) if nhwc else (0, pad_w, 0, pad_h))
        device_type = images.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
        else:
            dtype = self.proj.weight.dtype if images.dtype == torch.uint8 else images.dtype
        if images.dtype != torch.uint8:
            images = images.to(dtype)
        return images, dtype

    def _embed(self, images, cls_token=None, pos_embed=None) -> torch.Tensor:
        images, dtype = self._prepare(images)
        cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731 - mixed precision parameters
        uint8 = images.dtype == torch.uint8
        return patch_embed(images, cast(self.proj.weight), cast(self.proj.bias), self.patch_size[0],
                           cast(cls_token), cast(pos_embed), self.image_mean if uint8 else None,
                           self.image_std if uint8 else None, self.channels_last, self.backend)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Like timm: (B, N, D) with ``flatten`` (default), else in ``output_fmt``; then ``norm``."""
        tokens = self._embed(images)
        batch, _, dim = tokens.shape
        grid_h, grid_w = self.dynamic_feat_size(self._hw(images))  # (padded up with dynamic_img_pad)
        if not self.flatten and self.output_fmt != "NLC":
            if self.output_fmt == "NCL":
                tokens = tokens.transpose(1, 2)
            else:
                tokens = tokens.view(batch, grid_h, grid_w, dim)
                if self.output_fmt == "NCHW":
                    tokens = tokens.permute(0, 3, 1, 2)
        return self.norm(tokens)

    def forward_tokens(self, images: torch.Tensor, cls_token: Optional[torch.Tensor] = None,
                       pos_embed: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, [1 +] N, D): patch tokens, cls token prepended, position embedding added, one kernel.

        ``pos_embed`` as in timm's ViT: (1, N + 1, D), or (1, N, D) for ``no_embed_class``.
        """
        if not isinstance(self.norm, nn.Identity) and (cls_token is not None or pos_embed is not None):
            raise ValueError("forward_tokens cannot fuse cls_token / pos_embed when the patch embedding has a norm_layer")
        return self.norm(self._embed(images, cls_token, pos_embed))
