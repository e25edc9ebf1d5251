"""vtkernels.models.ViT: reference mode == HF transformers (and timm where importable) with converted
weights; fused mode == reference mode (forward and every parameter gradient); loaders, presets,
checkpoints, uint8 input, torch.compile, bad input."""

import copy

import pytest
import torch

import vtkernels
from vtkernels.models import ViT, ViTConfig
from vtkernels.testing import assert_close, grads, rel_error

from model_configs import exact_fp32  # noqa: F401 - autouse fixture
from model_configs import CLASSES, DEPTH, HEADS, IMAGE, MLP, PATCH, WIDTH, hf_vit, perturb_


def tiny_vit(**overrides) -> ViT:
    config = dict(img_size=IMAGE, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, mlp_dim=MLP,
                  num_classes=CLASSES)
    return perturb_(ViT(ViTConfig(**{**config, **overrides}))).eval()


# --- reference mode vs HF transformers ----------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_reference_matches_hf_classifier(dtype):
    hf = hf_vit().to(dtype)
    ours = ViT.from_hf(hf, backend="reference").eval()
    images = torch.randn(3, 3, IMAGE, IMAGE, dtype=dtype)
    with torch.no_grad():
        expected = hf(images)
        tokens = hf.vit(images).last_hidden_state
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert_close(ours(images), expected.logits, dtype, tol=tol, names=["logits"])
        assert_close(ours.forward_features(images), tokens, dtype, tol=tol, names=["last_hidden_state"])


def test_converted_models_keep_the_source_mode():
    hf = hf_vit()
    assert not ViT.from_hf(hf.eval()).training and ViT.from_hf(hf.train()).training


def test_reference_matches_hf_model_without_head_and_qkv_bias():
    hf = hf_vit(classifier=False, qkv_bias=False, layer_norm_eps=1e-12, hidden_act="gelu_pytorch_tanh").double()
    ours = ViT.from_hf(hf, backend="reference")
    assert ours.config.num_classes == 0 and ours.blocks[0].attn.qkv.bias is None
    assert ours.config.act == "gelu_tanh" and ours.config.eps == 1e-12
    images = torch.randn(2, 3, IMAGE, IMAGE, dtype=torch.float64)
    with torch.no_grad():
        tokens = hf(images).last_hidden_state
        assert_close(ours.forward_features(images), tokens, torch.float64, tol=1e-12)
        assert_close(ours(images), tokens[:, 0], torch.float64, tol=1e-12, names=["pooled CLS"])


def test_reference_matches_hf_model_pooler():
    """ViTModel's tanh pooler (here wider than the model) is kept: forward returns pooler_output."""
    hf = hf_vit(classifier=False, pooler=True, pooler_output_size=WIDTH + 8).double()
    ours = ViT.from_hf(hf, backend="reference")
    assert ours.config.pooler_dim == WIDTH + 8
    images = torch.randn(2, 3, IMAGE, IMAGE, dtype=torch.float64)
    with torch.no_grad():
        expected = hf(images)
        assert_close(ours(images), expected.pooler_output, torch.float64, tol=1e-12, names=["pooler_output"])
        assert_close(ours.forward_features(images), expected.last_hidden_state, torch.float64, tol=1e-12)
    with pytest.raises(ValueError, match="pooler_dim"):
        ViTConfig(pooler_dim=8, global_pool="avg")


def test_reference_matches_hf_interpolated_position_encoding():
    hf = hf_vit().double()
    ours = ViT.from_hf(hf, backend="reference")
    images = torch.randn(2, 3, IMAGE + 2 * PATCH, IMAGE + PATCH, dtype=torch.float64)  # 6x5 grid from 4x4
    with torch.no_grad():
        expected = hf(images, interpolate_pos_encoding=True).logits
        assert_close(ours(images, interpolate_pos_encoding=True), expected, torch.float64, tol=1e-12)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        ours(images)


