"""optimize()'s patches for vision models: HF transformers ViT, CLIP and Swin, and timm's ViT,
CLIP and Swin modules (attention, window attention, MLP, QuickGELU, patch merging, patch
embedding). The list is in the package docstring (vtkernels/patch/__init__.py)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

import vtkernels
from vtkernels.nn import LayerNorm
from vtkernels.nn.mlp import activation_name, fused_mlp
from vtkernels.nn.norm import _cast
from vtkernels.patch.common import (add_and_norm, forward_takes, from_package, is_plain_layer_norm,
                                    projected_attention, square_patch)
from vtkernels.reference.window_attention import effective_window

# Families whose modules are ViT's or CLIP's under another name (transformers keeps them "Copied
# from" ViT / CLIP): DeiT, ViT-MSN, I-JEPA, ViT-MAE and DINOv2 (with registers) have ViT's
# attention, MLP and patch projection; SigLIP / SigLIP 2 have CLIP's attention, MLP and encoder
# layer, MetaCLIP 2 all of CLIP's modules. The ViT-like embeddings differ (distillation token,
# registers, mask token): only their patch projection is fused. SigLIP's are CLIP's without the
# class token (fused whole); SigLIP 2 embeds flattened patches with a Linear (left as it is).
_VIT_LIKE = ("ViT", "DeiT", "ViTMSN", "IJepa", "ViTMAE")
_DINOV2 = ("Dinov2", "Dinov2WithRegisters")
_CLIP_LIKE = ("CLIP", "MetaClip2", "Siglip", "Siglip2")
HF_ATTENTION_CLASSES = tuple(f"{name}Attention" for name in (*_VIT_LIKE, *_DINOV2, *_CLIP_LIKE))
HF_EMBEDDING_CLASSES = ("ViTEmbeddings", "CLIPVisionEmbeddings", "MetaClip2VisionEmbeddings",
                        "SiglipVisionEmbeddings")
HF_MLP_CLASSES = (*(f"{name}MLP" for name in (*_VIT_LIKE, *_DINOV2, *_CLIP_LIKE)), "SwinMLP", "DetrMLP")


# --- detection --------------------------------------------------------------------------------

def _is_hf_attention(module: nn.Module) -> bool:
    return (type(module).__name__ in HF_ATTENTION_CLASSES and from_package(module, "transformers")
            and all(hasattr(module, n) for n in ("q_proj", "k_proj", "v_proj", "head_dim"))
            and forward_takes(module, "hidden_states", "attention_mask"))


def _is_hf_embeddings(module: nn.Module) -> bool:
    return type(module).__name__ in HF_EMBEDDING_CLASSES and from_package(module, "transformers")


def _is_hf_swin_layer(module: nn.Module) -> bool:
    return (type(module).__name__ == "SwinLayer" and from_package(module, "transformers")
            and forward_takes(module, "hidden_states", "input_dimensions", "always_partition"))


# HF pre-norm encoder layers: class -> (first norm, attention, second norm, the layer scales of the
# attention and MLP branches or None) attribute names (and an mlp). DINOv2 scales each branch
# (``x * lambda``) before its residual add.
HF_ENCODER_LAYERS = {**{f"{name}Layer": ("layernorm_before", "attention", "layernorm_after", None)
                        for name in _VIT_LIKE},
                     **{f"{name}EncoderLayer": ("layer_norm1", "self_attn", "layer_norm2", None)
                        for name in _CLIP_LIKE},
                     **{f"{name}Layer": ("norm1", "attention", "norm2", ("layer_scale1", "layer_scale2"))
                        for name in _DINOV2}}


def _is_hf_encoder_layer(module: nn.Module) -> bool:
    names = HF_ENCODER_LAYERS.get(type(module).__name__)
    return (names is not None and from_package(module, "transformers")
            and all(hasattr(module, n) for n in (*names[:3], *(names[3] or ()), "mlp"))
            and forward_takes(module, "hidden_states", "attention_mask"))


def _is_timm_attention(module: nn.Module) -> bool:
    return (type(module).__name__ == "Attention" and from_package(module, "timm")
            and all(hasattr(module, n) for n in ("qkv", "proj", "num_heads")))


def _is_timm_block(module: nn.Module) -> bool:
    """timm's pre-norm transformer ``Block`` (ViT, DeiT, CLIP towers, ...): norms, attention, layer
    scales and drop paths under timm's names, called with ``attn_mask``."""
    return (type(module).__name__ == "Block" and from_package(module, "timm")
            and all(hasattr(module, n) for n in ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2",
                                                 "drop_path2"))
            and forward_takes(module, "x", "attn_mask", optional=("is_causal",)))  # (is_causal: newer timm)


