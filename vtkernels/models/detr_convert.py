"""HF DETR -> vtkernels DETR: config and state_dict (names are HF's, minus the ``model.`` prefix)."""

from __future__ import annotations

from vtkernels.models.detr import DetrConfig


def config_from_hf(hf_config, backbone_channels: int) -> DetrConfig:
    if hf_config.activation_function != "relu":
        raise ValueError(f"only activation_function='relu' is supported, got {hf_config.activation_function!r}")
    return DetrConfig(d_model=hf_config.d_model, encoder_layers=hf_config.encoder_layers,
                      decoder_layers=hf_config.decoder_layers, encoder_heads=hf_config.encoder_attention_heads,
                      decoder_heads=hf_config.decoder_attention_heads, encoder_ffn_dim=hf_config.encoder_ffn_dim,
                      decoder_ffn_dim=hf_config.decoder_ffn_dim, num_queries=hf_config.num_queries,
                      num_labels=hf_config.num_labels, backbone_channels=backbone_channels)


def state_dict_from_hf(hf_state: dict, has_head: bool) -> dict:
    out = {}
    for name, value in hf_state.items():
        if has_head and name.startswith("model."):
            name = name[len("model."):]
        if name.startswith("backbone.model."):
            name = "backbone." + name[len("backbone.model."):]
        out[name] = value
    return out
