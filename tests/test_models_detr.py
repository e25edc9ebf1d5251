"""DETR wrapper vs HF DetrForObjectDetection / DetrModel (tiny random ResNet config, converted
weights), fused vs reference mode, the set loss vs HF's, pluggable backbones, box helpers."""

import pytest
import torch
from torch import nn

import vtkernels
from vtkernels.models import boxes
from vtkernels.models.detr import DETR, DetrConfig
from vtkernels.models.detr_loss import DetrSetLoss, hungarian_match
from vtkernels.testing import assert_close

from model_configs import detr_images, hf_detr

transformers = pytest.importorskip("transformers")


def test_matches_hf_object_detection_float64():
    hf = hf_detr().double()
    ours = DETR.from_hf(hf)
    pixels, mask = detr_images(dtype=torch.float64)
    with torch.no_grad(), vtkernels.use_backend("reference"):
        expected, out = hf(pixels, pixel_mask=mask), ours(pixels, mask)
    assert_close([out.logits, out.pred_boxes, out.last_hidden_state, out.encoder_last_hidden_state],
                 [expected.logits, expected.pred_boxes, expected.last_hidden_state,
                  expected.encoder_last_hidden_state], torch.float64, tol=1e-9,
                 names=["logits", "boxes", "decoder", "encoder"])


def test_backbone_fusion_keeps_outputs():
    hf = hf_detr().double()
    ours = DETR.from_hf(hf)
    pixels, mask = detr_images(dtype=torch.float64)
    with torch.no_grad(), vtkernels.use_backend("reference"):
        expected = ours(pixels, mask)
        ours.fuse_backbone_for_inference(channels_last=True)
        fused = ours(pixels, mask)
    assert not any(type(m).__name__.endswith("BatchNorm2d") for m in ours.backbone.modules())
    assert_close([fused.logits, fused.pred_boxes], [expected.logits, expected.pred_boxes], torch.float64, tol=1e-9)


def test_matches_hf_bare_model_without_mask():
    hf = hf_detr(head=False).double()
    ours = DETR.from_hf(hf)
    assert ours.class_labels_classifier is None
    pixels, _ = detr_images(1, torch.float64)
    with torch.no_grad(), vtkernels.use_backend("reference"):
        expected, out = hf(pixels), ours(pixels)
    assert_close(out.last_hidden_state, expected.last_hidden_state, torch.float64, tol=1e-9)


