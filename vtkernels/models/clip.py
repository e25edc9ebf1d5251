"""CLIP (OpenAI / HF semantics) on the fused vtkernels ops.

* Vision tower: fused patch embedding (+ class token + position embedding), ``ln_pre``, pre-norm
  blocks, ``ln_post`` on the class token only, ``proj`` (no bias).
* Text tower: token + position embedding, causal blocks with QuickGELU, ``ln_final`` on the
  end-of-text token only, ``proj``. The EOT token is found as OpenAI and HF do: the argmax of the
  token ids (the EOT id is the largest in the vocabulary), or, when ``eos_token_id`` is set (HF
  configs whose ``eos_token_id != 2``), the first position holding that id.
* ``logit_scale`` (log of the temperature), the fused contrastive loss (the n x n logits never
  exist in memory), ``encode_image`` / ``encode_text`` and zero-shot classification.

Blocks carry the residual stream split in two so that every residual add runs inside the next
LayerNorm (see :mod:`vtkernels.models.blocks`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from vtkernels.models import convert
from vtkernels.models.blocks import (
    GradCheckpointing, conv_fan_in_init, final_norm, init_linear_and_norms, make_blocks, run_blocks, run_blocks_to_row,
    set_backend,
)
import vtkernels
from vtkernels.nn import LayerNorm, PatchEmbed

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass
class CLIPVisionConfig:
    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: Optional[int] = None      # default 4 * width
    act: str = "quick_gelu"
    eps: float = 1e-5
    mean: tuple = OPENAI_CLIP_MEAN     # normalization for uint8 (B, H, W, C) images
    std: tuple = OPENAI_CLIP_STD

    def __post_init__(self):
        self.mlp_dim = self.mlp_dim or 4 * self.width
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        self.mean, self.std = tuple(self.mean), tuple(self.std)


@dataclasses.dataclass
class CLIPTextConfig:
    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_dim: Optional[int] = None
    act: str = "quick_gelu"
    eps: float = 1e-5
    eos_token_id: Optional[int] = None  # None: the EOT token is the argmax of the ids (OpenAI)

    def __post_init__(self):
        self.mlp_dim = self.mlp_dim or 4 * self.width


@dataclasses.dataclass
class CLIPConfig:
    embed_dim: int = 512
    vision: CLIPVisionConfig = dataclasses.field(default_factory=CLIPVisionConfig)
    text: CLIPTextConfig = dataclasses.field(default_factory=CLIPTextConfig)
    logit_scale_init: float = math.log(1 / 0.07)

    def __post_init__(self):
        if isinstance(self.vision, dict):
            self.vision = CLIPVisionConfig(**self.vision)
        if isinstance(self.text, dict):
            self.text = CLIPTextConfig(**self.text)

    @classmethod
    def preset(cls, name: str) -> "CLIPConfig":
        """OpenAI's ``"B/32"``, ``"B/16"``, ``"L/14"``."""
        presets = {
            "B/32": (512, dict(patch_size=32, width=768, layers=12, heads=12), dict(width=512, heads=8)),
            "B/16": (512, dict(patch_size=16, width=768, layers=12, heads=12), dict(width=512, heads=8)),
            "L/14": (768, dict(patch_size=14, width=1024, layers=24, heads=16), dict(width=768, heads=12)),
        }
        if name not in presets:
            raise ValueError(f"unknown CLIP preset {name!r}; known: {sorted(presets)}")
        embed_dim, vision, text = presets[name]
        return cls(embed_dim, CLIPVisionConfig(**vision), CLIPTextConfig(**text))


