"""optimize()'s patches for HF transformers DETR and ImageGPT (iGPT).

* DETR's ``DetrSelfAttention`` / ``DetrCrossAttention``: positions added to the query and key
  inputs (not the values) as HF does, then :func:`vtkernels.attention` with HF's padding mask as
  ``key_padding_mask`` (its MLP, ``DetrMLP``, is patched with the vision MLPs: ReLU fused);
* iGPT's ``ImageGPTLayerNorm`` (``x / sqrt(mean(x^2) + eps) * weight``) becomes
  :class:`vtkernels.nn.RMSNorm`;
* iGPT's ``ImageGPTAttention`` (self-attention): HF's own ``c_attn`` projection and KV cache, then
  :func:`vtkernels.attention`, causal (bottom-right, as HF's causal buffer when a cache holds the
  earlier keys), HF's scale options, padding as ``key_padding_mask``;
* iGPT's ``ImageGPTMLP`` (two HF ``Conv1D`` layers, which hold their weights transposed, around
  QuickGELU): one :func:`vtkernels.mlp` call on the transposed weights (a copy of each per call),
  the activation fused into the first GEMM, HF's dropout after it.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

import vtkernels
from vtkernels.nn import RMSNorm
from vtkernels.nn.mlp import activation_name, fused_mlp, linear_weight
from vtkernels.patch.common import (UNSUPPORTED, forward_takes, from_package, key_padding_mask_for, other_tensors,
                                    projected_attention, take_over)

_DETR_SELF = ("hidden_states", "attention_mask", "position_embeddings")
_DETR_CROSS = ("hidden_states", "key_value_states", "attention_mask", "position_embeddings",
               "encoder_position_embeddings")
_IGPT_ATTENTION = ("hidden_states", "layer_past", "attention_mask", "encoder_hidden_states", "encoder_attention_mask",
                   "use_cache", "output_attentions")


# --- DETR ----------------------------------------------------------------------------------------

def _is_detr_attention(module: nn.Module, name: str, arguments: tuple) -> bool:
    return (type(module).__name__ == name and from_package(module, "transformers")
            and all(hasattr(module, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling"))
            and forward_takes(module, *arguments))


def _is_hf_detr_self_attention(module: nn.Module) -> bool:
    return _is_detr_attention(module, "DetrSelfAttention", _DETR_SELF)


def _is_hf_detr_cross_attention(module: nn.Module) -> bool:
    return _is_detr_attention(module, "DetrCrossAttention", _DETR_CROSS)


def _plus(x: torch.Tensor, positions: Optional[torch.Tensor]) -> torch.Tensor:
    return x if positions is None else x + positions


def _hf_detr_self_attention_forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                                    position_embeddings: Optional[torch.Tensor] = None, **kwargs):
    """DETR self-attention (encoder, decoder): positions on queries and keys; (output, None) like HF."""
    query_key = _plus(hidden_states, position_embeddings)
    out = projected_attention(self, query_key, query_key, hidden_states, attention_mask, False, kwargs)
    if out is None:
        return self._vtkernels_original_forward(hidden_states, attention_mask, position_embeddings, **kwargs)
    return out, None


def _hf_detr_cross_attention_forward(self, hidden_states: torch.Tensor, key_value_states: torch.Tensor,
                                     attention_mask: Optional[torch.Tensor] = None,
                                     position_embeddings: Optional[torch.Tensor] = None,
                                     encoder_position_embeddings: Optional[torch.Tensor] = None, **kwargs):
    """DETR decoder cross-attention: query positions on the queries, the encoder's on the keys."""
    out = projected_attention(self, _plus(hidden_states, position_embeddings),
                              _plus(key_value_states, encoder_position_embeddings), key_value_states, attention_mask,
                              False, kwargs)
    if out is None:
        return self._vtkernels_original_forward(hidden_states, key_value_states, attention_mask, position_embeddings,
                                                encoder_position_embeddings, **kwargs)
    return out, None


# --- ImageGPT ------------------------------------------------------------------------------------

