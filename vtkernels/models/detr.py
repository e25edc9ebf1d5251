"""DETR (Carion et al. 2020; HF ``DetrModel`` / ``DetrForObjectDetection``) on vtkernels.

backbone -> 1x1 input projection -> encoder (self-attention over the feature map, sine
positions added to queries and keys only, key-padding mask from the pixel mask) -> decoder
(100 learned object queries: self-attention, cross-attention to the encoder memory) -> class
and box heads. Every layer is post-norm: ``LN(x + sublayer(x))``, done by
``vtkernels.layer_norm(sublayer_out, residual=x)`` in one pass (the add fused into the norm).
Module and parameter names follow HF, so a DETR state_dict loads after dropping ``model.``.

The encoder memory plus its positions (the cross-attention keys' input) is computed once and
shared by every decoder layer. The backbone is pluggable: any module mapping images (B, 3, H, W)
to a feature map (B, C, h, w), or to ``(feature_map, mask)`` with a bool (B, h, w) mask that is
True on real pixels; HF's ResNet backbone (from ``from_hf``) is one. Dropout is not modelled.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Optional

import torch
from torch import nn

import vtkernels
from vtkernels.models.blocks import GradCheckpointing, Mlp, run_checkpointed, set_backend
from vtkernels.nn import LayerNorm


@dataclasses.dataclass(frozen=True)
class DetrConfig:
    d_model: int = 256
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_heads: int = 8
    decoder_heads: int = 8
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    num_queries: int = 100
    num_labels: int = 91          # COCO ids; the head adds the "no object" class
    backbone_channels: int = 2048  # ResNet-50 stage 4
    eps: float = 1e-5


@dataclasses.dataclass
class DetrOutput:
    logits: torch.Tensor                    # (B, Q, num_labels + 1)
    pred_boxes: torch.Tensor                # (B, Q, 4) cxcywh in [0, 1]
    last_hidden_state: torch.Tensor         # (B, Q, d_model), after the decoder's final norm
    encoder_last_hidden_state: torch.Tensor  # (B, h*w, d_model)
    intermediate_hidden_states: Optional[torch.Tensor] = None  # (layers, B, Q, d) with intermediate=True


def sine_position_embedding(valid: torch.Tensor, num_features: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's normalized 2-D sine embedding: bool (B, h, w) valid mask -> (B, h*w, 2 * num_features) fp32.

    Row and column coordinates are cumulative counts of valid pixels, scaled to [0, 2 pi];
    channels are [y features, x features], each interleaving sin and cos.
    """
    mask = valid.to(torch.float32)
    y = mask.cumsum(1)
    x = mask.cumsum(2)
    eps, scale = 1e-6, 2 * math.pi
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_features, device=valid.device, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_features)
    pos_x = x[..., None] / dim_t
    pos_y = y[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).flatten(1, 2)


class DetrAttention(nn.Module):
    """Multi-head attention whose queries, keys and values come from three inputs (HF names)."""

    def __init__(self, dim: int, num_heads: int, backend: Optional[str] = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"d_model {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)
        self.backend = backend

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim)

    def forward(self, query_in, key_in, value_in, key_padding_mask: Optional[torch.Tensor] = None):
        q = self._heads(self.q_proj(query_in))
        k = self._heads(self.k_proj(key_in))
        v = self._heads(self.v_proj(value_in))
        out = vtkernels.attention(q, k, v, key_padding_mask=key_padding_mask, layout="bnhd", backend=self.backend)
        return self.o_proj(out.flatten(2))


class DetrEncoderLayer(nn.Module):
    grad_checkpointing = False  # see blocks.set_grad_checkpointing

    def __init__(self, config: DetrConfig, backend: Optional[str] = None):
        super().__init__()
        d = config.d_model
        self.self_attn = DetrAttention(d, config.encoder_heads, backend)
        self.self_attn_layer_norm = LayerNorm(d, eps=config.eps, backend=backend)
        self.mlp = Mlp(d, config.encoder_ffn_dim, act="relu", backend=backend)
        self.final_layer_norm = LayerNorm(d, eps=config.eps, backend=backend)

    def forward(self, x, pos, key_padding_mask):
        with_pos = x + pos
        x = self.self_attn_layer_norm(self.self_attn(with_pos, with_pos, x, key_padding_mask), residual=x)[0]
        return self.final_layer_norm(self.mlp(x), residual=x)[0]


