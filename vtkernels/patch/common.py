"""Helpers shared by the patches of :mod:`vtkernels.patch`: detection, norm swaps, HF attention
masks read as key padding, the projected attention of HF's q/k/v/o modules."""

from __future__ import annotations

import inspect
import weakref
from typing import Optional

import torch
from torch import nn

import vtkernels
from vtkernels.nn import LayerNorm
from vtkernels.reference.attention import allowed_keys


def from_package(module: nn.Module, package: str) -> bool:
    return type(module).__module__.split(".")[0] == package


def forward_takes(module: nn.Module, *names: str, optional: tuple[str, ...] = ()) -> bool:
    """The module's forward has exactly these named parameters (+ **kwargs), then any of
    ``optional`` (which our patched forwards take through **kwargs): the transformers 5.x call
    convention our patched forwards implement (4.x passes other arguments positionally)."""
    params = list(inspect.signature(type(module).forward).parameters.values())[1:]
    taken = [p.name for p in params if p.kind != p.VAR_KEYWORD]
    return taken[:len(names)] == list(names) and set(taken[len(names):]) <= set(optional)


def square_patch(patch_size) -> Optional[int]:
    if isinstance(patch_size, int):
        return patch_size
    patch_size = tuple(patch_size)
    return patch_size[0] if len(patch_size) == 2 and patch_size[0] == patch_size[1] else None


# --- norms ---------------------------------------------------------------------------------------

def is_plain_layer_norm(module: nn.Module) -> bool:
    if isinstance(module, LayerNorm) or len(getattr(module, "normalized_shape", ())) != 1:
        return False
    # timm's LayerNorm normalizes the last dim like torch's; LayerNorm2d (channels-first) does not.
    return type(module) is nn.LayerNorm or (type(module).__name__ == "LayerNorm" and from_package(module, "timm"))


def take_over(fused: nn.Module, original: nn.Module) -> nn.Module:
    """``fused`` with ``original``'s parameters (values and requires_grad) and training mode."""
    fused.load_state_dict(original.state_dict())
    fused.train(original.training)
    for mine, theirs in zip(fused.parameters(), original.parameters()):
        mine.requires_grad_(theirs.requires_grad)
    return fused


def fused_layer_norm(norm: nn.LayerNorm, backend: Optional[str]) -> LayerNorm:
    weight = norm.weight
    like = weight if weight is not None else torch.empty(0)
    fused = LayerNorm(norm.normalized_shape, eps=norm.eps, elementwise_affine=weight is not None,
                      bias=norm.bias is not None, device=like.device, dtype=like.dtype, backend=backend)
    return take_over(fused, norm)


def add_and_norm(norm: nn.Module, branch: torch.Tensor, residual: torch.Tensor):
    """(norm(residual + branch), residual + branch): one pass when ``norm`` is the fused LayerNorm.
    The sum takes the promoted dtype, as ``+`` would (under autocast a bf16 branch meets an fp32
    residual stream)."""
    dtype = torch.promote_types(branch.dtype, residual.dtype)
    branch, residual = branch.to(dtype), residual.to(dtype)
    if isinstance(norm, LayerNorm):
        return norm(branch, residual=residual)
    hidden = residual + branch
    return norm(hidden), hidden


# --- attention -----------------------------------------------------------------------------------

UNSUPPORTED = object()  # a mask the op cannot express: the caller falls back


def key_padding_mask_for(mask: Optional[torch.Tensor], n_q: int, n_kv: int, mask_causal: bool, causal: bool):
    """The (B, N_kv) bool key-padding mask (True = padded) with which attention with the causal rule
    (``causal``) computes what HF's attention computes with ``mask``, or UNSUPPORTED.

    HF masks are None or 4-D (B, 1|H, Nq, Nkv) (query axis 1 when the mask is padding only), bool
    (True = attend) or additive float (0 = attend); ``mask_causal`` says whether HF built the causal
    rule into the mask (CLIP's text tower) rather than applying it apart (iGPT). The padded keys are
    read off the last query row (it sees every key, even under the causal rule); the mask is then
    rebuilt and compared, so a mask of any other form is refused rather than misread. Refused too:
    padding that leaves a query row without a key (HF's softmax over large negative scores then
    averages the padded keys, where the op returns zeros).

    The answer takes one host sync. HF hands the same mask tensor to every layer of a forward, so
    it is kept for the last mask seen (while that tensor lives and is not modified in place).
    """
    if mask is None:
        return None
    global _last_analysis
    key = _analysis_key(mask, n_q, n_kv, mask_causal, causal)
    cached_mask, cached_key, result = _last_analysis
    if key is not None and cached_key == key and cached_mask() is mask:
        return result
    result = _analyse_mask(mask, n_q, n_kv, mask_causal, causal)
    if key is not None:
        _last_analysis = (weakref.ref(mask), key, result)
    return result