def test_hf_conversion_is_checked():
    hf = hf_vit()
    state = hf.state_dict()
    state["vit.layers.0.attention.extra.weight"] = torch.zeros(1)
    from vtkernels.models import convert

    with pytest.raises(ValueError, match="no rule"):
        convert.rename(convert.strip_prefix(state, "vit."), convert.HF_VIT_RULES)


# --- reference mode vs timm (GPU machine: timm is importable there) ---------------------------

def _timm_vit(**kwargs):
    timm = pytest.importorskip("timm")
    base = dict(pretrained=False, img_size=IMAGE, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS,
                mlp_ratio=MLP / WIDTH, num_classes=CLASSES)
    return perturb_(timm.create_model("vit_base_patch16_224", **{**base, **kwargs})).eval().double()


@pytest.mark.parametrize("variant", [{}, {"global_pool": "avg", "fc_norm": True}, {"pre_norm": True, "num_classes": 0},
                                     {"qkv_bias": False}, {"init_values": 0.1}, {"no_embed_class": True},
                                     {"reg_tokens": 4, "no_embed_class": True},
                                     {"reg_tokens": 4, "no_embed_class": True, "global_pool": "avg"}])
def test_reference_matches_timm(variant):
    timm_model = _timm_vit(**variant)
    ours = ViT.from_timm(timm_model, backend="reference")
    images = torch.randn(2, 3, IMAGE, IMAGE, dtype=torch.float64)
    with torch.no_grad():
        assert_close(ours(images), timm_model(images), torch.float64, tol=1e-12, names=["logits"])
        assert_close(ours.forward_features(images), timm_model.forward_features(images), torch.float64, tol=1e-12)
    # our names are timm's: the state_dict loads back into timm unchanged
    timm_model.load_state_dict({k: v for k, v in ours.state_dict().items()})


