"""``optimize(model)``: swap vtkernels' fused ops into an existing HF transformers or timm model.

Monkey-patching in place (like Liger-Kernel's ``apply_liger_kernel_to_*``), on an instance:

* every last-dimension ``LayerNorm`` (torch's, timm's) becomes :class:`vtkernels.nn.LayerNorm`
  with the same weights (ViT, CLIP, Swin, ...; timm's channels-first ``LayerNorm2d`` is left alone);
* the self-attention of HF ``ViTAttention`` / ``CLIPAttention`` and of timm's ``Attention`` gets a
  forward that projects q, k, v straight into the (B, N, H, d) layout and calls
  :func:`vtkernels.attention` (causal where HF asks for it, as in the CLIP text tower);
* HF ``SwinLayer`` and timm's ``SwinTransformerBlock`` run their shifted-window attention as one
  :func:`vtkernels.window_attention` call on the (B, H, W, 3C) map (roll, padding, partition,
  bias, mask and reverse inside the op), and add their residual inside the fused second norm;
* Swin patch merging (timm ``PatchMerging``, HF ``SwinPatchMerging``): the 2x2 gather and the
  LayerNorm(4C) become one :func:`vtkernels.patch_merging_norm` call before the reduction Linear;
* the MLP of timm (``Mlp``: ViT, Swin, CLIP towers) and HF (``CLIPMLP``, ``ViTMLP``, ``SwinMLP``) runs as one
  :func:`vtkernels.mlp` call, the activation (GELU, QuickGELU, ReLU) fused into fc1's GEMM;
* QuickGELU (HF ``QuickGELUActivation``, timm's ``QuickGELU``: CLIP, iGPT) elsewhere runs as one
  :func:`vtkernels.quick_gelu` pass instead of eager PyTorch's three;
* the patch embedding of HF ViT / CLIP (convolution + class token + position embedding) becomes
  one :func:`vtkernels.patch_embed` call; timm's ``PatchEmbed`` (flattened or Swin's NHWC output)
  and HF's ``SwinPatchEmbeddings`` keep their own position handling and get the fused projection.

A patched forward falls back to the original one for the calls it cannot take exactly (attention
masks that are not causal + key padding, dropout in training, interpolated position encodings,
masked-image tokens), so outputs stay within the kernels' tolerance of the original model.
Patched modules keep their own parameters (q/k/v are concatenated per call, not copied), so the
state_dict, training and saving work exactly as before.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import types
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

import vtkernels
from vtkernels.nn import LayerNorm
from vtkernels.nn.mlp import activation_name, fused_mlp
from vtkernels.nn.norm import _cast
from vtkernels.reference.attention import allowed_keys
from vtkernels.reference.window_attention import effective_window

logger = logging.getLogger(__name__)

HF_ATTENTION_CLASSES = ("ViTAttention", "CLIPAttention")
HF_EMBEDDING_CLASSES = ("ViTEmbeddings", "CLIPVisionEmbeddings")
HF_MLP_CLASSES = ("CLIPMLP", "ViTMLP", "SwinMLP")


@dataclasses.dataclass
class OptimizeReport:
    """What :func:`optimize` replaced: counts per module type (``report["LayerNorm"]``)."""

    replaced: dict = dataclasses.field(default_factory=dict)

    def add(self, kind: str) -> None:
        self.replaced[kind] = self.replaced.get(kind, 0) + 1

    def __getitem__(self, kind: str) -> int:
        return self.replaced.get(kind, 0)

    @property
    def total(self) -> int:
        return sum(self.replaced.values())

    def __str__(self) -> str:
        counts = ", ".join(f"{kind}: {n}" for kind, n in sorted(self.replaced.items())) or "nothing"
        return f"vtkernels.optimize replaced {counts}"


def optimize(model: nn.Module, *, norms: bool = True, attention: bool = True, patch_embed: bool = True,
             mlp: bool = True, activations: bool = True, backend: Optional[str] = None, return_report: bool = False):
    """Swap fused modules into ``model`` in place; returns ``model`` (and the report if asked).

    The report is also kept as ``model.vtkernels_report``. Calling it twice replaces nothing more.
    """
    if backend is not None:
        vtkernels.backend._validate_name(backend)
    report = OptimizeReport()
    for _, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if norms and _is_plain_layer_norm(child):
                setattr(parent, name, _fused_layer_norm(child, backend))
                report.add("LayerNorm")
    enabled = {"norms": norms, "attention": attention, "patch_embed": patch_embed, "mlp": mlp,
               "activations": activations}
    for module in model.modules():
        if getattr(module, "_vtkernels_patched", False):
            continue
        kind, forward = next(((kind, forward) for flag, detect, kind, forward in _PATCHES
                              if enabled[flag] and detect(module)), (None, None))
        if kind is not None:
            module._vtkernels_original_forward = module.forward
            module._vtkernels_backend = backend
            module._vtkernels_patched = True
            module.forward = types.MethodType(forward, module)
            report.add(kind)
    model.vtkernels_report = report
    logger.info("%s", report)
    return (model, report) if return_report else model


# --- detection --------------------------------------------------------------------------------

def _from(module: nn.Module, package: str) -> bool:
    return type(module).__module__.split(".")[0] == package


def _is_plain_layer_norm(module: nn.Module) -> bool:
    if isinstance(module, LayerNorm) or len(getattr(module, "normalized_shape", ())) != 1:
        return False
    # timm's LayerNorm normalizes the last dim like torch's; LayerNorm2d (channels-first) does not.
    return type(module) is nn.LayerNorm or (type(module).__name__ == "LayerNorm" and _from(module, "timm"))


def _forward_takes(module: nn.Module, *names: str) -> bool:
    """The module's forward has exactly these named parameters (+ **kwargs): the transformers 5.x
    call convention our patched forwards implement (4.x passes other arguments positionally)."""
    params = list(inspect.signature(type(module).forward).parameters.values())[1:]
    return [p.name for p in params if p.kind != p.VAR_KEYWORD] == list(names)


def _is_hf_attention(module: nn.Module) -> bool:
    return (type(module).__name__ in HF_ATTENTION_CLASSES and _from(module, "transformers")
            and all(hasattr(module, n) for n in ("q_proj", "k_proj", "v_proj", "head_dim"))
            and _forward_takes(module, "hidden_states", "attention_mask"))


def _is_hf_embeddings(module: nn.Module) -> bool:
    return type(module).__name__ in HF_EMBEDDING_CLASSES and _from(module, "transformers")


def _is_hf_swin_layer(module: nn.Module) -> bool:
    return (type(module).__name__ == "SwinLayer" and _from(module, "transformers")
            and _forward_takes(module, "hidden_states", "input_dimensions", "always_partition"))


def _is_timm_attention(module: nn.Module) -> bool:
    return (type(module).__name__ == "Attention" and _from(module, "timm")
            and all(hasattr(module, n) for n in ("qkv", "proj", "num_heads")))


def _is_timm_swin_block(module: nn.Module) -> bool:
    attn = getattr(module, "attn", None)
    return (type(module).__name__ == "SwinTransformerBlock" and _from(module, "timm")
            and all(hasattr(module, n) for n in ("_attn", "norm1", "norm2", "mlp", "drop_path1", "drop_path2",
                                                 "window_size", "shift_size", "input_resolution"))
            and all(hasattr(attn, n) for n in ("qkv", "proj", "relative_position_bias_table", "num_heads", "scale")))


def _is_timm_mlp(module: nn.Module) -> bool:
    """timm's Mlp with Linear layers, no hidden norm and an activation vtkernels.mlp has."""
    return (type(module).__name__ == "Mlp" and _from(module, "timm")
            and type(getattr(module, "fc1", None)) is nn.Linear and type(getattr(module, "fc2", None)) is nn.Linear
            and isinstance(getattr(module, "norm", nn.Identity()), nn.Identity)
            and activation_name(getattr(module, "act", None)) is not None)


