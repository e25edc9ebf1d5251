"""Stochastic depth (``drop_path_rate``) and layer scale in the ViT and Swin wrappers: timm's schedule, the fused
(branch, stream) form equal to the plain residual form under the same seed, nothing dropped in
eval, gradients kept under activation checkpointing, and timm's own models reproduced (where timm
imports)."""

import pytest
import torch

import vtkernels
from vtkernels.models import Swin, ViT
from vtkernels.models.blocks import Block, drop_path_rates
from vtkernels.models.swin import SwinConfig
from vtkernels.models.vit import ViTConfig
from vtkernels.nn.drop_path import drop_path
from vtkernels.testing import assert_close, grads

from model_configs import exact_fp32  # noqa: F401 - autouse fixture
from model_configs import DEPTH, HEADS, IMAGE, MLP, PATCH, WIDTH, perturb_


def _vit(rate):
    return perturb_(ViT(ViTConfig(img_size=IMAGE, patch_size=PATCH, embed_dim=WIDTH, depth=3, num_heads=HEADS,
                                  mlp_dim=MLP, num_classes=5, drop_path_rate=rate)))


def _swin(rate):
    return perturb_(Swin(SwinConfig(img_size=IMAGE, patch_size=4, embed_dim=WIDTH, depths=(2, 2), num_heads=(2, 4),
                                    window_size=4, num_classes=5, drop_path_rate=rate)))


def _seeded(model, *inputs, seed=7):
    torch.manual_seed(seed)
    return model(*inputs)


def test_schedule_is_timms_linear_ramp():
    assert drop_path_rates(0.0, 3) == [0.0, 0.0, 0.0]
    assert_close(torch.tensor(drop_path_rates(0.3, 4)), torch.tensor([0.0, 0.1, 0.2, 0.3], dtype=torch.float64),
                 torch.float32)
    assert [block.drop_path for block in _vit(0.2).blocks] == drop_path_rates(0.2, 3)
    swin_rates = [block.drop_path for stage in _swin(0.3).layers for block in stage.blocks]
    assert swin_rates == drop_path_rates(0.3, 4)  # one ramp over the blocks of every stage
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="drop_path_rate"):
            drop_path_rates(bad, 3)


def test_drop_path_zeroes_or_rescales_whole_samples():
    branch = torch.ones(4000, 3, 5, dtype=torch.float64)
    out = drop_path(branch, 0.25, training=True)
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 1 / 0.75}
    assert (per_sample == per_sample[:, :1]).all()  # one draw per sample
    assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.25) < 0.03
    assert drop_path(branch, 0.25, training=False) is branch
    assert not drop_path(branch, 1.0, training=True).any()  # everything dropped, no 0 / 0


def test_drop_path_rounds_like_timm_in_bf16():
    """timm scales the per-sample factor (in the tensor's dtype), then multiplies once."""
    branch = torch.randn(64, 5, 7, dtype=torch.bfloat16)
    torch.manual_seed(0)
    ours = drop_path(branch, 0.1, training=True)
    torch.manual_seed(0)
    keep = torch.empty(64, 1, 1, dtype=torch.bfloat16).bernoulli_(0.9).div_(0.9)
    assert torch.equal(ours, branch * keep)


def test_layer_scale_is_reset_like_the_rest():
    """A model built on the meta device and materialized gets its layer scales back from
    reset_parameters (what FSDP's meta-device initialization calls)."""
    with torch.device("meta"):
        model = ViT(ViTConfig(img_size=IMAGE, patch_size=PATCH, embed_dim=WIDTH, depth=2, num_heads=HEADS,
                              mlp_dim=MLP, init_values=0.25))
    model.to_empty(device="cpu")
    model.reset_parameters()
    for block in model.blocks:
        assert torch.equal(block.ls1.gamma, torch.full((WIDTH,), 0.25))
        assert torch.equal(block.ls2.gamma, torch.full((WIDTH,), 0.25))