class CLIPVisionTower(nn.Module):
    """Images -> projected features: fused patch embedding, ln_pre, blocks, ln_post on CLS, proj."""

    def __init__(self, c: CLIPVisionConfig, embed_dim: int):
        super().__init__()
        self.config = c
        self.patch_embed = PatchEmbed(img_size=c.image_size, patch_size=c.patch_size, in_chans=c.in_chans,
                                      embed_dim=c.width, bias=False, image_mean=c.mean, image_std=c.std)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, (c.image_size // c.patch_size) ** 2 + 1, c.width))
        self.ln_pre = LayerNorm(c.width, eps=c.eps)
        self.blocks = make_blocks(c.layers, c.width, c.heads, c.mlp_dim, act=c.act, eps=c.eps)
        self.ln_post = LayerNorm(c.width, eps=c.eps)
        self.proj = nn.Linear(c.width, embed_dim, bias=False)

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4:
            raise ValueError(f"images must be (B, C, H, W) (or uint8 (B, H, W, C)), got shape {tuple(images.shape)}")
        x = self.patch_embed.forward_tokens(images, self.cls_token, self.pos_embed)  # checks the image size
        return self.ln_pre(x)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Every token before ``ln_post`` (B, 1 + N, width): HF's vision ``last_hidden_state``."""
        return final_norm(*run_blocks(self.blocks, self._tokens(images)), None)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The CLS token's projected features (the last block computes that row only)."""
        return self.proj(final_norm(*run_blocks_to_row(self.blocks, self._tokens(images), 0), self.ln_post))


class CLIPTextTower(nn.Module):
    """Token ids -> projected features: causal blocks, ln_final on the EOT token, proj."""

    def __init__(self, c: CLIPTextConfig, embed_dim: int):
        super().__init__()
        self.config = c
        self.token_embedding = nn.Embedding(c.vocab_size, c.width)
        self.pos_embed = nn.Parameter(torch.zeros(c.context_length, c.width))
        self.blocks = make_blocks(c.layers, c.width, c.heads, c.mlp_dim, act=c.act, eps=c.eps, causal=True)
        self.ln_final = LayerNorm(c.width, eps=c.eps)
        self.proj = nn.Linear(c.width, embed_dim, bias=False)

    def _tokens(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]):
        """(token embeddings + positions, key padding mask or None)."""
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an integer tensor (B, T), got {input_ids.dtype} "
                             f"{tuple(input_ids.shape)}")
        length = input_ids.shape[1]
        if length > self.config.context_length:
            raise ValueError(f"input_ids has {length} tokens, more than context_length {self.config.context_length}")
        key_padding_mask = None
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask must have input_ids' shape {tuple(input_ids.shape)}, "
                                 f"got {tuple(attention_mask.shape)}")
            key_padding_mask = attention_mask == 0  # HF: 1 = attend, 0 = padding
        return self.token_embedding(input_ids) + self.pos_embed[:length], key_padding_mask

    def eot_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.config.eos_token_id is None:
            return input_ids.argmax(dim=-1)
        return (input_ids == self.config.eos_token_id).int().argmax(dim=-1)

    def forward_features(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Every token after ``ln_final`` (B, T, width): HF's text ``last_hidden_state``."""
        return final_norm(*run_blocks(self.blocks, *self._tokens(input_ids, attention_mask)), self.ln_final)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The EOT token's projected features (the last block computes that row only)."""
        x, key_padding_mask = self._tokens(input_ids, attention_mask)
        pooled = run_blocks_to_row(self.blocks, x, self.eot_positions(input_ids), key_padding_mask)
        return self.proj(final_norm(*pooled, self.ln_final))


@dataclasses.dataclass
class CLIPOutput:
    image_embeds: torch.Tensor      # L2-normalized (B_img, E)
    text_embeds: torch.Tensor       # L2-normalized (B_txt, E)
    logits_per_image: torch.Tensor  # logit_scale.exp() * image_embeds @ text_embeds.T
    logits_per_text: torch.Tensor


class CLIP(GradCheckpointing, nn.Module):
    """CLIP from a :class:`CLIPConfig` or an OpenAI preset name (``"B/32"``, ``"B/16"``, ``"L/14"``)."""

    def __init__(self, config: Union[CLIPConfig, str] = "B/16", backend: Optional[str] = None):
        super().__init__()
        self.config = config = CLIPConfig.preset(config) if isinstance(config, str) else config
        self.visual = CLIPVisionTower(config.vision, config.embed_dim)
        self.text = CLIPTextTower(config.text, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        self.reset_parameters()
        self.backend = backend
        set_backend(self, backend)

    def reset_parameters(self) -> None:
        init_linear_and_norms(self)
        conv_fan_in_init(self.visual.patch_embed.proj)
        width_v, width_t = self.config.vision.width, self.config.text.width
        nn.init.normal_(self.visual.cls_token, std=width_v**-0.5)
        nn.init.normal_(self.visual.pos_embed, std=width_v**-0.5)
        nn.init.normal_(self.text.token_embedding.weight, std=0.02)
        nn.init.normal_(self.text.pos_embed, std=0.01)
        nn.init.normal_(self.visual.proj.weight, std=width_v**-0.5)
        nn.init.normal_(self.text.proj.weight, std=width_t**-0.5)

    def set_backend(self, backend: Optional[str]) -> "CLIP":
        set_backend(self, backend)
        return self

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Image features (B, embed_dim); ``images`` float (B, C, H, W) or uint8 (B, H, W, C)."""
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                    normalize: bool = False) -> torch.Tensor:
        """Text features (B, embed_dim) from token ids (B, T) (OpenAI tokenizer: EOT has the largest id)."""
        features = self.text(input_ids, attention_mask)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: Optional[torch.Tensor] = None) -> CLIPOutput:
        """Normalized embeddings and the scaled similarity logits (materialized: for inference)."""
        image_embeds = self.encode_image(images, normalize=True)
        text_embeds = self.encode_text(input_ids, attention_mask, normalize=True)
        logits_per_image = self.logit_scale.exp() * image_embeds @ text_embeds.t()
        return CLIPOutput(image_embeds, text_embeds, logits_per_image, logits_per_image.t())

    def loss(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
             max_scale: float = 100.0, return_stats: bool = False):
        """Symmetric contrastive loss of the pairs (image i, text i), fused: the logits never exist.

        The scale is ``min(logit_scale.exp(), max_scale)`` (open_clip clamps the same way). Under
        torch.distributed each rank passes its local pairs (see :func:`vtkernels.clip_loss`).
        """
        image_features = self.encode_image(images)
        text_features = self.encode_text(input_ids, attention_mask)
        return vtkernels.clip_loss(image_features, text_features, self.logit_scale, max_scale=max_scale,
                                   return_stats=return_stats, backend=self.backend)

    @torch.no_grad()
    def zero_shot_classifier(self, class_input_ids: torch.Tensor,
                             attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Class weights (embed_dim, C) from prompts (C, T), or (C, K, T) for K templates per class:
        each prompt embedding normalized, averaged over the templates, normalized again."""
        ids = class_input_ids if class_input_ids.dim() == 3 else class_input_ids[:, None]
        mask = None if attention_mask is None else attention_mask.reshape(ids.shape)
        classes, templates, length = ids.shape
        flat_mask = None if mask is None else mask.reshape(-1, length)
        embeds = self.encode_text(ids.reshape(-1, length), flat_mask, normalize=True)
        embeds = embeds.reshape(classes, templates, -1).mean(dim=1)
        return F.normalize(embeds, dim=-1).t()

    def zero_shot_logits(self, images: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
        """Class logits (B, C) = logit_scale.exp() * normalized image features @ classifier."""
        image_embeds = self.encode_image(images, normalize=True)
        return self.logit_scale.exp() * image_embeds @ classifier.to(image_embeds.dtype)

    # --- weights -------------------------------------------------------------------------------

    @classmethod
    def from_hf(cls, model: nn.Module, backend: Optional[str] = None) -> "CLIP":
        """From HF transformers' ``CLIPModel``."""
        hf = model.config
        hv, ht = hf.vision_config, hf.text_config
        vision = CLIPVisionConfig(image_size=hv.image_size, patch_size=hv.patch_size, in_chans=hv.num_channels,
                                  width=hv.hidden_size, layers=hv.num_hidden_layers, heads=hv.num_attention_heads,
                                  mlp_dim=hv.intermediate_size, act=convert.hf_activation(hv.hidden_act),
                                  eps=hv.layer_norm_eps)
        # HF keeps the argmax rule for configs whose eos_token_id is the legacy 2 (see CLIPTextModel).
        eos = None if ht.eos_token_id == 2 else ht.eos_token_id
        text = CLIPTextConfig(vocab_size=ht.vocab_size, context_length=ht.max_position_embeddings,
                              width=ht.hidden_size, layers=ht.num_hidden_layers, heads=ht.num_attention_heads,
                              mlp_dim=ht.intermediate_size, act=convert.hf_activation(ht.hidden_act),
                              eps=ht.layer_norm_eps, eos_token_id=eos)
        ours = cls(CLIPConfig(hf.projection_dim, vision, text), backend=backend)
        state = model.state_dict()
        converted = {
            **convert.rename(convert.strip_prefix(state, "vision_model."), convert.HF_CLIP_VISION_RULES, "visual."),
            **convert.rename(convert.strip_prefix(state, "text_model."), convert.HF_CLIP_TEXT_RULES, "text."),
            "visual.proj.weight": state["visual_projection.weight"],
            "text.proj.weight": state["text_projection.weight"],
            "logit_scale": state["logit_scale"],
        }
        convert.load_converted(ours, convert.fuse_qkv(converted))
        like = next(model.parameters())
        return ours.to(device=like.device, dtype=like.dtype)

    def save(self, path: str) -> None:
        torch.save({"config": dataclasses.asdict(self.config), "state_dict": self.state_dict()}, path)

    @classmethod
    def load(cls, path: str, backend: Optional[str] = None, map_location=None) -> "CLIP":
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        model = cls(CLIPConfig(**checkpoint["config"]), backend=backend)
        model.load_state_dict(checkpoint["state_dict"])
        return model