def _is_hf_mlp(module: nn.Module) -> bool:
    """HF's fc1 -> activation_fn -> fc2 MLPs (no dropout inside) of CLIP, ViT and Swin (transformers 5.x)."""
    return (type(module).__name__ in HF_MLP_CLASSES and _from(module, "transformers")
            and _forward_takes(module, "hidden_states")
            and type(getattr(module, "fc1", None)) is nn.Linear and type(getattr(module, "fc2", None)) is nn.Linear
            and activation_name(getattr(module, "activation_fn", None)) is not None)


def _is_quick_gelu(module: nn.Module) -> bool:
    return ((type(module).__name__ == "QuickGELUActivation" and _from(module, "transformers"))
            or (type(module).__name__ == "QuickGELU" and _from(module, "timm")))


def _is_timm_patch_merging(module: nn.Module) -> bool:
    return (type(module).__name__ == "PatchMerging" and _from(module, "timm")
            and isinstance(getattr(module, "reduction", None), nn.Linear) and hasattr(module, "norm"))


def _is_hf_patch_merging(module: nn.Module) -> bool:
    return (type(module).__name__ == "SwinPatchMerging" and _from(module, "transformers")
            and isinstance(getattr(module, "reduction", None), nn.Linear) and hasattr(module, "norm")
            and _forward_takes(module, "input_feature", "input_dimensions"))


