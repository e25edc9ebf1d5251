"""vtkernels.optimize on HF DETR and ImageGPT: counts in the report, the fused path really taken
(calls counted), outputs and gradients within tolerance of the original model, the KV cache kept,
and the masks the op cannot express (a query left without keys) falling back exactly."""

import copy

import pytest
import torch
from torch import nn

import vtkernels
from vtkernels.testing import assert_close, grads, rel_error

from model_configs import exact_fp32  # noqa: F401 - autouse fixture
from model_configs import IGPT_POSITIONS, detr_images, hf_detr, hf_igpt, needs_transformers_5, perturb_

pytest.importorskip("transformers")
LAYERS = 2  # encoder and decoder layers of hf_detr, blocks of hf_igpt


def _optimized(model):
    return vtkernels.optimize(copy.deepcopy(model), backend="triton", return_report=True)


def _compare_grads(out, expected, fused, hf):
    """Parameter gradients of <out, cotangent> against HF's, in fp32. Gradients 1e-4 below the
    largest are left out: there the exact value cancels to (near) zero and both sides hold rounding
    noise (the key bias in every softmax; DETR's decoder queries start as zeros, so its first
    self-attention's q / k gradients vanish and the second's nearly do)."""
    cotangent = torch.randn_like(out)
    names = [name for name, _ in hf.named_parameters()]
    assert names == [name for name, _ in fused.named_parameters()]  # same parameters, same names
    ours, theirs = grads(out, list(fused.parameters()), cotangent), grads(expected, list(hf.parameters()), cotangent)
    largest = max(g.norm() for g in theirs if g is not None)
    kept = [i for i, g in enumerate(theirs) if g is not None and g.norm() > 1e-4 * largest]
    assert len(kept) > len(names) // 2
    assert_close([ours[i] for i in kept], [theirs[i] for i in kept], torch.float32, tol=5e-5,
                 names=[names[i] for i in kept])


@needs_transformers_5
def test_hf_detr(fused_calls, device):
    """Encoder self-attention over a padded image, decoder self- and cross-attention, FFNs."""
    hf = perturb_(hf_detr()).to(device)
    norms = sum(type(m) is nn.LayerNorm for m in hf.modules())
    fused, report = _optimized(hf)
    # encoder: self-attention; decoder: self- and cross-attention; an FFN per layer of each
    assert report.replaced == {"LayerNorm": norms, "Attention": 3 * LAYERS, "Mlp": 2 * LAYERS}
    pixels, mask = (t.to(device) for t in detr_images())
    out = fused(pixels, pixel_mask=mask)
    assert fused_calls["attention"] == 3 * LAYERS and fused_calls["mlp"] == 2 * LAYERS  # padding taken by the op
    expected = hf(pixels, pixel_mask=mask)
    assert_close([out.logits, out.pred_boxes], [expected.logits, expected.pred_boxes], torch.float32,
                 names=["logits", "pred_boxes"])
    _compare_grads(out.logits, expected.logits, fused, hf)


@pytest.mark.interpreter
@needs_transformers_5
def test_hf_detr_attention_dropout_in_training_falls_back(fused_calls):
    hf = hf_detr()
    fused, _ = _optimized(hf)
    layer = fused.model.encoder.layers[0].self_attn
    layer.attention_dropout = 0.1
    layer.train()
    x = torch.randn(2, 6, 64)
    layer(x)
    assert fused_calls["attention"] == 0
    layer.eval()
    out, _ = layer(x, position_embeddings=torch.randn_like(x))
    assert fused_calls["attention"] == 1
    assert out.shape == x.shape