class DetrDecoderLayer(nn.Module):
    grad_checkpointing = False  # see blocks.set_grad_checkpointing

    def __init__(self, config: DetrConfig, backend: Optional[str] = None):
        super().__init__()
        d = config.d_model
        self.self_attn = DetrAttention(d, config.decoder_heads, backend)
        self.self_attn_layer_norm = LayerNorm(d, eps=config.eps, backend=backend)
        self.encoder_attn = DetrAttention(d, config.decoder_heads, backend)
        self.encoder_attn_layer_norm = LayerNorm(d, eps=config.eps, backend=backend)
        self.mlp = Mlp(d, config.decoder_ffn_dim, act="relu", backend=backend)
        self.final_layer_norm = LayerNorm(d, eps=config.eps, backend=backend)

    def forward(self, x, query_pos, memory, memory_with_pos, memory_padding_mask):
        with_pos = x + query_pos
        x = self.self_attn_layer_norm(self.self_attn(with_pos, with_pos, x), residual=x)[0]
        cross = self.encoder_attn(x + query_pos, memory_with_pos, memory, memory_padding_mask)
        x = self.encoder_attn_layer_norm(cross, residual=x)[0]
        return self.final_layer_norm(self.mlp(x), residual=x)[0]


class DetrEncoder(nn.Module):
    def __init__(self, config: DetrConfig, backend: Optional[str] = None):
        super().__init__()
        self.layers = nn.ModuleList(DetrEncoderLayer(config, backend) for _ in range(config.encoder_layers))

    def forward(self, x, pos, key_padding_mask):
        for layer in self.layers:
            x = run_checkpointed(layer, layer, x, pos, key_padding_mask)
        return x


class DetrDecoder(nn.Module):
    def __init__(self, config: DetrConfig, backend: Optional[str] = None):
        super().__init__()
        self.layers = nn.ModuleList(DetrDecoderLayer(config, backend) for _ in range(config.decoder_layers))
        self.layernorm = LayerNorm(config.d_model, eps=config.eps, backend=backend)

    def forward(self, query_pos, memory, memory_pos, memory_padding_mask, intermediate: bool = False):
        x = torch.zeros_like(query_pos)
        memory_with_pos = memory + memory_pos  # the same cross-attention key input for every layer
        states = []
        for layer in self.layers:
            x = run_checkpointed(layer, layer, x, query_pos, memory, memory_with_pos, memory_padding_mask)
            if intermediate:
                states.append(self.layernorm(x))
        return self.layernorm(x), (torch.stack(states) if intermediate else None)


class BoxHead(nn.Module):
    """3-layer MLP with ReLUs, sigmoid on the 4 outputs (HF ``DetrMLPPredictionHead``)."""

    def __init__(self, dim: int, num_layers: int = 3):
        super().__init__()
        sizes = [dim] * num_layers + [4]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x).sigmoid()


def fold_conv_batchnorm(module: nn.Module) -> int:
    """Fold ``normalization`` into ``convolution`` wherever a submodule has both (HF ResNet's
    conv layers and shortcuts) and the norm is frozen (HF's FrozenBatchNorm2d) or an eval-mode
    BatchNorm2d: ``BN(conv(x)) = conv'(x)`` with ``W' = W * s``, ``b' = beta - mean * s (+ b * s)``,
    ``s = gamma / sqrt(var + eps)``. Returns the number of norms folded."""
    folded = 0
    for sub in module.modules():
        conv, norm = getattr(sub, "convolution", None), getattr(sub, "normalization", None)
        if not isinstance(conv, nn.Conv2d) or norm is None:
            continue
        if isinstance(norm, nn.BatchNorm2d):
            if norm.training:
                continue
            eps = norm.eps
        elif type(norm).__name__.endswith("FrozenBatchNorm2d"):
            eps = 1e-5  # HF's DetrFrozenBatchNorm2d
        else:
            continue
        dtype = conv.weight.dtype
        f = lambda t: t.to(torch.promote_types(dtype, torch.float32))  # noqa: E731 - fold in >= fp32
        scale = f(norm.weight) * torch.rsqrt(f(norm.running_var) + eps)
        bias = f(norm.bias) - f(norm.running_mean) * scale
        if conv.bias is not None:
            bias = bias + f(conv.bias) * scale
        conv.weight.copy_((f(conv.weight) * scale[:, None, None, None]).to(dtype))
        conv.bias = nn.Parameter(bias.to(dtype), requires_grad=conv.weight.requires_grad)
        sub.normalization = nn.Identity()
        folded += 1
    return folded