def _is_hf_swin_patch_embeddings(module: nn.Module) -> bool:
    return (type(module).__name__ == "SwinPatchEmbeddings" and _from(module, "transformers")
            and isinstance(getattr(module, "projection", None), nn.Conv2d) and _forward_takes(module, "pixel_values"))


def _timm_output_format(module: nn.Module) -> Optional[str]:
    """"NLC" for a flattened timm PatchEmbed, else its output_fmt ("NHWC" in Swin, "NCHW")."""
    if getattr(module, "flatten", False):
        return "NLC"
    fmt = getattr(module, "output_fmt", None)
    return getattr(fmt, "value", fmt)


def _is_timm_patch_embed(module: nn.Module) -> bool:
    return (type(module).__name__ == "PatchEmbed" and _from(module, "timm")
            and _timm_output_format(module) in ("NLC", "NHWC")
            and isinstance(getattr(module, "proj", None), nn.Conv2d) and not getattr(module, "dynamic_img_pad", False))


def _fused_layer_norm(norm: nn.LayerNorm, backend: Optional[str]) -> LayerNorm:
    weight = norm.weight
    like = weight if weight is not None else torch.empty(0)
    fused = LayerNorm(norm.normalized_shape, eps=norm.eps, elementwise_affine=weight is not None,
                      bias=norm.bias is not None, device=like.device, dtype=like.dtype, backend=backend)
    fused.load_state_dict(norm.state_dict())
    fused.train(norm.training)
    for mine, theirs in zip(fused.parameters(), norm.parameters()):
        mine.requires_grad_(theirs.requires_grad)
    return fused


def _square_patch(patch_size) -> Optional[int]:
    if isinstance(patch_size, int):
        return patch_size
    patch_size = tuple(patch_size)
    return patch_size[0] if len(patch_size) == 2 and patch_size[0] == patch_size[1] else None


# --- attention ----------------------------------------------------------------------------------

_NO_PADDING = object()  # a mask that is exactly the causal (or empty) rule


def _key_padding_from_mask(mask: torch.Tensor, causal: bool, n_q: int, n_kv: int) -> Optional[torch.Tensor]:
    """The key-padding mask equivalent to HF's 4-D mask (B, 1|H, Nq, Nkv); ``_NO_PADDING`` when it
    pads nothing, None when the mask is something else (the caller then falls back).

    HF masks are bool (True = attend) or additive float (0 = attend). The padded keys are read off
    the last query row (it sees every key, even under the causal rule); the mask is then rebuilt
    and compared, so a mask of any other shape is refused rather than misread.
    """
    if mask.dim() != 4 or mask.shape[-2:] != (n_q, n_kv):
        return None
    allowed = mask if mask.dtype == torch.bool else mask == 0
    key_padding_mask = ~allowed[:, 0, -1, :]
    expected = allowed_keys(n_q, n_kv, causal, key_padding_mask, mask.device)
    if not torch.equal(allowed, expected.expand_as(allowed)):
        return None
    return key_padding_mask if key_padding_mask.any() else _NO_PADDING