_last_analysis = (lambda: None, None, None)  # (weak reference to the mask, its key, the answer)


def _analysis_key(mask: torch.Tensor, *call) -> Optional[tuple]:
    """What must match for a cached answer to hold, or None (no caching: while compiling, or for
    an inference tensor, whose in-place writes no version counter records)."""
    if torch.compiler.is_compiling() or mask.is_inference():
        return None
    return (mask._version, *call)


def _analyse_mask(mask: torch.Tensor, n_q: int, n_kv: int, mask_causal: bool, causal: bool):
    rows = mask.shape[-2] if mask.dim() == 4 else -1
    if mask.dim() != 4 or mask.shape[-1] != n_kv or rows not in ((n_q,) if mask_causal else (1, n_q)):
        return UNSUPPORTED
    allowed = mask if mask.dtype == torch.bool else mask == 0
    key_padding_mask = ~allowed[:, 0, -1, :]
    expected = allowed_keys(rows, n_kv, mask_causal, key_padding_mask, mask.device)
    # The first query row sees the fewest keys: [0, n_kv - n_q] under the (bottom-right) causal rule.
    first_row_keys = key_padding_mask[:, :max(n_kv - n_q + 1, 0)] if causal else key_padding_mask
    # One host sync for the three answers: another form of mask, any padding, a row without keys.
    misread, padded, keyless = torch.stack([(allowed != expected).any(), key_padding_mask.any(),
                                            first_row_keys.all(dim=-1).any()]).tolist()
    if misread:
        return UNSUPPORTED
    if not padded:
        return None
    return UNSUPPORTED if keyless else key_padding_mask


def other_tensors(kwargs: dict) -> bool:
    """A tensor argument we do not interpret (e.g. transformers 4.x's ``causal_attention_mask``)."""
    return any(isinstance(value, torch.Tensor) for value in kwargs.values())


def projected_attention(module: nn.Module, query_input: torch.Tensor, key_input: torch.Tensor,
                        value_input: torch.Tensor, attention_mask: Optional[torch.Tensor], causal: bool,
                        kwargs: dict) -> Optional[torch.Tensor]:
    """``o_proj(attention(q_proj(query_input), k_proj(key_input), v_proj(value_input)))`` of an HF
    attention module with q / k / v / o projections (ViT, CLIP, DETR), the heads read in place from
    the projections' (B, N, H, d) outputs; None for a call the op cannot take exactly (the caller
    then runs the original forward): tensor arguments it does not know, attention weights asked
    for, attention dropout in training, a mask key_padding_mask_for refuses."""
    dropout = getattr(module, "dropout", getattr(module, "attention_dropout", 0.0))
    if other_tensors(kwargs) or kwargs.get("output_attentions") or (module.training and dropout > 0):
        return None
    batch, n_q = query_input.shape[:2]
    n_kv = key_input.shape[1]
    key_padding_mask = key_padding_mask_for(attention_mask, n_q, n_kv, causal, causal)
    if key_padding_mask is UNSUPPORTED:
        return None
    head_dim = module.head_dim
    q = module.q_proj(query_input).view(batch, n_q, -1, head_dim)  # (B, N, H, d): no transpose needed
    k = module.k_proj(key_input).view(batch, n_kv, -1, head_dim)
    v = module.v_proj(value_input).view(batch, n_kv, -1, head_dim)
    scale = getattr(module, "scaling", getattr(module, "scale", None))
    out = vtkernels.attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask, scale=scale,
                              layout="bnhd", backend=module._vtkernels_backend)
    out_proj = module.o_proj if hasattr(module, "o_proj") else module.out_proj
    return out_proj(out.reshape(batch, n_q, -1))
