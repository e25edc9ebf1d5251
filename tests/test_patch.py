"""vtkernels.optimize: fused modules swapped into HF transformers (ViT, CLIP, Swin) and timm models
in place; counts in the report; outputs and gradients within tolerance of the original model; the
fused path is really taken (calls counted), and masks it cannot express fall back exactly."""

import copy
import inspect

import pytest
import torch
from torch import nn

import vtkernels
from vtkernels.testing import assert_close, grads, rel_error

from model_configs import exact_fp32  # noqa: F401 - autouse fixture
from model_configs import (DEPTH, IMAGE, PATCH, hf_clip, hf_vit, hf_vit_family, needs_transformers_5, perturb_,
                           token_ids)


@pytest.fixture
def add_norm_calls(monkeypatch):
    """Counts the fused residual-add + norm calls of patched layers (vision.add_and_norm)."""
    from vtkernels.patch import vision

    calls, original = [], vision.add_and_norm
    monkeypatch.setattr(vision, "add_and_norm", lambda *args: calls.append(1) or original(*args))
    return calls


KEY_BIASES = ("k_proj.bias", "attention.key.bias", "k_norm.bias")


def _assert_parameter_grads_close(hf, ours, theirs):
    """Each parameter gradient of the patched model (``ours``) within fp32 tolerance of HF's,
    None where HF's is None. The key bias cancels in the softmax: its gradient is rounding noise on
    both sides and is not compared (``key.bias`` in transformers' older nested layout; the bias of
    timm's key norm likewise)."""
    names = [name for name, _ in hf.named_parameters()]
    assert [i for i, g in enumerate(ours) if g is None] == [i for i, g in enumerate(theirs) if g is None]
    kept = [i for i, name in enumerate(names) if not name.endswith(KEY_BIASES) and theirs[i] is not None]
    assert_close([ours[i] for i in kept], [theirs[i] for i in kept], torch.float32, tol=2e-5,
                 names=[names[i] for i in kept])


def _optimized(model, **kwargs):
    return vtkernels.optimize(copy.deepcopy(model), backend="triton", return_report=True, **kwargs)


@needs_transformers_5
def test_hf_vit_forward_and_backward(fused_calls, device):
    hf = hf_vit().to(device)
    fused, report = _optimized(hf)
    assert report.replaced == {"LayerNorm": 2 * DEPTH + 1, "Attention": DEPTH, "PatchEmbed": 1, "Mlp": DEPTH,
                               "AddNorm": DEPTH}
    assert fused.vtkernels_report is report and report.total == 5 * DEPTH + 2
    assert isinstance(fused.vit.layers[0].layernorm_before, vtkernels.nn.LayerNorm)
    images = torch.randn(2, 3, IMAGE, IMAGE, device=device)
    out = fused(images).logits
    assert fused_calls == {"attention": DEPTH, "patch_embed": 1, "window_attention": 0,
                           "patch_merging_norm": 0, "quick_gelu": 0, "mlp": DEPTH}
    expected = hf(images).logits
    assert_close(out, expected, torch.float32, names=["logits"])
    cotangent = torch.randn_like(out)
    names = [name for name, _ in fused.named_parameters()]
    assert names == [name for name, _ in hf.named_parameters()]  # same parameters, same names
    _assert_parameter_grads_close(hf, grads(out, list(fused.parameters()), cotangent),
                                  grads(expected, list(hf.parameters()), cotangent))