def _is_timm_swin_block(module: nn.Module) -> bool:
    attn = getattr(module, "attn", None)
    return (type(module).__name__ == "SwinTransformerBlock" and from_package(module, "timm")
            and all(hasattr(module, n) for n in ("_attn", "norm1", "norm2", "mlp", "drop_path1", "drop_path2",
                                                 "window_size", "shift_size", "input_resolution"))
            and all(hasattr(attn, n) for n in ("qkv", "proj", "relative_position_bias_table", "num_heads", "scale")))


def _is_timm_mlp(module: nn.Module) -> bool:
    """timm's Mlp with Linear layers, no hidden norm and an activation vtkernels.mlp has."""
    return (type(module).__name__ == "Mlp" and from_package(module, "timm")
            and type(getattr(module, "fc1", None)) is nn.Linear and type(getattr(module, "fc2", None)) is nn.Linear
            and isinstance(getattr(module, "norm", nn.Identity()), nn.Identity)
            and activation_name(getattr(module, "act", None)) is not None)


def _is_hf_mlp(module: nn.Module) -> bool:
    """HF's fc1 -> activation_fn -> fc2 MLPs of CLIP, ViT, Swin and DETR (transformers 5.x)."""
    return (type(module).__name__ in HF_MLP_CLASSES and from_package(module, "transformers")
            and forward_takes(module, "hidden_states")
            and type(getattr(module, "fc1", None)) is nn.Linear and type(getattr(module, "fc2", None)) is nn.Linear
            and activation_name(getattr(module, "activation_fn", None)) is not None)


def _is_quick_gelu(module: nn.Module) -> bool:
    return ((type(module).__name__ == "QuickGELUActivation" and from_package(module, "transformers"))
            or (type(module).__name__ == "QuickGELU" and from_package(module, "timm")))


def _is_timm_patch_merging(module: nn.Module) -> bool:
    return (type(module).__name__ == "PatchMerging" and from_package(module, "timm")
            and isinstance(getattr(module, "reduction", None), nn.Linear) and hasattr(module, "norm"))


def _is_hf_patch_merging(module: nn.Module) -> bool:
    return (type(module).__name__ == "SwinPatchMerging" and from_package(module, "transformers")
            and isinstance(getattr(module, "reduction", None), nn.Linear) and hasattr(module, "norm")
            and forward_takes(module, "input_feature", "input_dimensions"))


# The patch projections of the ViT-like families, whose embeddings are not ViT's (ViT's own is fused
# with its class token and positions by the embeddings patch): a Conv2d, flattened to (B, N, D).
HF_PATCH_EMBEDDING_CLASSES = tuple(f"{name}PatchEmbeddings" for name in (*_VIT_LIKE[1:], *_DINOV2))


def _is_hf_patch_embeddings(module: nn.Module) -> bool:
    return (type(module).__name__ in HF_PATCH_EMBEDDING_CLASSES and from_package(module, "transformers")
            and isinstance(getattr(module, "projection", None), nn.Conv2d) and forward_takes(module, "pixel_values"))


def _is_hf_swin_patch_embeddings(module: nn.Module) -> bool:
    return (type(module).__name__ == "SwinPatchEmbeddings" and from_package(module, "transformers")
            and isinstance(getattr(module, "projection", None), nn.Conv2d) and forward_takes(module, "pixel_values"))


def _timm_output_format(module: nn.Module) -> Optional[str]:
    """"NLC" for a flattened timm PatchEmbed, else its output_fmt ("NHWC" in Swin, "NCHW")."""
    if getattr(module, "flatten", False):
        return "NLC"
    fmt = getattr(module, "output_fmt", None)
    return getattr(fmt, "value", fmt)


