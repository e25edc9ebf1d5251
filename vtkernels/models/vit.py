"""Vision Transformer (ViT-B/16, L/16, H/14 and custom configs) on the fused vtkernels ops.

State-dict names are timm's (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N...``,
``norm``, ``fc_norm``, ``head``), so :meth:`ViT.from_timm` is mostly a copy; :meth:`ViT.from_hf`
converts HF transformers' ``ViTModel`` / ``ViTForImageClassification``.

Every op runs on the backend chosen by ``backend=`` (or ``vtkernels.use_backend``): ``"reference"``
gives the plain-PyTorch model that the tests compare with HF and timm, ``"triton"`` / ``"cuda"``
the fused kernels. Stochastic depth (``drop_path_rate``) and layer scale (``init_values``) are
timm's; dropout is not implemented.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Optional, Union

import torch
from torch import nn

from vtkernels.models import convert
from vtkernels.models.blocks import (
    GradCheckpointing, LayerScale, conv_fan_in_init, final_norm, init_linear_and_norms, make_blocks, run_blocks,
    run_blocks_to_row, set_backend,
)
from vtkernels.nn import LayerNorm, PatchEmbed, resample_pos_embed
from vtkernels.reference.activation import ACTIVATIONS

IMAGENET_INCEPTION_MEAN = (0.5, 0.5, 0.5)  # timm's ViT default normalization
IMAGENET_INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclasses.dataclass
class ViTConfig:
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000            # 0: no head, forward() returns the pooled features
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: Optional[int] = None      # default 4 * embed_dim
    qkv_bias: bool = True
    patch_bias: bool = True
    eps: float = 1e-6                  # timm 1e-6; HF google/vit-* checkpoints use 1e-12
    act: str = "gelu"                  # "gelu" (erf), "gelu_tanh", "quick_gelu"
    class_token: bool = True
    no_embed_class: bool = False       # timm (DeiT III): the position embedding covers the patches only
    reg_tokens: int = 0                # timm's register tokens after the class token (needs no_embed_class)
    global_pool: str = "token"         # "token" (CLS) or "avg" (mean of patch tokens)
    fc_norm: bool = False              # timm: norm after pooling (then the token norm is skipped)
    pre_norm: bool = False             # timm's norm_pre (CLIP's ln_pre)
    pooler_dim: int = 0                # > 0: HF ViTModel's pooler, tanh(Linear(CLS token)) of this width
    drop_path_rate: float = 0.0        # stochastic depth in training, timm's schedule (blocks.drop_path_rates)
    init_values: Optional[float] = None  # timm's layer scale: a learned gamma per channel, this initial value
    mean: tuple = IMAGENET_INCEPTION_MEAN  # normalization for uint8 (B, H, W, C) images
    std: tuple = IMAGENET_INCEPTION_STD

    def __post_init__(self):
        if self.mlp_dim is None:
            self.mlp_dim = 4 * self.embed_dim
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {self.global_pool!r}")
        if self.global_pool == "token" and not self.class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if self.pooler_dim and (self.global_pool != "token" or self.fc_norm):
            raise ValueError("pooler_dim (HF's pooler of the CLS token) needs global_pool='token' and fc_norm=False")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {ACTIVATIONS}, got {self.act!r}")
        if self.reg_tokens and not self.no_embed_class:
            raise ValueError("reg_tokens need no_embed_class=True (register tokens with position rows are not "
                             "implemented)")
        self.mean, self.std = tuple(self.mean), tuple(self.std)

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_prefix_tokens(self) -> int:
        return (1 if self.class_token else 0) + self.reg_tokens

    @property
    def num_pos_prefix_tokens(self) -> int:
        """The prefix tokens that have a row of the position embedding."""
        return 0 if self.no_embed_class else self.num_prefix_tokens

    @classmethod
    def preset(cls, name: str, **overrides) -> "ViTConfig":
        """``"B/16"``, ``"L/16"``, ``"H/14"`` (also ``"S/16"``, ``"Ti/16"``, ``"B/32"``) with overrides."""
        if name not in VIT_PRESETS:
            raise ValueError(f"unknown ViT preset {name!r}; known: {sorted(VIT_PRESETS)}")
        return cls(**{**VIT_PRESETS[name], **overrides})


VIT_PRESETS = {
    "Ti/16": dict(embed_dim=192, depth=12, num_heads=3, patch_size=16),
    "S/16": dict(embed_dim=384, depth=12, num_heads=6, patch_size=16),
    "B/16": dict(embed_dim=768, depth=12, num_heads=12, patch_size=16),
    "B/32": dict(embed_dim=768, depth=12, num_heads=12, patch_size=32),
    "L/16": dict(embed_dim=1024, depth=24, num_heads=16, patch_size=16),
    "H/14": dict(embed_dim=1280, depth=32, num_heads=16, patch_size=14),
}


class ViT(GradCheckpointing, nn.Module):
    """ViT classifier: fused patch embedding, pre-norm blocks with fused residual + LayerNorm."""

    def __init__(self, config: Union[ViTConfig, str] = "B/16", backend: Optional[str] = None, **overrides):
        super().__init__()
        if isinstance(config, str):
            config = ViTConfig.preset(config, **overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = c = config
        # strict_img_size=False: embed() checks the size itself (and resamples pos_embed when asked)
        self.patch_embed = PatchEmbed(img_size=c.img_size, patch_size=c.patch_size, in_chans=c.in_chans,
                                      embed_dim=c.embed_dim, bias=c.patch_bias, strict_img_size=False,
                                      image_mean=c.mean, image_std=c.std)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim)) if c.class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, c.reg_tokens, c.embed_dim)) if c.reg_tokens else None
        self.pos_embed = nn.Parameter(torch.zeros(1, c.grid_size**2 + c.num_pos_prefix_tokens, c.embed_dim))
        self.norm_pre = LayerNorm(c.embed_dim, eps=c.eps) if c.pre_norm else None
        self.blocks = make_blocks(c.depth, c.embed_dim, c.num_heads, c.mlp_dim, qkv_bias=c.qkv_bias, act=c.act,
                                  eps=c.eps, drop_path_rate=c.drop_path_rate, init_values=c.init_values)
        self.norm = None if c.fc_norm else LayerNorm(c.embed_dim, eps=c.eps)
        self.fc_norm = LayerNorm(c.embed_dim, eps=c.eps) if c.fc_norm else None
        self.pooler = nn.Linear(c.embed_dim, c.pooler_dim) if c.pooler_dim else None
        self.head = nn.Linear(c.pooler_dim or c.embed_dim, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.reset_parameters()
        self.backend = backend
        set_backend(self, backend)

    def reset_parameters(self) -> None:
        init_linear_and_norms(self)
        conv_fan_in_init(self.patch_embed.proj)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for token in (self.cls_token, self.reg_token):
            if token is not None:
                nn.init.normal_(token, std=1e-6)
        for block in self.blocks:
            for layer_scale in (block.ls1, block.ls2):
                if isinstance(layer_scale, LayerScale):
                    layer_scale.reset_parameters()

    def set_backend(self, backend: Optional[str]) -> "ViT":
        """Run every op on ``backend`` (None: automatic); returns self."""
        set_backend(self, backend)
        return self

    # --- forward -------------------------------------------------------------------------------

    def embed(self, images: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Tokens (B, prefix + N, D): fused patch projection + cls token + position embedding.

        Float images are cast to the weights' dtype (or the autocast dtype); uint8 (B, H, W, C)
        images are normalized inside the kernel with ``config.mean`` / ``config.std``.
        """
        c = self.config
        height, width = _image_hw(images)
        pos_embed = self.pos_embed
        if (height, width) != (c.img_size, c.img_size):
            if not interpolate_pos_encoding:
                raise ValueError(f"images are {height}x{width} but the model takes {c.img_size}x{c.img_size}; "
                                 "pass interpolate_pos_encoding=True to resample the position embedding")
            new_grid = (height // c.patch_size, width // c.patch_size)
            # antialias=False: the bicubic resampling HF's interpolate_pos_encoding uses
            pos_embed = resample_pos_embed(pos_embed, new_grid, num_prefix_tokens=c.num_pos_prefix_tokens,
                                           antialias=False)
        x = self.patch_embed.forward_tokens(images, self.cls_token, pos_embed)
        if self.reg_token is not None:  # timm's order: class token, registers, patches (one copy of the tokens)
            split = 1 if self.cls_token is not None else 0
            x = torch.cat([x[:, :split], self.reg_token.to(x.dtype).expand(x.shape[0], -1, -1), x[:, split:]], dim=1)
        return self.norm_pre(x) if self.norm_pre is not None else x

    def forward_features(self, images: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Every token after the final norm (B, prefix + N, D): HF's ``last_hidden_state``."""
        branch, stream = run_blocks(self.blocks, self.embed(images, interpolate_pos_encoding))
        return final_norm(branch, stream, self.norm)

    def forward_pooled(self, images: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Pooled features before the head (B, D). With CLS pooling the last block computes only the
        CLS row (every token's keys and values) and only that row is normalized; with
        ``config.pooler_dim``, HF's ``pooler_output`` (B, pooler_dim)."""
        tokens = self.embed(images, interpolate_pos_encoding)
        if self.config.global_pool == "token":
            pooled = final_norm(*run_blocks_to_row(self.blocks, tokens, 0), self.norm)
        else:
            tokens = final_norm(*run_blocks(self.blocks, tokens), self.norm)
            pooled = tokens[:, self.config.num_prefix_tokens:].mean(dim=1)
        if self.pooler is not None:
            return torch.tanh(self.pooler(pooled))
        return self.fc_norm(pooled) if self.fc_norm is not None else pooled

    def forward(self, images: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Class logits (B, num_classes), or the pooled features when ``num_classes == 0``.

        ``images``: float (B, C, H, W), or uint8 (B, H, W, C) normalized with ``config.mean/std``.
        """
        return self.head(self.forward_pooled(images, interpolate_pos_encoding))

    # --- weights -------------------------------------------------------------------------------

    @classmethod
    def from_hf(cls, model: nn.Module, backend: Optional[str] = None) -> "ViT":
        """From HF ``ViTModel`` (no head: forward returns its ``pooler_output`` when it has a pooler,
        else the normalized CLS token) or ``ViTForImageClassification``."""
        hf = model.config
        image_size, patch_size = _square(hf.image_size, "image_size"), _square(hf.patch_size, "patch_size")
        has_head = hasattr(model, "classifier") and isinstance(model.classifier, nn.Linear)
        pooler = getattr(model, "pooler", None)
        if pooler is not None and getattr(hf, "pooler_act", "tanh") != "tanh":
            raise ValueError(f"ViT.from_hf: the pooler's activation must be tanh, got {hf.pooler_act!r}")
        config = ViTConfig(img_size=image_size, patch_size=patch_size, in_chans=hf.num_channels,
                           num_classes=hf.num_labels if has_head else 0, embed_dim=hf.hidden_size,
                           depth=hf.num_hidden_layers, num_heads=hf.num_attention_heads,
                           mlp_dim=hf.intermediate_size, qkv_bias=getattr(hf, "qkv_bias", True),
                           eps=hf.layer_norm_eps, act=convert.hf_activation(hf.hidden_act),
                           pooler_dim=0 if pooler is None else pooler.dense.out_features,
                           mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        state = model.state_dict()
        if any(key.startswith("vit.") for key in state):
            head = {key: value for key, value in state.items() if key.startswith("classifier.")}
            state = {**convert.strip_prefix(state, "vit."), **head}
        ours = cls(config, backend=backend)
        convert.load_converted(ours, convert.fuse_qkv(convert.rename(state, convert.HF_VIT_RULES)))
        return _like(ours, model)

    @classmethod
    def from_timm(cls, model: nn.Module, backend: Optional[str] = None) -> "ViT":
        """From a timm ``VisionTransformer`` (with or without layer scale, ``no_embed_class`` as in
        DeiT III, and register tokens as in DINOv2-reg; no q/k norm). Its drop-path rate is carried; its dropout
        rates (proj_drop, attn_drop, pos_drop) are not (dropout is not implemented)."""
        ours = cls(timm_vit_config(model), backend=backend)
        convert.load_converted(ours, model.state_dict())
        return _like(ours, model)

    def save(self, path: str) -> None:
        """Our own checkpoint: the config and the state_dict (load with :meth:`ViT.load`)."""
        torch.save({"config": dataclasses.asdict(self.config), "state_dict": self.state_dict()}, path)

    @classmethod
    def load(cls, path: str, backend: Optional[str] = None, map_location=None) -> "ViT":
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        model = cls(ViTConfig(**checkpoint["config"]), backend=backend)
        model.load_state_dict(checkpoint["state_dict"])
        return model


def _like(ours: ViT, source: nn.Module) -> ViT:
    """``ours`` on the source model's device and dtype, in its train / eval mode (drop path differs)."""
    like = next(source.parameters())
    return ours.to(device=like.device, dtype=like.dtype).train(source.training)


def _image_hw(images: torch.Tensor) -> tuple[int, int]:
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W) (or uint8 (B, H, W, C)), got shape {tuple(images.shape)}")
    return (images.shape[1], images.shape[2]) if images.dtype == torch.uint8 else (images.shape[2], images.shape[3])


def _square(size, name: str) -> int:
    if isinstance(size, int):
        return size
    size = tuple(size)
    if len(size) != 2 or size[0] != size[1]:
        raise ValueError(f"only square {name} is supported, got {size}")
    return size[0]


def timm_vit_config(model: nn.Module) -> ViTConfig:
    """Our config for a timm ``VisionTransformer``; refuses the features we do not implement."""
    block = model.blocks[0]
    pool = getattr(model, "global_pool", "token")
    unsupported = {
        "register tokens with position rows (no_embed_class=False)": getattr(model, "reg_token", None) is not None
        and not getattr(model, "no_embed_class", False),
        "dynamic_img_size": getattr(model, "dynamic_img_size", False),
        "pool_include_prefix": getattr(model, "pool_include_prefix", False),
        "q/k norm": not isinstance(getattr(block.attn, "q_norm", nn.Identity()), nn.Identity),
        "attention scale_norm": not isinstance(getattr(block.attn, "norm", nn.Identity()), nn.Identity),
        "MLP norm": not isinstance(getattr(block.mlp, "norm", nn.Identity()), nn.Identity),
        "patch_embed norm": not isinstance(getattr(model.patch_embed, "norm", nn.Identity()), nn.Identity),
        f"global_pool={pool!r}": pool not in ("token", "avg"),
        f"block type {type(block).__name__}": type(block).__name__ != "Block",
    }
    refused = [name for name, present in unsupported.items() if present]
    if refused:
        raise ValueError(f"timm model uses features vtkernels' ViT does not implement: {', '.join(refused)}")
    dropout = sorted({m.p for m in model.modules() if isinstance(m, nn.Dropout) and m.p > 0})
    if dropout:  # (only training differs: dropout is off in eval)
        warnings.warn(f"ViT.from_timm: the timm model's dropout (p = {', '.join(map(str, dropout))}) is not carried; "
                      "vtkernels' ViT has no dropout (its drop-path rate is carried)", stacklevel=3)
    has_fc_norm = not isinstance(getattr(model, "fc_norm", nn.Identity()), nn.Identity)
    return ViTConfig(
        img_size=_square(model.patch_embed.img_size, "img_size"),
        patch_size=_square(model.patch_embed.patch_size, "patch_size"),
        in_chans=model.patch_embed.proj.in_channels, num_classes=model.num_classes, embed_dim=model.embed_dim,
        depth=len(model.blocks), num_heads=block.attn.num_heads, mlp_dim=block.mlp.fc1.out_features,
        qkv_bias=block.attn.qkv.bias is not None, patch_bias=model.patch_embed.proj.bias is not None,
        eps=block.norm1.eps, act=convert.module_activation(block.mlp.act), class_token=model.cls_token is not None,
        no_embed_class=getattr(model, "no_embed_class", False),
        reg_tokens=0 if getattr(model, "reg_token", None) is None else model.reg_token.shape[1],
        global_pool=model.global_pool, fc_norm=has_fc_norm,
        pre_norm=not isinstance(getattr(model, "norm_pre", nn.Identity()), nn.Identity),
        drop_path_rate=getattr(model.blocks[-1].drop_path1, "drop_prob", 0.0),  # (timm's schedule ends at the rate)
        init_values=_layer_scale_init(block))


def _layer_scale_init(block: nn.Module) -> Optional[float]:
    """A timm block's layer scale as our config's ``init_values``: any non-zero value builds the
    ``gamma`` parameters, which the converted state_dict then fills."""
    gamma = getattr(getattr(block, "ls1", None), "gamma", None)
    return None if gamma is None else (float(gamma.detach().flatten()[0]) or 1.0)