@needs_transformers_5
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("padding", [False, True])
def test_hf_clip(fused_calls, attn_implementation, padding, device):
    hf = hf_clip(attn_implementation=attn_implementation).to(device)
    fused, report = _optimized(hf)
    # vision: 2 per layer + pre + post; text: 2 per layer + final; an MLP and its QuickGELU per layer
    assert report.replaced == {"LayerNorm": 4 * DEPTH + 3, "Attention": 2 * DEPTH, "PatchEmbed": 1,
                               "Mlp": 2 * DEPTH, "QuickGELU": 2 * DEPTH, "AddNorm": 2 * DEPTH}
    images = torch.randn(3, 3, IMAGE, IMAGE, device=device)
    ids, mask = (t.to(device) for t in token_ids(3))
    mask = mask if padding else None
    with torch.no_grad():
        out = fused(input_ids=ids, pixel_values=images, attention_mask=mask)
        expected = hf(input_ids=ids, pixel_values=images, attention_mask=mask)
    # the causal (+ padding) masks are taken by the op: no fallback
    assert fused_calls == {"attention": 2 * DEPTH, "patch_embed": 1, "window_attention": 0, "patch_merging_norm": 0,
                           "quick_gelu": 0, "mlp": 2 * DEPTH}  # the fused MLP applies QuickGELU itself
    assert_close([out.logits_per_image, out.text_model_output.last_hidden_state],
                 [expected.logits_per_image, expected.text_model_output.last_hidden_state], torch.float32,
                 names=["logits_per_image", "text last_hidden_state"])


def _nested_dinov2_attention(model: nn.Module) -> bool:
    """Whether a DINOv2 model has the attention layout of transformers before its DINOv2 refactor
    (e.g. 5.17, the GPU machine's): ViT's old attention.query / key / value and output.dense, a
    layer forward without attention_mask. optimize() leaves those layers, attentions and MLPs alone."""
    layer = getattr(getattr(model, "encoder", None), "layer", [None])[0]
    return type(model).__name__.startswith("Dinov2") and not hasattr(layer.attention, "q_proj")


# (family, report, fused calls): ViT's layers in DeiT, ViT-MSN, I-JEPA, ViT-MAE and DINOv2 (norms: 2
# per layer + the final one; the attention residual added in the second norm, after DINOv2's layer
# scale) and their patch projection; SigLIP / SigLIP 2: CLIP's layers in both towers, plus the MLP
# and norm of the image tower's attention-pooling head (and SigLIP's patch embedding, without a
# class token); MetaCLIP 2: all of CLIP's patches.
VIT_LAYERS = ({"LayerNorm": 2 * DEPTH + 1, "AddNorm": DEPTH, "Attention": DEPTH, "Mlp": DEPTH, "PatchEmbed": 1},
              {"attention": DEPTH, "mlp": DEPTH, "patch_embed": 1})
VIT_FAMILIES = [
    *((name, *VIT_LAYERS) for name in ("DeiT", "ViTMSN", "IJepa", "ViTMAE", "Dinov2", "Dinov2WithRegisters")),
    ("Siglip", {"LayerNorm": 4 * DEPTH + 3, "AddNorm": 2 * DEPTH, "Attention": 2 * DEPTH, "Mlp": 2 * DEPTH + 1,
                "PatchEmbed": 1},
     {"attention": 2 * DEPTH, "mlp": 2 * DEPTH + 1, "patch_embed": 1}),
    ("Siglip2", {"LayerNorm": 4 * DEPTH + 3, "AddNorm": 2 * DEPTH, "Attention": 2 * DEPTH, "Mlp": 2 * DEPTH + 1},
     {"attention": 2 * DEPTH, "mlp": 2 * DEPTH + 1, "patch_embed": 0}),  # (patches in: a Linear, HF's)
    ("MetaClip2", {"LayerNorm": 4 * DEPTH + 3, "AddNorm": 2 * DEPTH, "Attention": 2 * DEPTH, "Mlp": 2 * DEPTH,
                   "QuickGELU": 2 * DEPTH, "PatchEmbed": 1},
     {"attention": 2 * DEPTH, "mlp": 2 * DEPTH, "patch_embed": 1}),
]