def _is_timm_patch_embed(module: nn.Module) -> bool:
    return (type(module).__name__ == "PatchEmbed" and from_package(module, "timm")
            and _timm_output_format(module) in ("NLC", "NHWC")
            and isinstance(getattr(module, "proj", None), nn.Conv2d) and not getattr(module, "dynamic_img_pad", False))


# --- attention ----------------------------------------------------------------------------------

# HF attentions that take their causal rule from themselves only (their forward drops **kwargs).
_OWN_CAUSAL_RULE = ("SiglipAttention", "Siglip2Attention")


def _hf_attention_forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, **kwargs):
    """HF ViT / CLIP self-attention on vtkernels.attention; returns (output, None) like HF."""
    own = getattr(self, "is_causal", False)
    causal = bool(own if type(self).__name__ in _OWN_CAUSAL_RULE else kwargs.get("is_causal", own))
    out = projected_attention(self, hidden_states, hidden_states, hidden_states, attention_mask, causal, kwargs)
    if out is None:
        return self._vtkernels_original_forward(hidden_states, attention_mask, **kwargs)
    return out, None


def _hf_encoder_layer_forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                              **kwargs):
    """HF ViT / CLIP / DINOv2 encoder layer with the attention residual added inside the second
    norm (one pass: vtkernels.nn.LayerNorm with ``residual``); dropout or drop path in training
    takes HF's path."""
    dropout = getattr(self, "dropout", None)  # ViT's hidden dropout (CLIP has none)
    drop_path = getattr(self, "drop_path", None)  # DINOv2's stochastic depth (an Identity at rate 0)
    if self.training and ((dropout is not None and dropout.p > 0)
                          or (drop_path is not None and not isinstance(drop_path, nn.Identity))):
        return self._vtkernels_original_forward(hidden_states, attention_mask, **kwargs)
    *modules, scales = HF_ENCODER_LAYERS[type(self).__name__]
    first_norm, attention, second_norm = (getattr(self, name) for name in modules)
    scale_attention, scale_mlp = (getattr(self, name) for name in scales) if scales else (None, None)
    branch, _ = attention(first_norm(hidden_states), attention_mask, **kwargs)
    branch = branch if scale_attention is None else scale_attention(branch)
    normed, hidden_states = add_and_norm(second_norm, branch, hidden_states)
    branch = self.mlp(normed)
    return hidden_states + (branch if scale_mlp is None else scale_mlp(branch))


def _timm_block_forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, **kwargs):
    """timm Block with the (layer-scaled) attention residual added inside norm2 (one pass); drop
    path in training takes timm's forward."""
    if self.training and not all(isinstance(path, nn.Identity) for path in (self.drop_path1, self.drop_path2)):
        return self._vtkernels_original_forward(x, attn_mask=attn_mask, **kwargs)
    branch = self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, **kwargs))
    normed, x = add_and_norm(self.norm2, branch, x)
    return x + self.ls2(self.mlp(normed))