def test_from_timm_converts_deit3():
    """DeiT III: layer scale and a position embedding without the class token's row."""
    timm = pytest.importorskip("timm")
    model = perturb_(timm.create_model("deit3_small_patch16_224", pretrained=False, img_size=IMAGE, patch_size=PATCH,
                                       embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, num_classes=CLASSES)).eval()
    ours = ViT.from_timm(model, backend="reference")
    assert ours.config.no_embed_class and ours.config.init_values and ours.pos_embed.shape[1] == (IMAGE // PATCH) ** 2
    images = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        assert_close(ours(images), model(images), torch.float32, tol=1e-5)


def test_from_timm_warns_that_dropout_is_not_carried():
    with pytest.warns(UserWarning, match=r"dropout \(p = 0.1\) is not carried"):
        ViT.from_timm(_timm_vit(proj_drop_rate=0.1))


def test_from_timm_refuses_unsupported_features():
    with pytest.raises(ValueError, match="register tokens with position rows"):
        ViT.from_timm(_timm_vit(reg_tokens=4))  # (no_embed_class=False: the registers have position rows)
    with pytest.raises(ValueError, match="q/k norm"):
        ViT.from_timm(_timm_vit(qk_norm=True))


# --- fused mode vs reference mode ---------------------------------------------------------------

def _forward_and_grads(model, images, backend, cotangent):
    model.set_backend(backend)
    params = list(model.parameters())
    out = model(images)
    return out, grads(out, params, cotangent)


@pytest.mark.parametrize("variant", [{}, {"global_pool": "avg", "fc_norm": True, "pre_norm": True},
                                     {"init_values": 0.5, "no_embed_class": True},
                                     {"reg_tokens": 2, "no_embed_class": True, "global_pool": "avg"}])
def test_fused_matches_reference_fp32(variant, device):
    """backend="triton" (interpreted on the CPU) vs the float64 reference: logits and every gradient."""
    model = tiny_vit(**variant).to(device)
    images = torch.randn(2, 3, IMAGE, IMAGE, device=device)
    cotangent = torch.randn(2, CLASSES, device=device)
    out, ours = _forward_and_grads(model, images, "triton", cotangent)
    model64 = copy.deepcopy(model).double()
    ref, ref_grads = _forward_and_grads(model64, images.double(), "reference", cotangent.double())
    assert_close(out, ref, torch.float32, names=["logits"])
    names = [name for name, _ in model.named_parameters()]
    assert_close(ours, ref_grads, torch.float32, names=[f"d {n}" for n in names], tol=2e-5)


def test_fused_fp16_within_twice_torch_error(device):
    model = tiny_vit().to(device)
    images = torch.randn(2, 3, IMAGE, IMAGE, device=device)
    ref = copy.deepcopy(model).double().set_backend("reference")(images.double())
    half = copy.deepcopy(model).half()
    with torch.no_grad():
        out = half.set_backend("triton")(images.half())
        peer = half.set_backend("reference")(images.half())
    assert_close(out, ref, torch.float16, same_dtype_ref=peer, names=["logits"])


@pytest.mark.gpu
def test_fused_bf16_on_gpu():
    torch.manual_seed(0)
    config = ViTConfig(img_size=64, patch_size=16, embed_dim=384, depth=4, num_heads=6, num_classes=10)
    model = perturb_(ViT(config)).cuda()
    images = torch.randn(8, 3, 64, 64, device="cuda")
    cotangent = torch.randn(8, 10, device="cuda")
    bf16 = copy.deepcopy(model).bfloat16()
    # The float64 reference computes the bf16 model's function (its rounded weights and inputs).
    # Four bf16 blocks put even torch's own logits ~1.1e-2 off it (measured, CPU), over the
    # single-op bound: the logits get 3e-2 and the sharper check, at most 2x torch's error.
    ref, ref_grads = _forward_and_grads(copy.deepcopy(bf16).double(), images.bfloat16().double(), "reference",
                                        cotangent.double())
    for backend in ("triton", None):
        out, ours = _forward_and_grads(bf16, images.bfloat16(), backend, cotangent)
        peer, _ = _forward_and_grads(bf16, images.bfloat16(), "reference", cotangent)
        assert_close(out, ref, torch.bfloat16, tol=3e-2, same_dtype_ref=peer, names=[f"logits ({backend})"])
        assert_close(ours, ref_grads, torch.bfloat16, tol=5e-2)


@pytest.mark.gpu
def test_cuda_backend_inference_bf16():
    """The CUDA kernels run a whole ViT for inference."""
    reason = vtkernels.backend.extension_failure()
    if reason:
        pytest.skip(reason)
    config = ViTConfig(img_size=64, patch_size=16, embed_dim=384, depth=4, num_heads=6, num_classes=10)
    model = perturb_(ViT(config)).cuda()
    images = torch.randn(8, 3, 64, 64, device="cuda")
    with torch.no_grad():
        bf16 = copy.deepcopy(model).bfloat16()
        # The float64 run of the bf16 weights and inputs, and the bounds of the bf16 test above (four
        # bf16 blocks put torch's own logits ~1.1e-2 off it; the CUDA backend's were 1.2e-2 on the H200).
        ref = copy.deepcopy(bf16).double().set_backend("reference")(images.bfloat16().double())
        out = bf16.set_backend("cuda")(images.bfloat16())
        peer = bf16.set_backend("reference")(images.bfloat16())
    assert_close(out, ref, torch.bfloat16, tol=3e-2, same_dtype_ref=peer, names=["logits (cuda)"])


def test_autocast_bf16(device):
    """fp32 weights under bf16 autocast (fused on the GPU; the interpreter has no bf16, so the reference on the CPU)."""
    model = tiny_vit().to(device).set_backend(None if device.type == "cuda" else "reference")
    images = torch.randn(2, 3, IMAGE, IMAGE, device=device)
    expected = model(images)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = model(images)
    assert out.dtype == torch.bfloat16
    assert rel_error(out, expected) < 3e-2
    out.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# --- presets, checkpoints, inputs ---------------------------------------------------------------

@pytest.mark.parametrize("name, params", [("B/16", 86_567_656), ("L/16", 304_326_632), ("H/14", 632_045_800)])
def test_presets_have_timm_parameter_counts(name, params):
    with torch.device("meta"):
        model = ViT(name)
    assert sum(p.numel() for p in model.parameters()) == params


def test_state_dict_uses_timm_names_and_round_trips(tmp_path):
    model = tiny_vit()
    keys = set(model.state_dict())
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "blocks.1.norm1.weight",
                "blocks.1.attn.qkv.weight", "blocks.1.attn.proj.bias", "blocks.1.norm2.bias", "blocks.1.mlp.fc1.weight",
                "blocks.1.mlp.fc2.bias", "norm.weight", "head.weight"):
        assert key in keys, key
    path = tmp_path / "vit.pt"
    model.save(str(path))
    loaded = ViT.load(str(path), backend="reference")
    assert loaded.config == model.config
    images = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        assert torch.equal(loaded(images), model.set_backend("reference")(images))