@needs_transformers_5
@pytest.mark.parametrize("name, replaced, calls", VIT_FAMILIES, ids=[case[0] for case in VIT_FAMILIES])
def test_hf_vit_and_clip_families(name, replaced, calls, fused_calls, add_norm_calls, device):
    """HF models whose modules are ViT's or CLIP's under other names get the same patches, with
    outputs and parameter gradients within tolerance of the original model."""
    hf, inputs = hf_vit_family(name)
    hf, inputs = hf.to(device), {key: value.to(device) for key, value in inputs.items()}
    if _nested_dinov2_attention(hf):  # unpatched rather than wrong: only the norms and patch projection
        replaced, calls = {"LayerNorm": 2 * DEPTH + 1, "PatchEmbed": 1}, {"attention": 0, "mlp": 0, "patch_embed": 1}
    fused, report = _optimized(hf)
    assert report.replaced == replaced
    outputs = [o for o in fused(**inputs).values() if isinstance(o, torch.Tensor) and o.is_floating_point()]
    assert {key: fused_calls[key] for key in calls} == calls
    assert len(add_norm_calls) == replaced.get("AddNorm", 0)  # each fused layer ran its own forward
    expected = [o for o in hf(**inputs).values() if isinstance(o, torch.Tensor) and o.is_floating_point()]
    assert_close(outputs, expected, torch.float32)
    differentiable = [i for i, o in enumerate(outputs) if o.requires_grad]  # (not ViT-MAE's patch mask)
    cotangents = [torch.randn_like(outputs[i]) for i in differentiable]
    ours = grads([outputs[i] for i in differentiable], list(fused.parameters()), cotangents)
    _assert_parameter_grads_close(hf, ours, grads([expected[i] for i in differentiable], list(hf.parameters()),
                                                  cotangents))


@needs_transformers_5
def test_hf_dinov2_drop_path_in_training_takes_hf_layer(device):
    """Stochastic depth is HF's: a training DINOv2 layer with drop path runs its own forward (same
    random draws as the original model under the same seed), its attention and MLP still fused."""
    hf, inputs = hf_vit_family("Dinov2", drop_path_rate=0.5)
    if _nested_dinov2_attention(hf):
        pytest.skip("this transformers' DINOv2 layers are not patched (test_hf_vit_and_clip_families checks that)")
    hf, inputs = hf.to(device).train(), {key: value.to(device) for key, value in inputs.items()}
    fused, report = _optimized(hf)
    assert report.replaced["AddNorm"] == DEPTH
    outputs = []
    for model in (fused, hf):
        torch.manual_seed(7)
        outputs.append(model(**inputs).last_hidden_state)
    assert_close(outputs[0], outputs[1], torch.float32)


@needs_transformers_5
def test_hf_siglip_attention_ignores_a_passed_causal_flag(device):
    """SigLIP's attention drops its keyword arguments (is_causal included): bidirectional always."""
    hf, _ = hf_vit_family("Siglip")
    attention = hf.vision_model.encoder.layers[0].self_attn.to(device)
    fused = _optimized(attention)[0]
    x = torch.randn(2, 5, attention.embed_dim, device=device)
    with torch.no_grad():
        assert_close(fused(x, is_causal=True)[0], attention(x, is_causal=True)[0], torch.float32)


@needs_transformers_5
def test_hf_gradient_checkpointing_recomputes_patched_layers(fused_calls, device):
    """HF checkpoints a layer inside its class's forward, which the patched instance forward
    bypasses: the patch checkpoints itself, so the backward recomputes each fused layer (its MLP
    runs twice) and the gradients stay HF's."""
    hf = hf_vit().to(device).train()
    hf.gradient_checkpointing_enable()
    fused, _ = _optimized(hf)
    images = torch.randn(2, 3, IMAGE, IMAGE, device=device)
    out = fused(images).logits
    assert fused_calls["mlp"] == DEPTH
    cotangent = torch.randn_like(out)
    ours = grads(out, list(fused.parameters()), cotangent)
    assert fused_calls["mlp"] == 2 * DEPTH  # recomputed in the backward
    expected = hf(images).logits
    _assert_parameter_grads_close(hf, ours, grads(expected, list(hf.parameters()), cotangent))