def _timm_attention_forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, **kwargs):
    """timm Attention on vtkernels.attention (q/k norms, scale_norm and the output gate kept as they are)."""
    attn_drop = getattr(getattr(self, "attn_drop", None), "p", 0.0)
    causal = kwargs.get("is_causal", False)  # newer timm passes is_causal= (a bool) on every call
    others = [name for name in kwargs if name != "is_causal"]
    if attn_mask is not None or others or not isinstance(causal, bool) or (self.training and attn_drop > 0):
        return self._vtkernels_original_forward(x, attn_mask=attn_mask, **kwargs)
    gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None  # timm's gated=True
    batch, tokens, dim = x.shape
    head_dim = getattr(self, "head_dim", dim // self.num_heads)
    qkv = self.qkv(x).view(batch, tokens, 3, self.num_heads, head_dim)
    scale = getattr(self, "scale", head_dim**-0.5)
    q_norm, k_norm = getattr(self, "q_norm", None), getattr(self, "k_norm", None)
    if all(norm is None or isinstance(norm, nn.Identity) for norm in (q_norm, k_norm)):
        out = vtkernels.attention_qkv(qkv, causal=causal, scale=scale, backend=self._vtkernels_backend)
    else:
        q, k, v = qkv.unbind(2)  # each (B, N, H, d)
        q = q_norm(q) if q_norm is not None else q
        k = k_norm(k) if k_norm is not None else k
        out = vtkernels.attention(q, k, v, causal=causal, scale=scale, layout="bnhd", backend=self._vtkernels_backend)
    out = out.reshape(batch, tokens, -1)
    if hasattr(self, "norm"):
        out = self.norm(out)
    if gate is not None:
        out = out * gate
    out = self.proj(out)
    return self.proj_drop(out) if hasattr(self, "proj_drop") else out


def _hf_swin_layer_forward(self, hidden_states: torch.Tensor, input_dimensions, always_partition: bool = False,
                           **kwargs):
    """HF SwinLayer with the (shifted-)window attention fused into one op; returns (output, None)."""
    attention = self.attention
    table_window = square_patch(attention.relative_position_bias.window_size)
    if not always_partition:
        self.set_shift_and_window_size(input_dimensions)  # HF's own rule, so its state stays as HF's
    height, width = input_dimensions
    dropping = self.training and (self.dropout.p > 0 or attention.attention_dropout > 0
                                  or not isinstance(self.drop_path, nn.Identity))
    # After HF shrank the window to a small map, a larger map would keep the shrunk window: HF's path.
    stale_window = self.window_size != table_window and min(height, width) > self.window_size
    if (dropping or always_partition or stale_window or table_window is None or kwargs.get("output_attentions")):
        return self._vtkernels_original_forward(hidden_states, input_dimensions, always_partition, **kwargs)
    batch, _, channels = hidden_states.shape
    projections = (attention.q_proj, attention.k_proj, attention.v_proj)
    weight = torch.cat([p.weight for p in projections])
    bias = None if attention.q_proj.bias is None else torch.cat([p.bias for p in projections])
    qkv = F.linear(self.layernorm_before(hidden_states).view(batch, height, width, channels), weight, bias)
    # HF zero-pads the normed map before the projections, so a padding token's q/k/v is the bias.
    out = vtkernels.window_attention(qkv, attention.relative_position_bias.relative_position_bias_table,
                                     attention.num_attention_heads, table_window, int(self.shift_size),
                                     attention.scaling, -100.0, self._vtkernels_backend,
                                     pad_qkv=None if bias is None else bias.to(qkv.dtype), pad_first=True)
    # (under autocast the branch is bf16 while the residual stream keeps its dtype, as in HF)
    attn_out = attention.o_proj(out).view(batch, height * width, channels).to(hidden_states.dtype)
    normed, hidden_states = add_and_norm(self.layernorm_after, attn_out, hidden_states)
    return self.mlp(normed) + hidden_states, None


def _timm_swin_block_forward(self, x: torch.Tensor):
    """timm SwinTransformerBlock (B, H, W, C) with the (shifted-)window attention fused into one op."""
    attn = self.attn
    window, shift = square_patch(self.window_size), square_patch(self.shift_size)
    height, width = x.shape[1], x.shape[2]
    # Fused only where the op computes what this block's own window, shift and mask compute: a
    # square window and shift (newer timm shrinks them per axis on small non-square maps), the
    # table built for that window, the op's shrink rule a no-op, and a mask for this map size.
    exact = (window is not None and shift is not None and square_patch(attn.window_size) == window
             and effective_window(height, width, window, shift) == (window, shift)
             and (shift == 0 or getattr(self, "dynamic_mask", False)
                  or (height, width) == tuple(self.input_resolution)))
    if not exact or (self.training and attn.attn_drop.p > 0):
        return self._vtkernels_original_forward(x)
    batch, _, _, channels = x.shape
    qkv = attn.qkv(self.norm1(x))
    bias = attn.qkv.bias
    # timm zero-pads the normed map before the qkv Linear, so a padding token's q/k/v is the bias.
    out = vtkernels.window_attention(qkv, attn.relative_position_bias_table, attn.num_heads, window, shift,
                                     attn.scale, -100.0, self._vtkernels_backend,
                                     pad_qkv=None if bias is None else bias.to(qkv.dtype))
    attn_out = self.drop_path1(attn.proj_drop(attn.proj(out))).to(x.dtype)
    normed, x = add_and_norm(self.norm2, attn_out.reshape(batch, -1, channels), x.reshape(batch, -1, channels))
    return (x + self.drop_path2(self.mlp(normed))).reshape(batch, height, width, channels)


def _timm_mlp_forward(self, x: torch.Tensor):
    return self.drop2(fused_mlp(self.fc1, self.act, self.fc2, x, self.drop1, self._vtkernels_backend))


def _hf_mlp_forward(self, hidden_states: torch.Tensor):
    # DETR's MLP applies two functional dropouts: activation_dropout after the activation (which the
    # fused call cannot take), dropout after fc2 (applied here, after it)
    if self.training and getattr(self, "activation_dropout", 0.0) > 0:
        return self._vtkernels_original_forward(hidden_states)
    out = fused_mlp(self.fc1, self.activation_fn, self.fc2, hidden_states, None, self._vtkernels_backend)
    return F.dropout(out, p=getattr(self, "dropout", 0.0), training=self.training)


def _quick_gelu_forward(self, x: torch.Tensor):
    return vtkernels.quick_gelu(x, self._vtkernels_backend)


# --- patch merging ------------------------------------------------------------------------------

def _fused_patch_merge(self, x: torch.Tensor) -> Optional[torch.Tensor]:
    """reduction(norm(2x2 merge of x (B, H, W, C))) with the merge and norm fused; None when the
    norm is not a LayerNorm over the merged 4C channels."""
    norm = self.norm
    layer_norm = isinstance(norm, LayerNorm) or is_plain_layer_norm(norm)
    if not layer_norm or tuple(norm.normalized_shape) != (4 * x.shape[-1],):
        return None
    merged = vtkernels.patch_merging_norm(x, _cast(norm.weight, x), _cast(norm.bias, x), norm.eps,
                                          self._vtkernels_backend)
    return self.reduction(merged)


def _timm_patch_merging_forward(self, x: torch.Tensor):
    out = _fused_patch_merge(self, x)
    return self._vtkernels_original_forward(x) if out is None else out


def _hf_patch_merging_forward(self, input_feature: torch.Tensor, input_dimensions):
    height, width = input_dimensions
    batch, _, channels = input_feature.shape
    out = _fused_patch_merge(self, input_feature.view(batch, height, width, channels))
    if out is None:
        return self._vtkernels_original_forward(input_feature, input_dimensions)
    return out.view(batch, -1, out.shape[-1])


# --- patch embedding ------------------------------------------------------------------------

def _hf_embeddings_forward(self, pixel_values: torch.Tensor, *args, **kwargs):
    """HF ViTEmbeddings / CLIPVisionEmbeddings (MetaCLIP 2's) / SiglipVisionEmbeddings: conv (+ cls
    token) + position embedding in one op."""
    name = type(self).__name__
    if name == "ViTEmbeddings":
        conv, cls_token, pos_embed = self.patch_embeddings.projection, self.cls_token, self.position_embeddings
        dropout = self.dropout.p if self.training else 0.0
        image_size = tuple(self.image_size)
    else:  # CLIP's, MetaCLIP 2's and SigLIP's (no class token; its position_ids are arange(num_patches))
        conv, pos_embed = self.patch_embedding, self.position_embedding.weight
        cls_token = None if name == "SiglipVisionEmbeddings" else self.class_embedding
        dropout = 0.0
        image_size = (self.image_size, self.image_size)
    special = any(a is not None and a is not False for a in args) or any(
        v is not None and v is not False for v in kwargs.values())  # bool_masked_pos, interpolate_pos_encoding
    patch = square_patch(conv.kernel_size)
    mixed = any(t is not None and t.dtype != conv.weight.dtype for t in (cls_token, pos_embed))  # (HF promotes)
    if special or mixed or dropout > 0 or patch is None or tuple(pixel_values.shape[-2:]) != image_size:
        return self._vtkernels_original_forward(pixel_values, *args, **kwargs)
    return vtkernels.patch_embed(pixel_values.to(conv.weight.dtype), conv.weight, conv.bias, patch,
                                 cls_token=cls_token, pos_embed=pos_embed, backend=self._vtkernels_backend)


def _fused_projection(conv: nn.Conv2d, images: torch.Tensor, backend: Optional[str]) -> Optional[torch.Tensor]:
    """Conv2d(stride = kernel = patch) of ``images`` as (B, N, D) tokens in row-major patch order,
    fused; None when the patch is not square or the image not a multiple of it."""
    patch = square_patch(conv.kernel_size)
    if (patch is None or tuple(conv.stride) != (patch, patch) or tuple(conv.padding) != (0, 0)
            or images.shape[-2] % patch or images.shape[-1] % patch):
        return None
    return vtkernels.patch_embed(images.to(conv.weight.dtype), conv.weight, conv.bias, patch, backend=backend)


def _timm_patch_embed_forward(self, x: torch.Tensor):
    """timm PatchEmbed (flattened, or NHWC as in Swin): the projection on vtkernels.patch_embed, then its norm."""
    height, width = x.shape[-2:]
    strict_size = getattr(self, "strict_img_size", False) and (height, width) != tuple(self.img_size)
    tokens = None if strict_size else _fused_projection(self.proj, x, self._vtkernels_backend)
    if tokens is None:
        return self._vtkernels_original_forward(x)  # (which raises timm's own size error)
    if _timm_output_format(self) == "NHWC":
        patch = self.proj.kernel_size[0]
        tokens = tokens.view(x.shape[0], height // patch, width // patch, tokens.shape[-1])
    return self.norm(tokens)


def _hf_patch_embeddings_forward(self, pixel_values: torch.Tensor):
    """HF DeiT / ViT-MSN / I-JEPA / ViT-MAE / DINOv2 patch embeddings: the projection, flattened
    to (B, N, D), in one fused GEMM; images HF would crop, or with the wrong channel count
    (HF raises), take HF's path."""
    tokens = None
    if pixel_values.shape[1] == self.projection.in_channels:
        tokens = _fused_projection(self.projection, pixel_values, self._vtkernels_backend)
    return self._vtkernels_original_forward(pixel_values) if tokens is None else tokens


def _hf_swin_patch_embeddings_forward(self, pixel_values: torch.Tensor):
    """HF SwinPatchEmbeddings: (tokens, (H', W')); images that HF would pad take HF's path."""
    tokens = _fused_projection(self.projection, pixel_values, self._vtkernels_backend)
    if tokens is None:
        return self._vtkernels_original_forward(pixel_values)
    patch = self.projection.kernel_size[0]
    return tokens, (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)


# (the optimize() flag that enables it, detector, report kind, patched forward).
# Patch merging counts as a norm (its fused op is the 2x2 gather + LayerNorm), and so does the
# residual add fused into an HF encoder layer's second norm ("AddNorm").
PATCHES = (
    ("attention", _is_hf_attention, "Attention", _hf_attention_forward),
    ("attention", _is_timm_attention, "Attention", _timm_attention_forward),
    ("attention", _is_hf_swin_layer, "WindowAttention", _hf_swin_layer_forward),
    ("attention", _is_timm_swin_block, "WindowAttention", _timm_swin_block_forward),
    ("norms", _is_hf_encoder_layer, "AddNorm", _hf_encoder_layer_forward),
    ("norms", _is_timm_block, "AddNorm", _timm_block_forward),
    ("norms", _is_timm_patch_merging, "PatchMerging", _timm_patch_merging_forward),
    ("norms", _is_hf_patch_merging, "PatchMerging", _hf_patch_merging_forward),
    ("patch_embed", _is_hf_embeddings, "PatchEmbed", _hf_embeddings_forward),
    ("patch_embed", _is_hf_swin_patch_embeddings, "PatchEmbed", _hf_swin_patch_embeddings_forward),
    ("patch_embed", _is_hf_patch_embeddings, "PatchEmbed", _hf_patch_embeddings_forward),
    ("patch_embed", _is_timm_patch_embed, "PatchEmbed", _timm_patch_embed_forward),
    ("mlp", _is_timm_mlp, "Mlp", _timm_mlp_forward),
    ("mlp", _is_hf_mlp, "Mlp", _hf_mlp_forward),
    ("activations", _is_quick_gelu, "QuickGELU", _quick_gelu_forward),
)