@pytest.mark.interpreter
def test_fused_matches_reference_fp32_with_grads():
    ours = DETR.from_hf(hf_detr()).train()
    pixels, mask = detr_images()
    targets = [{"class_labels": torch.tensor([1, 4]),
                "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.6, 0.5, 0.3, 0.4]])},
               {"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]
    results = {}
    for backend in ("reference", "triton"):
        ours.zero_grad()
        ours.set_backend(backend)
        out = ours(pixels, mask)
        loss, _ = DetrSetLoss(5, backend=backend)(out.logits, out.pred_boxes, targets)
        loss.backward()
        results[backend] = [out.logits.detach(), out.pred_boxes.detach(), loss.detach(),
                            ours.query_position_embeddings.weight.grad.clone(),
                            ours.encoder.layers[0].self_attn.q_proj.weight.grad.clone(),
                            ours.decoder.layers[1].encoder_attn_layer_norm.weight.grad.clone()]
    assert_close(results["triton"], results["reference"], torch.float32, tol=3e-5,
                 names=["logits", "boxes", "loss", "d query_pos", "d enc q_proj", "d dec cross LN"])


def test_set_loss_matches_hf_with_auxiliary_losses():
    # HF's loss is fed our outputs: with auxiliary_loss=True HF's decoder feeds each layer the
    # *normalized* output of the previous one (original DETR normalizes a copy, as we do).
    from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss

    hf = hf_detr(auxiliary_loss=True)  # HF's loss runs in float32 only (float32 class weights)
    ours = DETR.from_hf(hf)
    pixels, mask = detr_images()
    labels = [{"class_labels": torch.tensor([1, 4, 2]), "boxes": torch.rand(3, 4) * 0.3 + 0.2},
              {"class_labels": torch.tensor([3]), "boxes": torch.rand(1, 4) * 0.3 + 0.2}]
    with vtkernels.use_backend("reference"):
        out = ours(pixels, mask, intermediate=True)
        classes = ours.class_labels_classifier(out.intermediate_hidden_states)
        coords = ours.bbox_predictor(out.intermediate_hidden_states)
        loss, terms = DetrSetLoss.from_hf_config(hf.config)(out.logits, out.pred_boxes, labels, classes, coords)
    expected, expected_terms, _ = ForObjectDetectionLoss(out.logits, labels, "cpu", out.pred_boxes, hf.config,
                                                         classes, coords)
    assert set(terms) == set(expected_terms) and "loss_giou_0" in terms
    for key, value in expected_terms.items():
        assert_close(terms[key], value, torch.float32, tol=1e-6, names=[key])
    assert_close(loss, expected, torch.float32, tol=1e-6)
    grads = torch.autograd.grad(loss, [out.logits, out.pred_boxes])
    expected_grads = torch.autograd.grad(expected, [out.logits, out.pred_boxes])
    assert_close(grads, expected_grads, torch.float32, names=["d logits", "d boxes"])


@pytest.mark.interpreter
def test_hungarian_match_handles_images_without_targets():
    logits, pred = torch.randn(2, 6, 4), torch.rand(2, 6, 4) * 0.4 + 0.1
    targets = [{"class_labels": torch.tensor([2, 0]), "boxes": torch.rand(2, 4) * 0.4 + 0.1},
               {"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    matches = hungarian_match(logits, pred, targets, backend="triton")
    assert len(matches[0][0]) == 2 and len(matches[1][0]) == 0
    loss, terms = DetrSetLoss(3)(logits, pred, targets)
    assert torch.isfinite(loss)


class TinyBackbone(nn.Module):
    """Any module: a strided conv feature map plus its own mask."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 24, kernel_size=8, stride=8)

    def forward(self, x):
        feature = self.conv(x)
        valid = torch.ones(x.shape[0], *feature.shape[-2:], dtype=torch.bool, device=x.device)
        valid[:, :, -1] = False
        return feature, valid


def tiny_detr():
    config = DetrConfig(d_model=64, encoder_layers=1, decoder_layers=1, encoder_heads=2, decoder_heads=2,
                        encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=7, num_labels=3, backbone_channels=24)
    return DETR(TinyBackbone(), config)


def test_pluggable_backbone_mask_is_used():
    model = tiny_detr().eval()
    x = torch.randn(2, 3, 32, 40)
    with torch.no_grad(), vtkernels.use_backend("reference"):
        out = model(x)
        x2 = x.clone()
        x2[..., 32:] = torch.randn_like(x2[..., 32:])  # only changes the masked last feature column
        out2 = model(x2)
    assert out.logits.shape == (2, 7, 4) and out.pred_boxes.shape == (2, 7, 4)
    assert_close(out2.logits, out.logits, torch.float32)  # decoder never sees masked keys
    assert not torch.allclose(out2.encoder_last_hidden_state, out.encoder_last_hidden_state)


@pytest.mark.interpreter
def test_compile_fullgraph():
    model = tiny_detr().eval()
    model.set_backend("triton")
    x = torch.randn(1, 3, 32, 40)
    with torch.no_grad():
        expected = model(x).logits
        compiled = torch.compile(lambda t: model(t).logits, fullgraph=True)
        assert_close(compiled(x), expected, torch.float32)


def test_box_helpers_match_hf():
    from transformers.image_transforms import center_to_corners_format, corners_to_center_format
    from transformers.loss.loss_for_object_detection import generalized_box_iou

    cxcywh = torch.rand(7, 4, dtype=torch.float64) * 0.5 + 0.1
    xyxy = boxes.cxcywh_to_xyxy(cxcywh)
    assert_close(xyxy, center_to_corners_format(cxcywh), torch.float64)
    assert_close(boxes.xyxy_to_cxcywh(xyxy), corners_to_center_format(xyxy), torch.float64)
    other = boxes.cxcywh_to_xyxy(torch.rand(5, 4, dtype=torch.float64) * 0.5 + 0.1)
    assert_close(boxes.pairwise_generalized_iou(xyxy, other), generalized_box_iou(xyxy, other), torch.float64)
    assert_close(boxes.generalized_iou(xyxy[:5], other), generalized_box_iou(xyxy[:5], other).diagonal(),
                 torch.float64)
    sizes = torch.tensor([[100, 200]])
    assert torch.equal(boxes.scale_boxes(torch.tensor([[[0.0, 0.5, 1.0, 1.0]]]), sizes),
                       torch.tensor([[[0.0, 50.0, 200.0, 100.0]]]))


def test_errors():
    with pytest.raises(ValueError, match="divisible"):
        DETR(TinyBackbone(), DetrConfig(d_model=60, encoder_heads=8, backbone_channels=24))


@pytest.mark.gpu
def test_gpu_bf16_matches_fp32_reference():
    hf = hf_detr().cuda()
    ours = DETR.from_hf(hf)
    pixels, mask = detr_images(4)
    pixels, mask = pixels.cuda(), mask.cuda()
    with torch.no_grad():
        with vtkernels.use_backend("reference"):
            ref = ours.double()(pixels.double(), mask).logits
        fused = ours.to(torch.bfloat16)(pixels.bfloat16(), mask).logits
    assert_close(fused.float(), ref, torch.bfloat16, tol=3e-2)