@needs_transformers_5
def test_hf_mask_is_read_once_per_forward(monkeypatch, device):
    """HF hands every text layer the same padding mask: it is read (one host sync) once."""
    from vtkernels.patch import common

    analysed = []
    original = common._analyse_mask
    monkeypatch.setattr(common, "_analyse_mask", lambda *args: analysed.append(args[0]) or original(*args))
    hf = hf_clip(attn_implementation="sdpa").to(device)
    fused, _ = _optimized(hf)
    ids, mask = (t.to(device) for t in token_ids(3))
    with torch.no_grad():
        fused.get_text_features(input_ids=ids, attention_mask=mask)
    assert len(analysed) == 1 and DEPTH > 1


def test_mask_reading_is_cached_while_the_mask_is_unchanged(monkeypatch):
    from vtkernels.patch import common

    analysed = []
    original = common._analyse_mask
    monkeypatch.setattr(common, "_analyse_mask", lambda *args: analysed.append(args[0]) or original(*args))
    mask = torch.zeros(2, 1, 1, 5)
    mask[1, ..., 3:] = torch.finfo(torch.float32).min
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    for _ in range(2):
        assert torch.equal(common.key_padding_mask_for(mask, 5, 5, False, False), padding)
    assert len(analysed) == 1
    mask[1, ..., 3:] = 0  # an in-place write: read again
    assert common.key_padding_mask_for(mask, 5, 5, False, False) is None and len(analysed) == 2
    assert common.key_padding_mask_for(mask, 4, 5, False, False) is None and len(analysed) == 3  # another call
    with torch.inference_mode():  # no version counter: never cached
        frozen = mask.clone()
        for _ in range(2):
            common.key_padding_mask_for(frozen, 5, 5, False, False)
    assert len(analysed) == 5


@needs_transformers_5
def test_mask_the_op_cannot_express_falls_back(fused_calls, device):
    hf = hf_clip(attn_implementation="eager").to(device)
    fused, _ = _optimized(hf)
    attention = fused.text_model.encoder.layers[0].self_attn
    x = torch.randn(2, 5, attention.embed_dim, device=device)
    mask = torch.zeros(2, 1, 5, 5, device=device)
    mask[0, 0, 2, 1] = torch.finfo(torch.float32).min  # one query blind to one key: not causal + padding
    with torch.no_grad():
        out, _ = attention(x, mask)
        expected, _ = hf.text_model.encoder.layers[0].self_attn(x, mask)
    assert fused_calls["attention"] == 0
    assert rel_error(out, expected) < 1e-6


def _tiny_swin(image: int = IMAGE + 4, window: int = 4):
    from transformers import SwinConfig, SwinForImageClassification

    config = SwinConfig(image_size=image, patch_size=4, embed_dim=32, depths=[2, 2], num_heads=[1, 2],
                        window_size=window, num_labels=5)
    return perturb_(SwinForImageClassification(config)).eval()


@needs_transformers_5
@pytest.mark.parametrize("image, window", [(IMAGE, 4), (IMAGE + 4, 4), (IMAGE, 3)])  # padded maps: 9x9, 8x8/3
def test_hf_swin_norms_and_window_attention(fused_calls, image, window, device):
    """Shifted windows, padding (map not a multiple of the window) and the shrink rule (stage 2: 4x4)."""
    hf = _tiny_swin(image, window).to(device)
    norms = sum(type(m) is nn.LayerNorm for m in hf.modules())
    fused, report = _optimized(hf)
    assert report.replaced == {"LayerNorm": norms, "WindowAttention": 4, "PatchMerging": 1, "PatchEmbed": 1,
                               "Mlp": 4}
    images = torch.randn(2, 3, image, image, device=device)
    out = fused(images).logits
    assert fused_calls == {"attention": 0, "patch_embed": 1, "window_attention": 4,
                           "patch_merging_norm": 1, "quick_gelu": 0, "mlp": 4}
    expected = hf(images).logits
    assert_close(out, expected, torch.float32)
    cotangent = torch.randn_like(out)
    ours, theirs = grads(out, list(fused.parameters()), cotangent), grads(expected, list(hf.parameters()), cotangent)
    names = [name for name, _ in hf.named_parameters()]
    kept = [i for i, name in enumerate(names) if not name.endswith("k_proj.bias")]  # cancels in the softmax
    tables = [i for i in kept if name_is_table(names[i])]
    others = [i for i in kept if i not in tables]
    assert_close([ours[i] for i in others], [theirs[i] for i in others], torch.float32, tol=2e-5,
                 names=[names[i] for i in others])
    assert_close([ours[i] for i in tables], [theirs[i] for i in tables], torch.float32, tol=2e-5,
                 names=[names[i] for i in tables])