@pytest.mark.interpreter
@needs_transformers_5
@pytest.mark.parametrize("model", ["detr", "igpt"])
def test_hf_mlp_dropout_after_the_mlp_stays_fused_in_training(fused_calls, model):
    """The dropout after fc2 (DETR's ``dropout``, iGPT's ``resid_pdrop``) runs after the fused call,
    drawing the same mask as HF's under the same seed; DETR's dropout between the layers
    (``activation_dropout``) falls back."""
    hf = perturb_(hf_detr() if model == "detr" else hf_igpt())
    fused, _ = _optimized(hf)
    path = "model.encoder.layers.0.mlp" if model == "detr" else "transformer.h.0.mlp"
    mlp, original = fused.get_submodule(path), hf.get_submodule(path)
    if model == "detr":
        mlp.dropout = original.dropout = 0.5
    else:
        mlp.dropout.p = original.dropout.p = 0.5
    mlp.train(), original.train()
    x = torch.randn(2, 6, 64 if model == "detr" else 128)
    torch.manual_seed(0)
    out = mlp(x)
    torch.manual_seed(0)
    assert_close(out, original(x), torch.float32, names=["out"])
    assert fused_calls["mlp"] == 1 and (out == 0).any()
    if model == "detr":
        mlp.activation_dropout = 0.1
        mlp(x)
        assert fused_calls["mlp"] == 1


def _igpt_with_padding(n_layer=LAYERS, **config):
    hf = hf_igpt(n_layer=n_layer, **config)
    ids = torch.randint(0, 32, (3, IGPT_POSITIONS))
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0  # right padding: every query still sees key 0
    return hf, ids, mask


@needs_transformers_5
@pytest.mark.parametrize("options", [{}, {"scale_attn_by_inverse_layer_idx": True, "reorder_and_upcast_attn": True}],
                         ids=["default", "layer-scaled"])
def test_hf_igpt(fused_calls, options, device):
    hf, ids, mask = _igpt_with_padding(**options)
    hf = hf.to(device)
    fused, report = _optimized(hf)
    # ln_1, ln_2 per block + ln_f; the MLP (Conv1D weights) with its QuickGELU fused into the first GEMM
    assert report.replaced == {"RMSNorm": 2 * LAYERS + 1, "Attention": LAYERS, "Mlp": LAYERS, "QuickGELU": LAYERS}
    ids, mask = ids.to(device), mask.to(device)
    out = fused(ids, attention_mask=mask).logits
    assert fused_calls["attention"] == LAYERS and fused_calls["mlp"] == LAYERS and fused_calls["quick_gelu"] == 0
    expected = hf(ids, attention_mask=mask).logits
    assert_close(out, expected, torch.float32, names=["logits"])
    _compare_grads(out, expected, fused, hf)


@pytest.mark.interpreter
@needs_transformers_5
def test_hf_igpt_kv_cache_decoding(fused_calls):
    """Prefill then one-token steps through HF's cache: the same logits as HF's own forward."""
    hf = hf_igpt()
    fused, _ = _optimized(hf)
    ids = torch.randint(0, 32, (2, 9))
    with torch.no_grad():
        outputs = []
        for model in (fused, hf):
            step = model(ids[:, :6], use_cache=True)
            logits = [step.logits[:, -1]]
            for t in range(6, ids.shape[1]):
                step = model(ids[:, t:t + 1], past_key_values=step.past_key_values, use_cache=True)
                logits.append(step.logits[:, -1])
            outputs.append(torch.stack(logits, 1))
    assert fused_calls["attention"] == LAYERS * 4  # the prefill and three steps, every block
    assert_close(outputs[0], outputs[1], torch.float32, names=["decoded logits"])


@pytest.mark.interpreter
@needs_transformers_5
def test_hf_igpt_query_without_keys_falls_back(fused_calls):
    """Left padding leaves the first queries only padded keys: HF's softmax then averages them,
    the op would return zeros, so the call takes HF's path (and matches it exactly)."""
    hf, ids, mask = _igpt_with_padding()
    mask[0, :3] = 0
    fused, _ = _optimized(hf)
    with torch.no_grad():
        out, expected = fused(ids, attention_mask=mask).logits, hf(ids, attention_mask=mask).logits
    assert fused_calls["attention"] == 0
    assert rel_error(out, expected) < 1e-6
