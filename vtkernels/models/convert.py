"""State-dict conversion from HF transformers / timm names to ours (timm's block names).

Conversion is a table of regex renames applied to the source state_dict, then the separate
q / k / v projections of HF are concatenated into timm's fused ``attn.qkv`` (rows ordered
q, k, v; heads contiguous inside each, which is how both libraries split the projection).
Tensors are reshaped to our parameter's shape where only the view differs (HF's cls token (D)
vs our (1, 1, D)); a missing or unexpected key is an error naming the keys.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping, Optional

import torch
from torch import nn

from vtkernels.nn.mlp import activation_name

# (pattern, replacement) pairs; the first matching pattern renames a key; replacement None drops it.
Rules = Iterable[tuple[str, Optional[str]]]

_LAYER = r"(?:layers|encoder\.layers|encoder\.layer)\.(\d+)"  # HF 5.x and 4.x layer containers

HF_VIT_RULES: Rules = (
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.(weight|bias)$", r"patch_embed.proj.\1"),
    (r"^embeddings\.mask_token$", None),
    (_LAYER + r"\.layernorm_before\.(\w+)$", r"blocks.\1.norm1.\2"),
    (_LAYER + r"\.layernorm_after\.(\w+)$", r"blocks.\1.norm2.\2"),
    (_LAYER + r"\.attention\.(?:attention\.)?(?:q_proj|query)\.(\w+)$", r"blocks.\1.attn.q.\2"),
    (_LAYER + r"\.attention\.(?:attention\.)?(?:k_proj|key)\.(\w+)$", r"blocks.\1.attn.k.\2"),
    (_LAYER + r"\.attention\.(?:attention\.)?(?:v_proj|value)\.(\w+)$", r"blocks.\1.attn.v.\2"),
    (_LAYER + r"\.attention\.(?:o_proj|output\.dense)\.(\w+)$", r"blocks.\1.attn.proj.\2"),
    (_LAYER + r"\.(?:mlp\.fc1|intermediate\.dense)\.(\w+)$", r"blocks.\1.mlp.fc1.\2"),
    (_LAYER + r"\.(?:mlp\.fc2|output\.dense)\.(\w+)$", r"blocks.\1.mlp.fc2.\2"),
    (r"^layernorm\.(\w+)$", r"norm.\1"),
    (r"^classifier\.(\w+)$", r"head.\1"),
    (r"^pooler\.dense\.(\w+)$", r"pooler.\1"),  # ViTModel's tanh pooler (ViTConfig.pooler_dim)
)

_CLIP_TOWER_RULES: Rules = (
    (r"^embeddings\.position_ids$", None),  # a persistent buffer in older transformers
    (_LAYER + r"\.layer_norm1\.(\w+)$", r"blocks.\1.norm1.\2"),
    (_LAYER + r"\.layer_norm2\.(\w+)$", r"blocks.\1.norm2.\2"),
    (_LAYER + r"\.self_attn\.([qkv])_proj\.(\w+)$", r"blocks.\1.attn.\2.\3"),
    (_LAYER + r"\.self_attn\.out_proj\.(\w+)$", r"blocks.\1.attn.proj.\2"),
    (_LAYER + r"\.mlp\.(fc1|fc2)\.(\w+)$", r"blocks.\1.mlp.\2.\3"),
)

HF_CLIP_VISION_RULES: Rules = (
    (r"^embeddings\.class_embedding$", "cls_token"),
    (r"^embeddings\.patch_embedding\.weight$", "patch_embed.proj.weight"),
    (r"^embeddings\.position_embedding\.weight$", "pos_embed"),
    (r"^pre_layrnorm\.(\w+)$", r"ln_pre.\1"),
    (r"^post_layernorm\.(\w+)$", r"ln_post.\1"),
    *_CLIP_TOWER_RULES,
)

HF_CLIP_TEXT_RULES: Rules = (
    (r"^embeddings\.token_embedding\.weight$", "token_embedding.weight"),
    (r"^embeddings\.position_embedding\.weight$", "pos_embed"),
    (r"^final_layer_norm\.(\w+)$", r"ln_final.\1"),
    *_CLIP_TOWER_RULES,
)


def rename(state: Mapping[str, torch.Tensor], rules: Rules, prefix: str = "") -> dict[str, torch.Tensor]:
    """Apply the first matching rule to each key; a key no rule matches is an error."""
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    out, unmatched = {}, []
    for key, value in state.items():
        for pattern, replacement in compiled:
            if pattern.search(key):
                if replacement is not None:
                    out[prefix + pattern.sub(replacement, key)] = value
                break
        else:
            unmatched.append(key)
    if unmatched:
        raise ValueError(f"cannot convert these weights (no rule for them): {unmatched[:8]}"
                         f"{' ...' if len(unmatched) > 8 else ''}")
    return out


def fuse_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``*.attn.q/k/v.{weight,bias}`` -> ``*.attn.qkv.{weight,bias}`` (concatenated q, k, v)."""
    out = {}
    for key, value in state.items():
        match = re.match(r"^(.*\.attn)\.([qkv])\.(weight|bias)$", key)
        if not match:
            out[key] = value
        elif match.group(2) == "q":
            base, kind = match.group(1), match.group(3)
            parts = [state[f"{base}.{name}.{kind}"] for name in "qkv"]
            out[f"{base}.qkv.{kind}"] = torch.cat(parts, dim=0)
    return out


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def load_converted(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``module`` (reshaping views to our shapes); every parameter must be covered."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"converted weights do not fit the model: missing {missing[:8]}, unexpected {unexpected[:8]}")
    shaped = {}
    for key, value in state.items():
        target = own[key]
        if value.shape != target.shape:
            if value.numel() != target.numel():
                raise ValueError(f"{key}: source shape {tuple(value.shape)} does not fit {tuple(target.shape)}")
            value = value.reshape(target.shape)
        shaped[key] = value
    module.load_state_dict(shaped, strict=True)


def hf_activation(name: str) -> str:
    """HF ``hidden_act`` -> ours."""
    table = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "quick_gelu": "quick_gelu"}
    if name not in table:
        raise ValueError(f"unsupported HF hidden_act {name!r}; supported: {sorted(table)}")
    return table[name]


def module_activation(act: nn.Module) -> str:
    """A timm MLP's activation module -> ours."""
    name = activation_name(act)
    if name is None:
        raise ValueError(f"unsupported activation {type(act).__name__}; supported: GELU, GELU(tanh), QuickGELU, ReLU")
    return name