def name_is_table(name: str) -> bool:
    return name.endswith("relative_position_bias_table")


@needs_transformers_5
@pytest.mark.parametrize("name", ["vit", "clip", "swin"])
def test_autocast_bf16(name, device):
    """fp32 weights under bf16 autocast (fused on the GPU; the CPU has no bf16 interpreter: reference)."""
    images = torch.randn(3, 3, IMAGE, IMAGE, device=device)
    ids, mask = (t.to(device) for t in token_ids(3))
    model, run = {
        "vit": (hf_vit, lambda m: m(images).logits),
        "clip": (hf_clip, lambda m: m(input_ids=ids, pixel_values=images, attention_mask=mask).logits_per_image),
        "swin": (_tiny_swin, lambda m: m(torch.nn.functional.pad(images, (0, 4, 0, 4))).logits),
    }[name]
    model = model().to(device)
    fused = vtkernels.optimize(copy.deepcopy(model), backend=None if device.type == "cuda" else "reference")
    with torch.no_grad():
        expected = run(model)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out, peer = run(fused), run(model)
    assert out.dtype == torch.bfloat16
    assert rel_error(out, expected) < max(3 * rel_error(peer, expected), 1e-2)


@needs_transformers_5
def test_idempotent_and_selective():
    hf = hf_vit()
    fused, first = _optimized(hf, attention=False)
    assert first["Attention"] == 0 and first["LayerNorm"] == 2 * DEPTH + 1
    second = vtkernels.optimize(fused, return_report=True)[1]
    assert second.replaced == {"Attention": DEPTH}  # norms, patch embedding and MLPs were already fused
    assert vtkernels.optimize(fused, return_report=True)[1].total == 0
    assert "Attention: 2" in str(second)


def test_channels_first_norm_subclass_is_left_alone():
    class LayerNorm2d(nn.LayerNorm):  # like timm's: normalizes dim 1 of NCHW
        def forward(self, x):
            return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    model = nn.Sequential(LayerNorm2d(8), nn.LayerNorm(8))
    report = vtkernels.optimize(model, return_report=True)[1]
    assert report.replaced == {"LayerNorm": 1}
    assert type(model[0]) is LayerNorm2d and isinstance(model[1], vtkernels.nn.LayerNorm)


@needs_transformers_5
@pytest.mark.parametrize("family", ["ViT", "Siglip"])
def test_patched_embeddings_fall_back_for_special_calls(family, fused_calls, device):
    hf = (hf_vit() if family == "ViT" else hf_vit_family(family)[0].vision_model).to(device)
    fused, _ = _optimized(hf)
    images = torch.randn(1, 3, IMAGE + PATCH, IMAGE + PATCH, device=device)
    with torch.no_grad():
        out, expected = (model(pixel_values=images, interpolate_pos_encoding=True)[0] for model in (fused, hf))
    assert fused_calls["patch_embed"] == 0
    assert rel_error(out, expected) < 1e-5


@needs_transformers_5
def test_patched_embeddings_fall_back_for_mixed_dtypes(fused_calls):
    """A 16-bit projection with fp32 positions works in HF (the add promotes); the fused op takes one
    dtype, so HF's path runs."""
    hf = hf_vit_family("Siglip")[0].vision_model
    hf.embeddings.patch_embedding.to(torch.bfloat16)
    fused, _ = _optimized(hf)
    images = torch.randn(1, 3, IMAGE, IMAGE)
    with torch.no_grad():
        out, expected = (model(pixel_values=images)[0] for model in (fused, hf))
    assert fused_calls["patch_embed"] == 0
    assert rel_error(out, expected) < 1e-5


