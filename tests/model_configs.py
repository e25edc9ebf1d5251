"""Tiny model configurations shared by the model and optimize() tests.

Small enough for the Triton interpreter on the CPU; head_dim 32 (a size the attention kernels
take), 17 tokens (4x4 patches + CLS), odd MLP widths, and randomly initialized weights that are
perturbed away from their init (non-unit norms, non-zero biases) so that no term is trivially zero.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

IMAGE, PATCH, WIDTH, HEADS, DEPTH, MLP, CLASSES = 32, 8, 64, 2, 2, 96, 5
VOCAB, CONTEXT, EMBED = 99, 16, 24


@pytest.fixture(autouse=True)
def exact_fp32():
    """No tf32 on the GPU (cuDNN convolutions, matmuls, the Triton patch-embedding GEMM follow these
    flags): the fp32 comparisons are meant at fp32 precision. Import it into a test module to use.
    (Saved and restored by hand: torch's cuBLAS flag object is no plain attribute holder, and
    pytest's monkeypatch fails to restore it on some pytest versions.)"""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def perturb_(model: nn.Module, scale: float = 0.05) -> nn.Module:
    """Add noise to every floating parameter (LayerNorm weights stop being 1, biases 0)."""
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.dtype) * scale)
    return model


def hf_vit_config(**overrides):
    from transformers import ViTConfig

    values = dict(image_size=IMAGE, patch_size=PATCH, hidden_size=WIDTH, num_hidden_layers=DEPTH,
                  num_attention_heads=HEADS, intermediate_size=MLP, num_labels=CLASSES, hidden_act="gelu")
    return ViTConfig(**{**values, **overrides})


def hf_clip_config(eos_token_id: int = 2, attn_implementation: str = "sdpa"):
    """eos_token_id=2 selects HF's argmax-of-ids EOT rule (OpenAI); any other id the first match."""
    from transformers import CLIPConfig

    text = dict(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=DEPTH,
                num_attention_heads=HEADS, max_position_embeddings=CONTEXT, bos_token_id=0, pad_token_id=1,
                eos_token_id=eos_token_id)
    vision = dict(image_size=IMAGE, patch_size=PATCH, hidden_size=WIDTH, intermediate_size=MLP,
                  num_hidden_layers=DEPTH, num_attention_heads=HEADS)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=EMBED)
    config._attn_implementation = attn_implementation
    config.text_config._attn_implementation = attn_implementation
    config.vision_config._attn_implementation = attn_implementation
    return config


def hf_vit(classifier: bool = True, pooler: bool = False, **overrides) -> nn.Module:
    from transformers import ViTForImageClassification, ViTModel

    config = hf_vit_config(**overrides)
    model = ViTForImageClassification(config) if classifier else ViTModel(config, add_pooling_layer=pooler)
    return perturb_(model).eval()