class DETR(GradCheckpointing, nn.Module):
    """DETR for object detection (``head=False``: the bare encoder-decoder, HF ``DetrModel``)."""

    def __init__(self, backbone: nn.Module, config: DetrConfig = DetrConfig(), head: bool = True,
                 backend: Optional[str] = None):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.input_projection = nn.Conv2d(config.backbone_channels, config.d_model, kernel_size=1)
        self.query_position_embeddings = nn.Embedding(config.num_queries, config.d_model)
        self.encoder = DetrEncoder(config, backend)
        self.decoder = DetrDecoder(config, backend)
        self.class_labels_classifier = nn.Linear(config.d_model, config.num_labels + 1) if head else None
        self.bbox_predictor = BoxHead(config.d_model) if head else None

    def set_backend(self, backend: Optional[str]) -> None:
        set_backend(self, backend)

    @torch.no_grad()
    def fuse_backbone_for_inference(self, channels_last: bool = True) -> "DETR":
        """Fold each frozen BatchNorm into the conv before it and, optionally, switch the backbone
        to channels_last (cuDNN's fast NHWC convolutions). Same outputs up to rounding; meant for
        inference (the folded convs no longer load an HF state_dict)."""
        fold_conv_batchnorm(self.backbone)
        self.channels_last = channels_last
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        return self

    def features(self, pixel_values: torch.Tensor, pixel_mask: Optional[torch.Tensor]):
        """Backbone feature map (B, C, h, w) and its bool valid mask (B, h, w), or None if all valid."""
        if getattr(self, "channels_last", False):
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        out = self.backbone(pixel_values)
        if isinstance(out, (tuple, list)):
            return out[0], out[1].bool()
        if hasattr(out, "feature_maps"):  # HF backbones
            out = out.feature_maps[-1]
        if pixel_mask is None:
            return out, None
        # nearest downsampling of the pixel mask, as HF does
        return out, nn.functional.interpolate(pixel_mask[None].float(), size=out.shape[-2:]).bool()[0]

    def forward(self, pixel_values: torch.Tensor, pixel_mask: Optional[torch.Tensor] = None,
                intermediate: bool = False) -> DetrOutput:
        """``pixel_mask`` (B, H, W): 1 on real pixels, 0 on padding (HF convention)."""
        feature_map, valid = self.features(pixel_values, pixel_mask)
        x = self.input_projection(feature_map).flatten(2).transpose(1, 2)  # (B, h*w, d)
        padding = None if valid is None else ~valid.flatten(1)  # True marks keys to ignore
        if valid is None:
            valid = torch.ones(x.shape[0], *feature_map.shape[-2:], dtype=torch.bool, device=x.device)
        pos = sine_position_embedding(valid, self.config.d_model // 2).to(x.dtype)
        memory = self.encoder(x, pos, padding)
        query_pos = self.query_position_embeddings.weight[None].expand(x.shape[0], -1, -1)
        hidden, states = self.decoder(query_pos, memory, pos, padding, intermediate)
        if self.class_labels_classifier is None:
            logits = boxes = None
        else:
            logits, boxes = self.class_labels_classifier(hidden), self.bbox_predictor(hidden)
        return DetrOutput(logits, boxes, hidden, memory, states)

    @classmethod
    def from_hf(cls, hf_model: nn.Module, backend: Optional[str] = None) -> "DETR":
        """From ``DetrForObjectDetection`` or ``DetrModel`` (HF ResNet backbone, copied with its frozen BN)."""
        from vtkernels.models.detr_convert import config_from_hf, state_dict_from_hf

        core = hf_model.model if hasattr(hf_model, "class_labels_classifier") else hf_model
        if core.config.position_embedding_type != "sine":
            raise ValueError("only position_embedding_type='sine' is supported")
        config = config_from_hf(core.config, core.input_projection.in_channels)
        model = cls(copy.deepcopy(core.backbone.model), config, head=core is not hf_model, backend=backend)
        reference = next(hf_model.parameters())
        model.to(device=reference.device, dtype=reference.dtype)
        model.load_state_dict(state_dict_from_hf(hf_model.state_dict(), has_head=core is not hf_model))
        return model.train(hf_model.training)