@needs_transformers_5
def test_compiled_optimized_model(device):
    hf = hf_vit().to(device)
    fused, _ = _optimized(hf)
    images = torch.randn(2, 3, IMAGE, IMAGE, device=device)
    compiled = torch.compile(fused, backend="aot_eager")
    with torch.no_grad():
        assert rel_error(compiled(images).logits, hf(images).logits) < 1e-5


# --- timm (skipped where timm is not importable) -------------------------------------------------

def _tiny_timm_vit(**kwargs):
    timm = pytest.importorskip("timm")
    return timm.create_model("vit_base_patch16_224", pretrained=False, img_size=IMAGE, patch_size=PATCH, embed_dim=64,
                             depth=DEPTH, num_heads=2, num_classes=5, **kwargs)


@pytest.mark.parametrize("layer_scale", [None, 0.1])
def test_timm_vit(layer_scale, fused_calls, add_norm_calls, device):
    model = perturb_(_tiny_timm_vit(init_values=layer_scale)).eval().to(device)
    fused, report = _optimized(model)
    assert report.replaced == {"LayerNorm": 2 * DEPTH + 1, "Attention": DEPTH, "PatchEmbed": 1, "Mlp": DEPTH,
                               "AddNorm": DEPTH}
    images = torch.randn(2, 3, IMAGE, IMAGE, device=device)
    out = fused(images)
    assert len(add_norm_calls) == DEPTH  # each block ran the fused forward
    assert fused_calls == {"attention": DEPTH, "patch_embed": 1, "window_attention": 0,
                           "patch_merging_norm": 0, "quick_gelu": 0, "mlp": DEPTH}
    expected = model(images)
    assert_close(out, expected, torch.float32)
    cotangent = torch.randn_like(out)
    assert_close(grads(out, list(fused.parameters()), cotangent), grads(expected, list(model.parameters()), cotangent),
                 torch.float32, tol=2e-5)


def test_timm_vit_drop_path_in_training_takes_timm_block(device):
    """Stochastic depth is timm's: a training Block with drop path runs its own forward (the same
    random draws as the original model under the same seed)."""
    model = perturb_(_tiny_timm_vit(drop_path_rate=0.5)).train().to(device)
    fused, report = _optimized(model)
    assert report.replaced["AddNorm"] == DEPTH
    images = torch.randn(2, 3, IMAGE, IMAGE, device=device)
    outputs = []
    for net in (fused, model):
        torch.manual_seed(7)
        outputs.append(net(images))
    assert_close(outputs[0], outputs[1], torch.float32)


@pytest.mark.parametrize("option", ["qk_norm", "scale_norm", "gated", "is_causal"])
def test_timm_attention_variants(option, fused_calls, device):
    """timm Attention's q / k norms, output norm, sigmoid output gate (newer timm) and causal calls
    stay timm's around the fused attention: output and every gradient (input included)."""
    attention_module = pytest.importorskip("timm.layers.attention")
    takes = set(inspect.signature(attention_module.Attention).parameters) | {"is_causal"}
    if option not in takes:
        pytest.skip(f"this timm's Attention has no {option}")
    options = {} if option == "is_causal" else {option: True}
    attention = attention_module.Attention(64, num_heads=2, qkv_bias=True, norm_layer=nn.LayerNorm, **options)
    attention = perturb_(attention).eval().to(device)
    fused, report = _optimized(attention)
    assert report.replaced["Attention"] == 1
    x = torch.randn(2, 9, 64, device=device, requires_grad=True)
    call = {"is_causal": True} if option == "is_causal" else {}
    out, expected = fused(x, **call), attention(x, **call)
    assert fused_calls["attention"] == 1
    assert_close(out, expected, torch.float32)
    cotangent = torch.randn_like(out)
    ours, theirs = grads(out, [x, *fused.parameters()], cotangent), grads(expected, [x, *attention.parameters()],
                                                                         cotangent)
    assert_close(ours[0], theirs[0], torch.float32, tol=2e-5, names=["x"])
    _assert_parameter_grads_close(attention, ours[1:], theirs[1:])


