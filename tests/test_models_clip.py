"""vtkernels.models.CLIP: reference mode == HF CLIPModel with converted weights (embeddings,
logits, loss, hidden states, padding masks, both EOT rules); fused mode == reference mode (the
loss and every parameter gradient); zero-shot helper; checkpoints; torch.compile; bad input."""

import copy

import pytest
import torch
import torch.nn.functional as F

from vtkernels.models import CLIP, CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from vtkernels.testing import assert_close, grads, rel_error

from model_configs import exact_fp32  # noqa: F401 - autouse fixture
from model_configs import (CONTEXT, DEPTH, EMBED, HEADS, IMAGE, MLP, PATCH, VOCAB, WIDTH, hf_clip, perturb_,
                           pooled, token_ids)

F64 = torch.float64


def tiny_clip() -> CLIP:
    vision = CLIPVisionConfig(image_size=IMAGE, patch_size=PATCH, width=WIDTH, layers=DEPTH, heads=HEADS, mlp_dim=MLP)
    text = CLIPTextConfig(vocab_size=VOCAB, context_length=CONTEXT, width=WIDTH, layers=DEPTH, heads=HEADS,
                          mlp_dim=MLP)
    return perturb_(CLIP(CLIPConfig(EMBED, vision, text))).eval()


def inputs(batch=3, dtype=torch.float32, device="cpu"):
    ids, mask = token_ids(batch)
    return torch.randn(batch, 3, IMAGE, IMAGE, dtype=dtype, device=device), ids.to(device), mask.to(device)


# --- reference mode vs HF transformers ----------------------------------------------------------

@pytest.mark.parametrize("padding", [False, True])
def test_reference_matches_hf(padding):
    hf = hf_clip().double()
    ours = CLIP.from_hf(hf, backend="reference")
    assert ours.config.text.eos_token_id is None and ours.config.vision.act == "quick_gelu"
    images, ids, mask = inputs(dtype=F64)
    mask = mask if padding else None
    with torch.no_grad():
        expected = hf(input_ids=ids, pixel_values=images, attention_mask=mask, return_loss=True)
        out = ours(images, ids, mask)
        names = ["image_embeds", "text_embeds", "logits_per_image", "logits_per_text"]
        assert_close([out.image_embeds, out.text_embeds, out.logits_per_image, out.logits_per_text],
                     [expected.image_embeds, expected.text_embeds, expected.logits_per_image,
                      expected.logits_per_text], F64, tol=1e-12, names=names)
        assert_close(ours.loss(images, ids, mask), expected.loss, F64, tol=1e-12, names=["loss"])
        assert_close(ours.visual.forward_features(images), expected.vision_model_output.last_hidden_state, F64,
                     tol=1e-12, names=["vision last_hidden_state"])
        assert_close(ours.text.forward_features(ids, mask), expected.text_model_output.last_hidden_state, F64,
                     tol=1e-12, names=["text last_hidden_state"])
        assert_close(ours.encode_image(images), pooled(hf.get_image_features(pixel_values=images)), F64,
                     tol=1e-12, names=["encode_image"])


def test_reference_matches_hf_first_eos_rule():
    """HF configs whose eos_token_id != 2 pool the first EOS position, not the argmax of the ids."""
    hf = hf_clip(eos_token_id=5).double()
    ours = CLIP.from_hf(hf, backend="reference")
    assert ours.config.text.eos_token_id == 5
    ids, _ = token_ids(3, eot_id=5)
    ids[:, 0] = VOCAB - 1  # the argmax rule would pick position 0
    with torch.no_grad():
        expected = pooled(hf.get_text_features(input_ids=ids))
        assert_close(ours.encode_text(ids), expected, F64, tol=1e-12)


def test_text_tower_is_causal_and_pools_the_eot_token():
    model = tiny_clip().set_backend("reference")
    ids, _ = token_ids(3)
    with torch.no_grad():
        base = model.encode_text(ids)
        # tokens after the EOT position do not change the pooled feature of a causal tower
        later = ids.clone()
        later[1, 6:] = 3
        assert torch.equal(model.encode_text(later)[1], base[1])
        # tokens before it do
        earlier = ids.clone()
        earlier[1, 0] = (earlier[1, 0] + 1) % (VOCAB - 2) + 2
        assert rel_error(model.encode_text(earlier)[1], base[1]) > 1e-3


