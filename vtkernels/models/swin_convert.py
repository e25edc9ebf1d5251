"""timm / HF Swin -> vtkernels Swin: configs and state_dicts (ours uses timm's names)."""

from __future__ import annotations

import re

from vtkernels.models.swin import SwinConfig
from vtkernels.nn.swin import hf_to_timm_attention_state_dict


def _square(value, name: str) -> int:
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] != value[1]:
            raise NotImplementedError(f"{name} must be square, got {tuple(value)}")
        return int(value[0])
    return int(value)


def config_from_timm(model) -> SwinConfig:
    embed = model.patch_embed
    first_block = model.layers[0].blocks[0]
    return SwinConfig(img_size=_square(embed.img_size, "img_size"), patch_size=_square(embed.patch_size, "patch_size"),
                      in_chans=embed.proj.in_channels, embed_dim=embed.proj.out_channels,
                      depths=tuple(len(stage.blocks) for stage in model.layers),
                      num_heads=tuple(stage.blocks[0].attn.num_heads for stage in model.layers),
                      window_size=_square(first_block.window_size, "window_size"),
                      mlp_ratio=first_block.mlp.fc1.out_features / first_block.mlp.fc1.in_features,
                      qkv_bias=first_block.attn.qkv.bias is not None, num_classes=model.num_classes,
                      eps=model.norm.eps,
                      drop_path_rate=_last_drop_path(model))


def _last_drop_path(model) -> float:
    """timm's drop-path rate: its schedule ends at the rate in the last block (of any stage)."""
    blocks = [block for stage in model.layers for block in stage.blocks]
    return getattr(blocks[-1].drop_path1, "drop_prob", 0.0) if blocks else 0.0


def state_dict_from_timm(state: dict) -> dict:
    # Buffers rebuilt on our side (relative_position_index, attn_mask) are dropped.
    return {k: v for k, v in state.items() if not k.endswith(("relative_position_index", "attn_mask"))}


def config_from_hf(config, has_head: bool) -> SwinConfig:
    """HF's drop_path_rate is not carried: HF's SwinLayer drops only the attention branch, ours (timm's)
    both; set ``drop_path_rate`` on the config to train with stochastic depth."""
    if config.hidden_act != "gelu":
        raise ValueError(f"only hidden_act='gelu' is supported, got {config.hidden_act!r}")
    if getattr(config, "use_absolute_embeddings", False):
        raise NotImplementedError("absolute position embeddings are not supported")
    return SwinConfig(img_size=_square(config.image_size, "image_size"),
                      patch_size=_square(config.patch_size, "patch_size"), in_chans=config.num_channels, embed_dim=config.embed_dim, depths=tuple(config.depths),
                      num_heads=tuple(config.num_heads), window_size=config.window_size, mlp_ratio=config.mlp_ratio,
                      qkv_bias=config.qkv_bias, num_classes=config.num_labels if has_head else 0,
                      eps=config.layer_norm_eps, pad_first=True)


def state_dict_from_hf(state: dict, num_stages: int) -> dict:
    prefix = "swin." if any(k.startswith("swin.") for k in state) else ""
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} | (
        {"classifier." + k.split("classifier.", 1)[1]: v for k, v in state.items() if k.startswith("classifier.")})
    out = {"patch_embed.proj.weight": state["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": state["embeddings.patch_embeddings.projection.bias"],
           "patch_embed.norm.weight": state["embeddings.norm.weight"],
           "patch_embed.norm.bias": state["embeddings.norm.bias"],
           "norm.weight": state["layernorm.weight"], "norm.bias": state["layernorm.bias"]}
    if "classifier.weight" in state:
        out["head.fc.weight"], out["head.fc.bias"] = state["classifier.weight"], state["classifier.bias"]
    blocks: dict[str, dict] = {}
    for key, value in state.items():
        match = re.match(r"encoder\.layers\.(\d+)\.(blocks\.\d+|downsample)\.(.+)$", key)
        if not match:
            continue
        stage, part, rest = int(match.group(1)), match.group(2), match.group(3)
        if part == "downsample":  # HF closes stage i with it; timm opens stage i + 1
            out[f"layers.{stage + 1}.downsample.{rest}"] = value
            continue
        name = f"layers.{stage}.{part}"
        if rest.startswith("attention."):
            blocks.setdefault(name, {})[rest[len("attention."):]] = value
        else:
            rest = rest.replace("layernorm_before", "norm1").replace("layernorm_after", "norm2")
            out[f"{name}.{rest}"] = value
    for name, attention in blocks.items():
        for key, value in hf_to_timm_attention_state_dict(attention).items():
            out[f"{name}.attn.{key}"] = value
    return out