def _other_tensors(kwargs: dict) -> bool:
    """A tensor argument we do not interpret (e.g. transformers 4.x's ``causal_attention_mask``)."""
    return any(isinstance(value, torch.Tensor) for value in kwargs.values())


def _hf_attention_forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, **kwargs):
    """HF ViT / CLIP self-attention on vtkernels.attention; returns (output, None) like HF."""
    if _other_tensors(kwargs):
        return self._vtkernels_original_forward(hidden_states, attention_mask, **kwargs)
    causal = bool(kwargs.get("is_causal", getattr(self, "is_causal", False)))
    dropout = getattr(self, "dropout", getattr(self, "attention_dropout", 0.0))
    batch, tokens = hidden_states.shape[:2]
    key_padding_mask = None
    if attention_mask is not None:
        key_padding_mask = _key_padding_from_mask(attention_mask, causal, tokens, tokens)
        if key_padding_mask is None:
            return self._vtkernels_original_forward(hidden_states, attention_mask, **kwargs)
        if key_padding_mask is _NO_PADDING:
            key_padding_mask = None
    if (self.training and dropout > 0) or kwargs.get("output_attentions"):
        return self._vtkernels_original_forward(hidden_states, attention_mask, **kwargs)
    shape = (batch, tokens, -1, self.head_dim)  # (B, N, H, d): no transpose needed
    q, k, v = (proj(hidden_states).view(shape) for proj in (self.q_proj, self.k_proj, self.v_proj))
    scale = getattr(self, "scaling", getattr(self, "scale", None))
    out = vtkernels.attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask, scale=scale,
                              layout="bnhd", backend=self._vtkernels_backend)
    out_proj = self.o_proj if hasattr(self, "o_proj") else self.out_proj
    return out_proj(out.reshape(batch, tokens, -1)), None


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
    q, k, v = self.qkv(x).view(batch, tokens, 3, self.num_heads, head_dim).unbind(2)  # each (B, N, H, d)
    q = self.q_norm(q) if hasattr(self, "q_norm") else q
    k = self.k_norm(k) if hasattr(self, "k_norm") else k
    out = vtkernels.attention(q, k, v, causal=causal, scale=getattr(self, "scale", head_dim**-0.5), layout="bnhd",
                              backend=self._vtkernels_backend).reshape(batch, tokens, -1)
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
    table_window = _square_patch(attention.relative_position_bias.window_size)
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
    normed, hidden_states = _add_and_norm(self.layernorm_after, attn_out, hidden_states)
    return self.mlp(normed) + hidden_states, None


def _add_and_norm(norm: nn.Module, branch: torch.Tensor, residual: torch.Tensor):
    """(norm(residual + branch), residual + branch): one pass when ``norm`` is the fused LayerNorm."""
    if isinstance(norm, LayerNorm):
        return norm(branch, residual=residual)
    hidden = residual + branch
    return norm(hidden), hidden