# --- fused mode vs reference mode ---------------------------------------------------------------

def _loss_and_grads(model, images, ids, mask, backend):
    model.set_backend(backend)
    params = list(model.parameters())
    loss = model.loss(images, ids, mask)
    return loss, grads(loss, params, torch.ones_like(loss))


def test_fused_loss_and_grads_match_reference_fp32(device):
    model = tiny_clip().to(device)
    images, ids, mask = inputs(device=device)
    loss, ours = _loss_and_grads(model, images, ids, mask, "triton")
    ref_loss, ref_grads = _loss_and_grads(copy.deepcopy(model).double(), images.double(), ids, mask, "reference")
    names = [f"d {name}" for name, _ in model.named_parameters()]
    assert_close(loss, ref_loss, torch.float32, names=["loss"])
    kept = [i for i, g in enumerate(ref_grads) if g is not None]  # token rows never looked up get no gradient
    assert_close([ours[i] for i in kept], [ref_grads[i] for i in kept], torch.float32, tol=2e-5,
                 names=[names[i] for i in kept])


def test_fused_embeddings_fp16_within_twice_torch_error(device):
    model = tiny_clip().to(device)
    images, ids, mask = inputs(device=device)
    ref = copy.deepcopy(model).double().set_backend("reference")(images.double(), ids, mask)
    half = copy.deepcopy(model).half()
    with torch.no_grad():
        out = half.set_backend("triton")(images.half(), ids, mask)
        peer = half.set_backend("reference")(images.half(), ids, mask)
    assert_close([out.image_embeds, out.text_embeds], [ref.image_embeds, ref.text_embeds], torch.float16,
                 same_dtype_ref=[peer.image_embeds, peer.text_embeds], names=["image_embeds", "text_embeds"])


@pytest.mark.gpu
def test_fused_bf16_on_gpu():
    vision = CLIPVisionConfig(image_size=64, patch_size=16, width=256, layers=3, heads=4)
    text = CLIPTextConfig(vocab_size=VOCAB, context_length=CONTEXT, width=256, layers=3, heads=4)
    model = perturb_(CLIP(CLIPConfig(128, vision, text))).cuda()
    ids, mask = token_ids(3)
    images = torch.randn(3, 3, 64, 64, device="cuda")
    ids, mask = ids.cuda(), mask.cuda()
    ref_loss, ref_grads = _loss_and_grads(copy.deepcopy(model).double(), images.double(), ids, mask, "reference")
    bf16 = copy.deepcopy(model).bfloat16()
    for backend in ("triton", None):
        loss, ours = _loss_and_grads(bf16, images.bfloat16(), ids, mask, backend)
        peer, _ = _loss_and_grads(bf16, images.bfloat16(), ids, mask, "reference")
        assert_close(loss, ref_loss, torch.bfloat16, same_dtype_ref=peer.float(), names=[f"loss ({backend})"])
        kept = [i for i, g in enumerate(ref_grads) if g is not None]
        assert_close([ours[i] for i in kept], [ref_grads[i] for i in kept], torch.bfloat16, tol=5e-2)


def test_autocast_bf16(device):
    """fp32 weights under bf16 autocast: the text stream (fp32 embeddings) takes bf16 branches."""
    model = tiny_clip().to(device).set_backend(None if device.type == "cuda" else "reference")
    images, ids, mask = inputs(device=device)
    expected = model.loss(images, ids, mask)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss = model.loss(images, ids, mask)
    assert rel_error(loss, expected) < 3e-2
    loss.backward()
    assert torch.isfinite(model.logit_scale.grad) and torch.isfinite(model.text.proj.weight.grad).all()


# --- zero-shot, checkpoints, bad input, compile ---------------------------------------------------

