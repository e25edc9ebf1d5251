"""Swin Transformer (Liu et al. 2021; timm ``SwinTransformer``, HF ``SwinModel``) on vtkernels.

Fused patch embedding (+ LayerNorm) -> stages of shifted-window blocks (the roll, partition,
relative-position bias, shift mask and reverse all inside :func:`vtkernels.window_attention`)
with a fused patch merging (2x2 gather + LayerNorm(4C) in one kernel) opening every stage
after the first -> final LayerNorm -> global average pool -> classifier. Activations stay
(B, H, W, C) throughout. Names and state_dict follow timm (``patch_embed``, ``layers.i.
downsample``, ``layers.i.blocks.j.{norm1, attn, norm2, mlp}``, ``norm``, ``head.fc``).

Inside a stage the residual adds are fused into the next LayerNorm, as in
:mod:`vtkernels.models.blocks`: each block returns ``(branch, stream)`` whose sum is its output
and the next block's ``norm1(branch, residual=stream)`` adds them while normalizing. The stage's
last sum feeds the next patch merging (or the final norm, fused there too). Stochastic depth
(``drop_path_rate``) scales each branch per sample before its add, so training keeps the fusion.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch
from torch import nn

from vtkernels.models.blocks import GradCheckpointing, drop_path_rates, run_split, set_backend
from vtkernels.nn import LayerNorm, PatchEmbed
from vtkernels.nn.drop_path import drop_path
from vtkernels.nn.swin import PatchMerging, SwinTransformerBlock


@dataclasses.dataclass(frozen=True)
class SwinConfig:
    img_size: int = 224
    patch_size: int = 4
    in_chans: int = 3
    embed_dim: int = 96
    depths: Sequence[int] = (2, 2, 6, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    num_classes: int = 1000
    eps: float = 1e-5
    pad_first: bool = False  # where the map is not a multiple of the window: timm rolls then pads, HF pads first
    drop_path_rate: float = 0.0  # stochastic depth in training, timm's schedule over all blocks of all stages

    @property
    def num_features(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)


SIZES = {  # swin_{tiny,small,base}_patch4_window7_224
    "T": SwinConfig(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "S": SwinConfig(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "B": SwinConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}


class SwinBlock(SwinTransformerBlock):
    """timm's SwinTransformerBlock (same state_dict) with the residual adds fused into the norms."""

    grad_checkpointing = False  # see blocks.set_grad_checkpointing

    def forward_split(self, stream: torch.Tensor, branch: Optional[torch.Tensor]):
        y, stream = (self.norm1(stream), stream) if branch is None else self.norm1(branch, residual=stream)
        y, stream = self.norm2(drop_path(self.attn(y), self.drop_path, self.training), residual=stream)
        return drop_path(self.mlp(y), self.drop_path, self.training), stream


class SwinStage(nn.Module):
    def __init__(self, dim: int, out_dim: int, resolution: tuple[int, int], num_heads: int, config: SwinConfig,
                 downsample: bool, drop_paths: Sequence[float], backend: Optional[str] = None):
        super().__init__()
        self.downsample = PatchMerging(dim, out_dim, eps=config.eps, backend=backend) if downsample else nn.Identity()
        shift = config.window_size // 2
        self.blocks = nn.ModuleList(
            SwinBlock(out_dim, resolution, num_heads, window_size=config.window_size,
                      shift_size=0 if i % 2 == 0 else shift, mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias,
                      drop_path=rate, norm_layer=lambda d, **kw: LayerNorm(d, eps=config.eps, **kw), backend=backend)
            for i, rate in enumerate(drop_paths))
        for block in self.blocks:
            block.attn.pad_first = config.pad_first

    def forward_split(self, x: torch.Tensor):
        """(B, H, W, C) -> (branch, stream) of the stage output (branch None for depth 0)."""
        stream, branch = self.downsample(x), None
        for block in self.blocks:
            branch, stream = run_split(block, stream, branch)
        return branch, stream


class Swin(GradCheckpointing, nn.Module):
    """Swin image classifier (``num_classes=0``: features only, timm's ``forward_features``)."""

    def __init__(self, config: SwinConfig = SIZES["T"], backend: Optional[str] = None):
        super().__init__()
        if len(config.depths) != len(config.num_heads):
            raise ValueError(f"depths {tuple(config.depths)} and num_heads {tuple(config.num_heads)} differ in length")
        self.config = config
        self.patch_embed = PatchEmbed(config.img_size, config.patch_size, config.in_chans, config.embed_dim,
                                      norm_layer=lambda d: LayerNorm(d, eps=config.eps, backend=backend),
                                      output_fmt="NHWC", strict_img_size=False, backend=backend)
        grid = config.img_size // config.patch_size
        stages, dim = [], config.embed_dim
        rates = drop_path_rates(config.drop_path_rate, sum(config.depths))
        for i, (depth, heads) in enumerate(zip(config.depths, config.num_heads)):
            out_dim = config.embed_dim * 2 ** i
            resolution = (-(-grid // 2 ** i),) * 2  # ceil: merging pads odd maps
            stage_rates, rates = rates[:depth], rates[depth:]
            stages.append(SwinStage(dim, out_dim, resolution, heads, config, i > 0, stage_rates, backend=backend))
            dim = out_dim
        self.layers = nn.Sequential(*stages)
        self.norm = LayerNorm(config.num_features, eps=config.eps, backend=backend)
        self.head = nn.Module()
        self.head.fc = nn.Linear(config.num_features, config.num_classes) if config.num_classes else nn.Identity()

    @classmethod
    def from_size(cls, size: str, **overrides) -> "Swin":
        if size not in SIZES:
            raise ValueError(f"size must be one of {tuple(SIZES)}, got {size!r}")
        backend = overrides.pop("backend", None)
        return cls(dataclasses.replace(SIZES[size], **overrides), backend=backend)

    def set_backend(self, backend: Optional[str]) -> None:
        set_backend(self, backend)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W), already normalized -> (B, h, w, C) after the final norm."""
        branch, stream = None, self.patch_embed(images)
        for stage in self.layers:
            x = stream if branch is None else stream + branch  # the merging's gather needs the whole sum
            branch, stream = stage.forward_split(x)
        return self.norm(stream) if branch is None else self.norm(branch, residual=stream)[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head.fc(self.forward_features(images).mean(dim=(1, 2)))

    # -- weights ----------------------------------------------------------------------------
    @classmethod
    def from_timm(cls, timm_model: nn.Module, backend: Optional[str] = None) -> "Swin":
        """From a timm ``SwinTransformer`` (v1, square window and patch, LayerNorm)."""
        from vtkernels.models.swin_convert import config_from_timm, state_dict_from_timm

        model = cls(config_from_timm(timm_model), backend=backend)
        return _load(model, state_dict_from_timm(timm_model.state_dict()), timm_model)

    @classmethod
    def from_hf(cls, hf_model: nn.Module, backend: Optional[str] = None) -> "Swin":
        """From HF ``SwinModel`` or ``SwinForImageClassification``."""
        from vtkernels.models.swin_convert import config_from_hf, state_dict_from_hf

        has_head = hasattr(hf_model, "classifier") and isinstance(hf_model.classifier, nn.Linear)
        model = cls(config_from_hf(hf_model.config, has_head), backend=backend)
        return _load(model, state_dict_from_hf(hf_model.state_dict(), len(model.config.depths)), hf_model)


def _load(model: Swin, state: dict, source: nn.Module) -> Swin:
    reference = next(source.parameters())
    model.to(device=reference.device, dtype=reference.dtype)
    model.load_state_dict(state)
    return model.train(source.training)
