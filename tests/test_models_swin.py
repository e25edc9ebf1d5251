"""Swin wrapper vs HF SwinModel / SwinForImageClassification (tiny random configs, converted
weights) and timm (when importable), fused vs reference mode, gradients, compile."""

import pytest
import torch

import vtkernels
from vtkernels.models.swin import SIZES, Swin, SwinConfig
from vtkernels.testing import assert_close

transformers = pytest.importorskip("transformers")


def hf_swin(image_size=64, head=True, seed=0):
    torch.manual_seed(seed)
    config = transformers.SwinConfig(image_size=image_size, patch_size=4, embed_dim=32, depths=[2, 2, 2],
                                     num_heads=[1, 2, 4], window_size=4, num_labels=7, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    model = (transformers.SwinForImageClassification if head else transformers.SwinModel)(config).eval()
    with torch.no_grad():  # HF initializes norms to (1, 0) and the bias tables near 0: make them matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.5, 0.5)
            elif "relative_position_bias_table" in name:
                p.normal_(0, 1.0)
    return model


@pytest.mark.parametrize("image_size", [64, 72])  # 72: 18x18 tokens, padded windows, odd merges
def test_matches_hf_classifier_float64(image_size):
    hf = hf_swin(image_size).double()
    ours = Swin.from_hf(hf)
    x = torch.randn(2, 3, image_size, image_size, dtype=torch.float64)
    with torch.no_grad(), vtkernels.use_backend("reference"):
        assert_close(ours(x), hf(x).logits, torch.float64, tol=1e-10)


def test_matches_hf_bare_model():
    hf = hf_swin(head=False).double()
    ours = Swin.from_hf(hf)
    assert ours.config.num_classes == 0
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad(), vtkernels.use_backend("reference"):
        expected = hf(x)
        features = ours.forward_features(x)
        assert_close(features.flatten(1, 2), expected.last_hidden_state, torch.float64, tol=1e-10)
        assert_close(ours(x), expected.pooler_output, torch.float64, tol=1e-10)


@pytest.mark.interpreter
def test_fused_matches_reference_fp32_with_grads():
    ours = Swin.from_hf(hf_swin(72)).train()
    x = torch.randn(1, 3, 72, 72, requires_grad=True)
    results = {}
    for backend in ("reference", "triton"):
        ours.zero_grad()
        ours.set_backend(backend)
        logits = ours(x)
        (d_x,) = torch.autograd.grad(logits.square().sum(), [x], retain_graph=True)
        logits.square().sum().backward()
        block = ours.layers[1].blocks[1]
        results[backend] = [logits.detach(), d_x, block.attn.relative_position_bias_table.grad.clone(),
                            block.norm1.weight.grad.clone(), ours.layers[2].downsample.norm.weight.grad.clone(),
                            ours.patch_embed.proj.weight.grad.clone()]
    assert_close(results["triton"], results["reference"], torch.float32, tol=3e-5,
                 names=["logits", "d images", "d bias table", "d norm1", "d merge norm", "d patch proj"])


def test_from_timm_matches_timm():
    timm = pytest.importorskip("timm")
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=112, embed_dim=32,
                              depths=(2, 2), num_heads=(1, 2), num_classes=5).eval()
    ours = Swin.from_timm(model)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad(), vtkernels.use_backend("reference"):
        assert_close(ours(x), model(x), torch.float32, tol=1e-5)


def test_sizes_and_errors():
    tiny = Swin.from_size("T", img_size=64, num_classes=3)
    assert tiny.config.num_features == 768 and len(tiny.layers[2].blocks) == 6
    assert SIZES["B"].embed_dim == 128 and sum(SIZES["S"].depths) == 24
    with pytest.raises(ValueError, match="size"):
        Swin.from_size("H")
    with pytest.raises(ValueError, match="depths"):
        Swin(SwinConfig(depths=(2, 2), num_heads=(1,)))


@pytest.mark.interpreter
def test_compile_fullgraph():
    ours = Swin.from_hf(hf_swin())
    ours.set_backend("triton")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_close(torch.compile(ours, fullgraph=True)(x), ours(x), torch.float32)


@pytest.mark.gpu
def test_gpu_bf16_swin_t():
    model = Swin.from_size("T").cuda().eval()
    x = torch.randn(4, 3, 224, 224, device="cuda")
    with torch.no_grad():
        with vtkernels.use_backend("reference"):
            ref = model.double()(x.double())
        out = model.to(torch.bfloat16)(x.bfloat16())
    assert_close(out.float(), ref, torch.bfloat16, tol=3e-2)


def test_backend_argument_reaches_every_fused_module():
    """Swin(backend=...) sets every vtkernels module's backend, the blocks' norms included."""
    model = Swin(SwinConfig(img_size=32, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4,
                            num_classes=3), backend="triton")
    backends = {name: sub.backend for name, sub in model.named_modules() if hasattr(sub, "backend")}
    assert "layers.0.blocks.0.norm1" in backends
    assert set(backends.values()) == {"triton"}, {n: b for n, b in backends.items() if b != "triton"}