def hf_vit_family(name: str, **overrides) -> tuple[nn.Module, dict]:
    """(model, forward inputs) of one of the HF families optimize() treats as ViT or CLIP under
    another name, at the tiny ViT / CLIP sizes: DeiT, ViT-MSN, I-JEPA, ViT-MAE (fixed masking
    noise), DINOv2 (with registers), SigLIP, SigLIP 2 and MetaCLIP 2 (image and text towers, padded
    text; padded patches for SigLIP 2)."""
    import transformers

    images = torch.randn(2, 3, IMAGE, IMAGE)
    vision = dict(image_size=IMAGE, patch_size=PATCH, hidden_size=WIDTH, num_hidden_layers=DEPTH,
                  num_attention_heads=HEADS)
    inputs = {"pixel_values": images}
    if name in ("DeiT", "ViTMSN", "IJepa", "ViTMAE"):
        config = getattr(transformers, f"{name}Config")(**vision, intermediate_size=MLP, **overrides)
        if name == "ViTMAE":
            inputs["noise"] = torch.rand(2, (IMAGE // PATCH) ** 2)  # which patches are kept
    elif name in ("Dinov2", "Dinov2WithRegisters"):
        # (mlp_ratio is an int in transformers 5)
        config = getattr(transformers, f"{name}Config")(**vision, mlp_ratio=2, **overrides)
    elif name in ("Siglip", "Siglip2", "MetaClip2"):
        # MetaCLIP 2 pools the first eos_token_id (token_ids' EOT); SigLIP the last token
        text = dict(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=DEPTH,
                    num_attention_heads=HEADS, max_position_embeddings=CONTEXT, bos_token_id=0,
                    eos_token_id=VOCAB - 1, pad_token_id=1)
        vision["intermediate_size"] = MLP
        if name == "Siglip2":  # patches in, flattened (NaFlex): the second image's last 4 are padding
            patches = (IMAGE // PATCH) ** 2
            vision = {**vision, "num_patches": patches}
            del vision["image_size"]
            inputs = {"pixel_values": torch.randn(2, patches, 3 * PATCH * PATCH),
                      "pixel_attention_mask": torch.ones(2, patches, dtype=torch.long),
                      "spatial_shapes": torch.tensor([[IMAGE // PATCH] * 2] * 2)}
            inputs["pixel_attention_mask"][1, -4:] = 0
        config = getattr(transformers, f"{name}Config")(text_config=text, vision_config=vision)
        inputs["input_ids"], inputs["attention_mask"] = token_ids(2)  # padded text: key padding masks
    else:
        raise ValueError(name)
    model = getattr(transformers, f"{name}Model")(config)
    return perturb_(model).eval(), inputs


def hf_clip(**kwargs) -> nn.Module:
    from transformers import CLIPModel

    return perturb_(CLIPModel(hf_clip_config(**kwargs))).eval()


IGPT_POSITIONS = 16


def hf_igpt(n_layer: int = 2, seed: int = 0, **overrides) -> nn.Module:
    """HF ImageGPTForCausalImageModeling: 33 tokens (32 colours + SOS), 16 positions, head_dim 64."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.ImageGPTConfig(vocab_size=33, n_positions=IGPT_POSITIONS, n_embd=128, n_layer=n_layer,
                                         n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **overrides)
    lm = transformers.ImageGPTForCausalImageModeling(config).eval()
    with torch.no_grad():  # HF initializes the norms to 1: make them matter
        for name, p in lm.named_parameters():
            if "ln" in name:
                p.uniform_(0.5, 1.5)
    return lm


def hf_detr(head: bool = True, auxiliary_loss: bool = False, seed: int = 0) -> nn.Module:
    """HF DETR (use_timm_backbone=False: a tiny HF ResNet), d_model 64 in 2 heads (head_dim 32), 10 queries."""
    import transformers

    torch.manual_seed(seed)
    backbone = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                                         layer_type="basic", out_features=["stage4"])
    config = transformers.DetrConfig(use_timm_backbone=False, backbone_config=backbone, d_model=64, encoder_layers=2,
                                     decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                                     encoder_ffn_dim=96, decoder_ffn_dim=80, num_queries=10, num_labels=5,
                                     dropout=0.0, auxiliary_loss=auxiliary_loss)
    model = (transformers.DetrForObjectDetection if head else transformers.DetrModel)(config).eval()
    with torch.no_grad():  # HF initializes norms to (1, 0) and the heads near zero: make them matter
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layernorm" in name:
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.5, 0.5)
    return model


def detr_images(batch: int = 2, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels, pixel mask) at 128 x 160; the last image is padded right and bottom."""
    pixels = torch.randn(batch, 3, 128, 160, dtype=dtype)
    mask = torch.ones(batch, 128, 160, dtype=torch.long)
    mask[-1, :, 100:] = 0
    mask[-1, 90:] = 0
    return pixels, mask


def pooled(output) -> torch.Tensor:
    """HF get_image/text_features: a tensor in transformers 4.x, an output object in 5.x."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


TRANSFORMERS_5 = int(__import__("transformers").__version__.split(".")[0]) >= 5
needs_transformers_5 = pytest.mark.skipif(not TRANSFORMERS_5, reason="optimize() patches the transformers 5.x "
                                          "module layout (4.x modules are left unpatched)")


def token_ids(batch: int = 3, length: int = 9, eot_positions=(8, 5, 3), eot_id: int = VOCAB - 1,
              pad_id: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask): random tokens < eot_id, the EOT id at each row's position, padding after it."""
    ids = torch.randint(2, eot_id, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    for row, pos in enumerate(eot_positions[:batch]):
        ids[row, pos] = eot_id
        ids[row, pos + 1:] = pad_id
        mask[row, pos + 1:] = 0
    return ids, mask
