"""set_grad_checkpointing() on the model wrappers (ViT, CLIP, Swin, iGPT, DETR): in training, every block
runs again in the backward (its MLP is called twice) and the gradients are those of the plain
forward + backward; turned off, nothing is recomputed; an iGPT forward that fills a KV cache is
not checkpointed (a recompute would write the cache twice)."""

import pytest
import torch

from vtkernels.models import CLIP, DETR, ImageGPT, Swin, ViT
from vtkernels.models.clip import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from vtkernels.models.igpt import ImageGPTConfig, KVCache
from vtkernels.models.swin import SwinConfig
from vtkernels.models.vit import ViTConfig
from vtkernels.testing import assert_close, grads

from model_configs import exact_fp32  # noqa: F401 - autouse fixture
from model_configs import (CONTEXT, DEPTH, EMBED, HEADS, IMAGE, MLP, PATCH, VOCAB, WIDTH, detr_images, hf_detr,
                           perturb_, token_ids)


def _vit():
    model = ViT(ViTConfig(img_size=IMAGE, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS,
                          mlp_dim=MLP, num_classes=5))
    return model, (torch.randn(2, 3, IMAGE, IMAGE),), lambda out: out


def _clip():
    vision = CLIPVisionConfig(image_size=IMAGE, patch_size=PATCH, width=WIDTH, layers=DEPTH, heads=HEADS, mlp_dim=MLP)
    text = CLIPTextConfig(vocab_size=VOCAB, context_length=CONTEXT, width=WIDTH, layers=DEPTH, heads=HEADS,
                          mlp_dim=MLP)
    ids, mask = token_ids(2)
    return CLIP(CLIPConfig(EMBED, vision, text)), (torch.randn(2, 3, IMAGE, IMAGE), ids, mask), \
        lambda out: out.logits_per_image


def _swin():
    config = SwinConfig(img_size=IMAGE, patch_size=4, embed_dim=WIDTH, depths=(2, 2), num_heads=(2, 4), window_size=4,
                        num_classes=5)
    return Swin(config), (torch.randn(2, 3, IMAGE, IMAGE),), lambda out: out


def _igpt():
    model = ImageGPT(ImageGPTConfig(vocab_size=33, n_positions=16, dim=WIDTH, depth=DEPTH, num_heads=HEADS))
    return model, (torch.randint(0, 33, (2, 16)),), lambda out: out


def _detr():  # (encoder and decoder layers; the ResNet backbone is not checkpointed)
    return DETR.from_hf(hf_detr()), detr_images(), lambda out: out.logits


MODELS = {"ViT": _vit, "CLIP": _clip, "Swin": _swin, "iGPT": _igpt, "DETR": _detr}


def _mlps(model):
    return [m for name, m in model.named_modules() if name.endswith("mlp")]


@pytest.mark.parametrize("name", MODELS)
def test_grad_checkpointing_recomputes_blocks_with_equal_gradients(name, device):
    model, inputs, logits = MODELS[name]()
    model, inputs = perturb_(model).to(device).train(), [t.to(device) for t in inputs]
    calls = []
    for mlp in _mlps(model):
        mlp.register_forward_pre_hook(lambda *_: calls.append(1))  # (a recompute stops once all is saved)
    n_blocks = len(_mlps(model))

    def gradients():
        calls.clear()
        out = logits(model(*inputs))
        return grads(out, list(model.parameters()), torch.ones_like(out))

    plain = gradients()
    assert len(calls) == n_blocks
    assert model.set_grad_checkpointing() is model
    checkpointed = gradients()
    assert len(calls) == 2 * n_blocks  # each block again in the backward
    kept = [i for i, g in enumerate(plain) if g is not None]
    assert_close([checkpointed[i] for i in kept], [plain[i] for i in kept], torch.float32, tol=1e-6)
    with torch.no_grad():
        calls.clear()
        model(*inputs)
        assert len(calls) == n_blocks  # nothing to recompute without a gradient
    model.set_grad_checkpointing(False)
    gradients()
    assert len(calls) == n_blocks


def test_igpt_forward_with_a_cache_is_not_checkpointed(device):
    model, (ids,), _ = _igpt()
    model = perturb_(model).to(device).train().set_grad_checkpointing()
    cache = KVCache(model.config, 2, device, torch.float32)
    calls = []
    for mlp in _mlps(model):
        mlp.register_forward_pre_hook(lambda *_: calls.append(1))  # (a recompute stops once all is saved)
    out = model.forward_features(ids.to(device), cache)
    out.sum().backward()
    assert len(calls) == DEPTH