def _tiny_timm_swin(img_size):
    timm = pytest.importorskip("timm")
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=img_size, embed_dim=32,
                              depths=(2, 2), num_heads=(1, 2), window_size=4, num_classes=5)
    return perturb_(model).eval()


@pytest.mark.parametrize("img_size, fused_windows", [
    ((32, 32), 4),  # 8x8 map, shifted; stage 2 (4x4) fits one window: unshifted
    ((36, 36), 4),  # 9x9 map padded to 12x12 (roll, then pad); odd merge to 5x5, padded to 8x8
    ((32, 48), 3),  # stage 2 is 4x6: timm shifts only along W there, which takes timm's own path
])
def test_timm_swin(fused_calls, img_size, fused_windows, device):
    """timm SwinTransformerBlock, PatchMerging and the NHWC PatchEmbed, outputs and every gradient."""
    model = _tiny_timm_swin(img_size).to(device)
    norms = sum(type(m) is nn.LayerNorm for m in model.modules())
    fused, report = _optimized(model)
    assert report.replaced == {"LayerNorm": norms, "WindowAttention": 4, "PatchMerging": 1, "PatchEmbed": 1,
                               "Mlp": 4}
    images = torch.randn(2, 3, *img_size, device=device)
    out = fused(images)
    assert fused_calls == {"attention": 0, "patch_embed": 1, "window_attention": fused_windows,
                           "patch_merging_norm": 1, "quick_gelu": 0, "mlp": 4}
    expected = model(images)
    assert_close(out, expected, torch.float32)
    cotangent = torch.randn_like(out)
    names = [name for name, _ in model.named_parameters()]
    assert names == [name for name, _ in fused.named_parameters()]
    assert_close(grads(out, list(fused.parameters()), cotangent), grads(expected, list(model.parameters()), cotangent),
                 torch.float32, tol=2e-5, names=names)


def test_timm_swin_attention_dropout_in_training_falls_back(fused_calls):
    model = _tiny_timm_swin((32, 32))
    for block in (b for layer in model.layers for b in layer.blocks):
        block.attn.attn_drop.p = 0.1
    fused, _ = _optimized(model)
    fused.train()(torch.randn(2, 3, 32, 32))
    assert fused_calls["window_attention"] == 0 and fused_calls["patch_merging_norm"] == 1
    fused.eval()(torch.randn(2, 3, 32, 32))
    assert fused_calls["window_attention"] == 4


@needs_transformers_5
@pytest.mark.gpu
def test_hf_vit_bf16_on_gpu():
    hf = hf_vit(hidden_size=256, num_attention_heads=4, intermediate_size=512).cuda().bfloat16()
    fused = vtkernels.optimize(copy.deepcopy(hf))
    reference = copy.deepcopy(hf).double()
    images = torch.randn(4, 3, IMAGE, IMAGE, device="cuda")
    with torch.no_grad():
        assert_close(fused(images.bfloat16()).logits, reference(images.double()).logits, torch.bfloat16,
                     same_dtype_ref=hf(images.bfloat16()).logits)


@needs_transformers_5
def test_unknown_tensor_arguments_fall_back(fused_calls):
    """transformers 4.x passes CLIP's causal mask as ``causal_attention_mask``: never ignore it."""
    hf = hf_clip(attn_implementation="eager")
    fused, _ = _optimized(hf)
    attention = fused.text_model.encoder.layers[0].self_attn
    x = torch.randn(2, 5, attention.embed_dim)
    causal = torch.full((5, 5), torch.finfo(torch.float32).min).triu(1)[None, None].expand(2, 1, 5, 5)
    calls = []
    attention._vtkernels_original_forward = lambda *args, **kwargs: calls.append(kwargs) or (x, None)
    attention(x, None, causal_attention_mask=causal)
    assert fused_calls["attention"] == 0 and "causal_attention_mask" in calls[0]