def _timm_swin_block_forward(self, x: torch.Tensor):
    """timm SwinTransformerBlock (B, H, W, C) with the (shifted-)window attention fused into one op."""
    attn = self.attn
    window, shift = _square_patch(self.window_size), _square_patch(self.shift_size)
    height, width = x.shape[1], x.shape[2]
    # Fused only where the op computes what this block's own window, shift and mask compute: a
    # square window and shift (newer timm shrinks them per axis on small non-square maps), the
    # table built for that window, the op's shrink rule a no-op, and a mask for this map size.
    exact = (window is not None and shift is not None and _square_patch(attn.window_size) == window
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
    normed, x = _add_and_norm(self.norm2, attn_out.reshape(batch, -1, channels), x.reshape(batch, -1, channels))
    return (x + self.drop_path2(self.mlp(normed))).reshape(batch, height, width, channels)


def _timm_mlp_forward(self, x: torch.Tensor):
    return self.drop2(fused_mlp(self, x, self.act, self.drop1, self._vtkernels_backend))


def _hf_mlp_forward(self, hidden_states: torch.Tensor):
    return fused_mlp(self, hidden_states, self.activation_fn, None, self._vtkernels_backend)


def _quick_gelu_forward(self, x: torch.Tensor):
    return vtkernels.quick_gelu(x, self._vtkernels_backend)


# --- patch merging ------------------------------------------------------------------------------

def _fused_patch_merge(self, x: torch.Tensor) -> Optional[torch.Tensor]:
    """reduction(norm(2x2 merge of x (B, H, W, C))) with the merge and norm fused; None when the
    norm is not a LayerNorm over the merged 4C channels."""
    norm = self.norm
    layer_norm = isinstance(norm, LayerNorm) or _is_plain_layer_norm(norm)
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
    """HF ViTEmbeddings / CLIPVisionEmbeddings: conv + cls token + position embedding in one op."""
    if type(self).__name__ == "ViTEmbeddings":
        conv, cls_token, pos_embed = self.patch_embeddings.projection, self.cls_token, self.position_embeddings
        dropout = self.dropout.p if self.training else 0.0
        image_size = tuple(self.image_size)
    else:  # CLIPVisionEmbeddings
        conv, cls_token, pos_embed = self.patch_embedding, self.class_embedding, self.position_embedding.weight
        dropout = 0.0
        image_size = (self.image_size, self.image_size)
    special = any(a is not None and a is not False for a in args) or any(
        v is not None and v is not False for v in kwargs.values())  # bool_masked_pos, interpolate_pos_encoding
    patch = _square_patch(conv.kernel_size)
    if special or dropout > 0 or patch is None or tuple(pixel_values.shape[-2:]) != image_size:
        return self._vtkernels_original_forward(pixel_values, *args, **kwargs)
    return vtkernels.patch_embed(pixel_values.to(conv.weight.dtype), conv.weight, conv.bias, patch,
                                 cls_token=cls_token, pos_embed=pos_embed, backend=self._vtkernels_backend)


def _fused_projection(conv: nn.Conv2d, images: torch.Tensor, backend: Optional[str]) -> Optional[torch.Tensor]:
    """Conv2d(stride = kernel = patch) of ``images`` as (B, N, D) tokens in row-major patch order,
    fused; None when the patch is not square or the image not a multiple of it."""
    patch = _square_patch(conv.kernel_size)
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


def _hf_swin_patch_embeddings_forward(self, pixel_values: torch.Tensor):
    """HF SwinPatchEmbeddings: (tokens, (H', W')); images that HF would pad take HF's path."""
    tokens = _fused_projection(self.projection, pixel_values, self._vtkernels_backend)
    if tokens is None:
        return self._vtkernels_original_forward(pixel_values)
    patch = self.projection.kernel_size[0]
    return tokens, (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)


# (the optimize() flag that enables it, detector, report kind, patched forward); first match wins.
# Patch merging counts as a norm (its fused op is the 2x2 gather + LayerNorm).
_PATCHES = (
    ("attention", _is_hf_attention, "Attention", _hf_attention_forward),
    ("attention", _is_timm_attention, "Attention", _timm_attention_forward),
    ("attention", _is_hf_swin_layer, "WindowAttention", _hf_swin_layer_forward),
    ("attention", _is_timm_swin_block, "WindowAttention", _timm_swin_block_forward),
    ("norms", _is_timm_patch_merging, "PatchMerging", _timm_patch_merging_forward),
    ("norms", _is_hf_patch_merging, "PatchMerging", _hf_patch_merging_forward),
    ("patch_embed", _is_hf_embeddings, "PatchEmbed", _hf_embeddings_forward),
    ("patch_embed", _is_hf_swin_patch_embeddings, "PatchEmbed", _hf_swin_patch_embeddings_forward),
    ("patch_embed", _is_timm_patch_embed, "PatchEmbed", _timm_patch_embed_forward),
    ("mlp", _is_timm_mlp, "Mlp", _timm_mlp_forward),
    ("mlp", _is_hf_mlp, "Mlp", _hf_mlp_forward),
    ("activations", _is_quick_gelu, "QuickGELU", _quick_gelu_forward),
)