@pytest.mark.parametrize("init_values", [None, 0.3])
@pytest.mark.parametrize("row", [False, True])
def test_fused_block_equals_the_plain_residual_form(row, init_values, device):
    """The block's (branch, stream) split, which adds each branch inside the next norm, gives what
    x + drop(ls1(attn(norm1(x)))), then + drop(ls2(mlp(norm2(.)))) gives under the same seed (its
    pooled-row form too), with and without layer scale."""
    block = perturb_(Block(WIDTH, HEADS, MLP, drop_path=0.5, init_values=init_values)).to(device).train()
    x = torch.randn(6, 9, WIDTH, device=device)
    torch.manual_seed(3)
    if row:
        branch, stream = block.forward_row(x, None, 2)
    else:
        branch, stream = block.forward_split(x, None)
    torch.manual_seed(3)
    h = x + drop_path(block.ls1(block.attn(block.norm1(x))), 0.5, True)
    expected = h + drop_path(block.ls2(block.mlp(block.norm2(h))), 0.5, True)
    assert_close(stream + branch, expected[:, 2] if row else expected, torch.float32)


def test_fused_swin_block_equals_its_plain_forward(device):
    block = _swin(0.5).layers[0].blocks[1].to(device).train()  # (shifted; rate 1/3 in the ramp)
    x = torch.randn(6, 8, 8, WIDTH, device=device)
    torch.manual_seed(3)
    branch, stream = block.forward_split(x, None)
    torch.manual_seed(3)
    assert_close(stream + branch, block(x), torch.float32)  # timm's form: x + drop(attn(.)) + drop(mlp(.))


@pytest.mark.parametrize("build", [_vit, _swin], ids=["vit", "swin"])
def test_models_drop_in_training_only(build, device):
    model, plain = build(0.5).to(device), build(0.0).to(device)
    plain.load_state_dict(model.state_dict())
    images = torch.randn(4, 3, IMAGE, IMAGE, device=device)
    with torch.no_grad():
        assert_close(model.eval()(images), plain.eval()(images), torch.float32)
        model.train()
        first, second = _seeded(model, images, seed=1), _seeded(model, images, seed=2)
    assert not torch.allclose(first, second)  # different samples dropped


@pytest.mark.parametrize("build", [_vit, _swin], ids=["vit", "swin"])
def test_checkpointing_recomputes_the_same_drops(build, device):
    """Activation checkpointing restores the RNG for its recompute: the same samples are dropped in
    the backward's forward, and the gradients are the plain backward's."""
    model = build(0.5).to(device).train()
    images = torch.randn(4, 3, IMAGE, IMAGE, device=device)
    out = _seeded(model, images)
    expected = grads(out, list(model.parameters()), torch.ones_like(out))
    model.set_grad_checkpointing()
    out = _seeded(model, images)
    assert_close(grads(out, list(model.parameters()), torch.ones_like(out)), expected, torch.float32, tol=1e-6)


def test_from_timm_reproduces_timms_training_forward():
    timm = pytest.importorskip("timm")
    models = [
        (timm.create_model("vit_base_patch16_224", pretrained=False, img_size=IMAGE, patch_size=PATCH,
                           embed_dim=WIDTH, depth=DEPTH + 1, num_heads=HEADS, num_classes=5, drop_path_rate=0.4),
         ViT),
        (timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=IMAGE, embed_dim=WIDTH,
                           depths=(2, 2), num_heads=(2, 4), window_size=4, num_classes=5, drop_path_rate=0.4),
         Swin),
    ]
    images = torch.randn(4, 3, IMAGE, IMAGE)
    for model, wrapper in models:
        assert not wrapper.from_timm(model.eval()).training  # (drop path: the mode matters)
        model = perturb_(model).train()
        ours = wrapper.from_timm(model)
        assert ours.training and ours.config.drop_path_rate == pytest.approx(0.4)
        with vtkernels.use_backend("reference"):
            assert_close(_seeded(ours, images), _seeded(model, images), torch.float32, tol=1e-5,
                         names=[wrapper.__name__])