def is_hf_igpt_norm(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (type(module).__name__ == "ImageGPTLayerNorm" and from_package(module, "transformers")
            and isinstance(weight, nn.Parameter) and weight.dim() == 1 and hasattr(module, "eps"))


def fused_igpt_norm(norm: nn.Module, backend: Optional[str]) -> RMSNorm:
    weight = norm.weight
    return take_over(RMSNorm(weight.shape[0], eps=norm.eps, device=weight.device, dtype=weight.dtype,
                             backend=backend), norm)


def _is_hf_igpt_attention(module: nn.Module) -> bool:
    return (type(module).__name__ == "ImageGPTAttention" and from_package(module, "transformers")
            and not getattr(module, "is_cross_attention", True)
            and all(hasattr(module, n) for n in ("c_attn", "c_proj", "num_heads", "head_dim", "split_size",
                                                 "scale_attn_weights", "scale_attn_by_inverse_layer_idx",
                                                 "layer_idx", "attn_dropout", "resid_dropout"))
            and forward_takes(module, *_IGPT_ATTENTION))


def _igpt_scale(module: nn.Module) -> float:
    scale = module.head_dim ** -0.5 if module.scale_attn_weights else 1.0
    if module.scale_attn_by_inverse_layer_idx:
        scale /= float(module.layer_idx + 1)
    return scale


def _hf_igpt_attention_forward(self, hidden_states: torch.Tensor, layer_past=None,
                               attention_mask: Optional[torch.Tensor] = None, encoder_hidden_states=None,
                               encoder_attention_mask=None, use_cache: Optional[bool] = False,
                               output_attentions: Optional[bool] = False, **kwargs):
    """iGPT self-attention on vtkernels.attention; returns (output, None) like HF without weights."""
    batch, n_q, _ = hidden_states.shape
    n_past = 0 if layer_past is None else _self_attention_cache(layer_past).get_seq_length(self.layer_idx)
    # HF's mask here is padding only (its causal rule comes from a buffer): decided before the
    # cache update below, which a fallback must not repeat.
    key_padding_mask = key_padding_mask_for(attention_mask, n_q, n_past + n_q, mask_causal=False, causal=True)
    if (key_padding_mask is UNSUPPORTED or encoder_hidden_states is not None or output_attentions
            or other_tensors(kwargs) or (self.training and self.attn_dropout.p > 0)):
        return self._vtkernels_original_forward(hidden_states, layer_past, attention_mask, encoder_hidden_states,
                                                encoder_attention_mask, use_cache, output_attentions, **kwargs)
    qkv = self.c_attn(hidden_states).view(batch, n_q, 3, self.num_heads, self.head_dim)
    attention_args = dict(causal=True, key_padding_mask=key_padding_mask, scale=_igpt_scale(self),
                          backend=self._vtkernels_backend)
    if layer_past is None:  # (B, N, H, d) out of the packed projection, its gradient in one piece
        out = vtkernels.attention_qkv(qkv, **attention_args)
    else:  # the cache holds (B, H, N, d) keys and values, as HF's own forward stores them
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        k, v = _self_attention_cache(layer_past).update(k, v, self.layer_idx)
        out = vtkernels.attention(q, k, v, **attention_args).transpose(1, 2)
    return self.resid_dropout(self.c_proj(out.reshape(batch, n_q, -1))), None


def _is_hf_igpt_mlp(module: nn.Module) -> bool:
    return (type(module).__name__ == "ImageGPTMLP" and from_package(module, "transformers")
            and forward_takes(module, "hidden_states")
            and all(linear_weight(getattr(module, n, None)) is not None for n in ("c_fc", "c_proj"))
            and activation_name(getattr(module, "act", None)) is not None and hasattr(module, "dropout"))


def _hf_igpt_mlp_forward(self, hidden_states: torch.Tensor):
    return self.dropout(fused_mlp(self.c_fc, self.act, self.c_proj, hidden_states, None, self._vtkernels_backend))


def _self_attention_cache(cache):
    """HF's cache object for self-attention (an EncoderDecoderCache holds two)."""
    return getattr(cache, "self_attention_cache", cache)


# (the optimize() flag that enables it, detector, report kind, patched forward)
PATCHES = (
    ("attention", _is_hf_detr_self_attention, "Attention", _hf_detr_self_attention_forward),
    ("attention", _is_hf_detr_cross_attention, "Attention", _hf_detr_cross_attention_forward),
    ("attention", _is_hf_igpt_attention, "Attention", _hf_igpt_attention_forward),
    ("mlp", _is_hf_igpt_mlp, "Mlp", _hf_igpt_mlp_forward),
)