def test_zero_shot_classification_matches_hf():
    hf = hf_clip().double()
    ours = CLIP.from_hf(hf, backend="reference")
    classes, templates = 4, 2
    prompts, mask = token_ids(classes * templates, eot_positions=(8, 5, 3, 7, 6, 4, 8, 2))
    prompts, mask = prompts.view(classes, templates, -1), mask.view(classes, templates, -1)
    images = torch.randn(5, 3, IMAGE, IMAGE, dtype=F64)
    classifier = ours.zero_shot_classifier(prompts, mask)
    assert classifier.shape == (EMBED, classes)
    with torch.no_grad():
        text = F.normalize(pooled(hf.get_text_features(input_ids=prompts.view(-1, prompts.shape[-1]),
                                                       attention_mask=mask.view(-1, mask.shape[-1]))), dim=-1)
        weights = F.normalize(text.view(classes, templates, -1).mean(1), dim=-1).t()
        image = F.normalize(pooled(hf.get_image_features(pixel_values=images)), dim=-1)
        expected = hf.logit_scale.exp() * image @ weights
        assert_close(ours.zero_shot_logits(images, classifier), expected, F64, tol=1e-12)
    single = ours.zero_shot_classifier(prompts[:, 0], mask[:, 0])  # one template: (C, T)
    assert_close(single, F.normalize(text.view(classes, templates, -1)[:, 0], dim=-1).t(), F64, tol=1e-12)


def test_state_dict_names_and_round_trip(tmp_path):
    model = tiny_clip()
    keys = set(model.state_dict())
    for key in ("logit_scale", "visual.patch_embed.proj.weight", "visual.cls_token", "visual.pos_embed",
                "visual.ln_pre.weight", "visual.blocks.0.attn.qkv.weight", "visual.ln_post.bias", "visual.proj.weight",
                "text.token_embedding.weight", "text.pos_embed", "text.blocks.1.mlp.fc2.weight", "text.ln_final.weight",
                "text.proj.weight"):
        assert key in keys, key
    assert "visual.patch_embed.proj.bias" not in keys
    path = tmp_path / "clip.pt"
    model.save(str(path))
    loaded = CLIP.load(str(path), backend="reference")
    assert loaded.config == model.config
    images, ids, mask = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(images, ids, mask).logits_per_image,
                           model.set_backend("reference")(images, ids, mask).logits_per_image)


def test_presets():
    with torch.device("meta"):
        model = CLIP("B/16")
    # OpenAI ViT-B/16: 149.6M parameters
    assert abs(sum(p.numel() for p in model.parameters()) - 149_620_737) < 1000
    with pytest.raises(ValueError, match="preset"):
        CLIP("B/15")


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_batch_of_one_and_empty_batch(backend, device):
    model = tiny_clip().to(device).set_backend(backend)
    images, ids, mask = inputs(device=device)
    with torch.no_grad():
        image_features, text_features = model.encode_image(images), model.encode_text(ids, mask)
        assert rel_error(model.encode_image(images[1:2]), image_features[1:2]) < 1e-5
        assert rel_error(model.encode_text(ids[1:2], mask[1:2]), text_features[1:2]) < 1e-5
        assert model.encode_image(images[:0]).shape == (0, EMBED)
        assert model.encode_text(ids[:0], mask[:0]).shape == (0, EMBED)


def test_bad_input():
    model = tiny_clip().set_backend("reference")
    images, ids, mask = inputs()
    with pytest.raises(ValueError, match="context_length"):
        model.encode_text(torch.randint(0, VOCAB, (1, CONTEXT + 1)))
    with pytest.raises(ValueError, match="input_ids"):
        model.encode_text(ids.float())
    with pytest.raises(ValueError, match="attention_mask"):
        model.encode_text(ids, mask[:, :-1])
    with pytest.raises(ValueError, match="images"):
        model.encode_image(torch.randn(1, 3, IMAGE // 2, IMAGE // 2))


def test_encoders_compile_without_graph_breaks(device):
    model = tiny_clip().to(device).set_backend("triton")
    images, ids, mask = inputs(device=device)
    calls = ((model.encode_image, (images,)), (model.encode_text, (ids, mask)), (model.loss, (images, ids, mask)))
    for fn, args in calls:
        explanation = torch._dynamo.explain(fn)(*args)
        assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(model.loss, backend="aot_eager", fullgraph=True)
    assert rel_error(compiled(images, ids, mask), model.loss(images, ids, mask)) < 1e-6