def test_backend_context_and_argument_reach_every_op(device):
    model = tiny_vit().to(device)
    assert {m.backend for m in model.modules() if hasattr(m, "backend")} == {None}
    model.set_backend("reference")
    assert {m.backend for m in model.modules() if hasattr(m, "backend")} == {"reference"}
    with pytest.raises(ValueError, match="backend"):
        model.set_backend("fast")
    # with no per-module backend, use_backend decides: float64 runs on the reference only
    model.set_backend(None).double()
    images = torch.randn(1, 3, IMAGE, IMAGE, dtype=torch.float64, device=device)
    with vtkernels.use_backend("reference"):
        assert model(images).shape == (1, CLASSES)
    with vtkernels.use_backend("triton"), pytest.raises(vtkernels.BackendError, match="float64"):
        model(images)


def test_uint8_images_are_normalized_in_the_op():
    model = tiny_vit(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)).set_backend("reference")
    raw = torch.randint(0, 256, (2, IMAGE, IMAGE, 3), dtype=torch.uint8)
    floats = (raw.permute(0, 3, 1, 2).float() / 255 - torch.tensor([0.4, 0.5, 0.6])[:, None, None]) \
        / torch.tensor([0.2, 0.25, 0.3])[:, None, None]
    with torch.no_grad():
        assert rel_error(model(raw), model(floats)) < 1e-6


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_batch_of_one_and_empty_batch(backend, device):
    model = tiny_vit().to(device).set_backend(backend)
    images = torch.randn(3, 3, IMAGE, IMAGE, device=device)
    with torch.no_grad():
        full = model(images)
        assert rel_error(model(images[1:2]), full[1:2]) < 1e-6
        assert model(images[:0]).shape == (0, CLASSES)


def test_bad_input_and_config():
    model = tiny_vit()
    with pytest.raises(ValueError, match="images"):
        model(torch.randn(3, IMAGE, IMAGE))
    with pytest.raises(ValueError, match="images are 16x16"):
        model(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="preset"):
        ViT("B/17")
    with pytest.raises(ValueError, match="patch_size"):
        ViTConfig(img_size=30, patch_size=8)
    with pytest.raises(ValueError, match="act"):
        ViTConfig(act="swish")
    with pytest.raises(ValueError, match="num_heads"):
        ViT(ViTConfig(img_size=IMAGE, patch_size=PATCH, embed_dim=WIDTH, num_heads=3, depth=1))


# --- torch.compile ------------------------------------------------------------------------------

def test_compiles_without_graph_breaks(device):
    model = tiny_vit().to(device).set_backend("triton")
    images = torch.randn(2, 3, IMAGE, IMAGE, device=device)
    explanation = torch._dynamo.explain(model)(images)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    eager = model(images)
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(images)
    assert rel_error(out, eager) < 1e-5
    params = list(model.parameters())
    cotangent = torch.randn_like(out)
    assert_close(grads(out, params, cotangent), grads(model(images), params, cotangent), torch.float32, tol=1e-5)
