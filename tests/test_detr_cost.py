"""DETR matching cost op: reference vs HF HungarianMatcher, Triton vs reference, edges, errors."""

import pytest
import torch

import vtkernels
from vtkernels.ops.detr_cost import detr_match_cost, detr_match_cost_op
from vtkernels.testing import assert_close


def random_problem(b, q, c, t, device="cpu", dtype=torch.float32):
    logits = torch.randn(b, q, c, device=device).to(dtype)
    centre = torch.rand(b, q, 2, device=device) * 0.6 + 0.2
    size = torch.rand(b, q, 2, device=device) * 0.3 + 0.05
    pred = torch.cat([centre, size], -1).to(dtype)
    labels = torch.randint(0, c, (b, t), device=device)
    tcentre = torch.rand(b, t, 2, device=device) * 0.6 + 0.2
    tsize = torch.rand(b, t, 2, device=device) * 0.3 + 0.05
    return logits, pred, labels, torch.cat([tcentre, tsize], -1).to(dtype)


def hf_cost(logits, pred, labels, target, wc, wb, wg):
    """HF HungarianMatcher's cost matrix, restricted to each image's own targets."""
    from transformers.image_transforms import center_to_corners_format
    from transformers.loss.loss_for_object_detection import generalized_box_iou

    out = []
    for i in range(logits.shape[0]):
        prob = logits[i].softmax(-1)
        giou = generalized_box_iou(center_to_corners_format(pred[i]), center_to_corners_format(target[i]))
        out.append(wb * torch.cdist(pred[i], target[i], p=1) - wc * prob[:, labels[i]] - wg * giou)
    return torch.stack(out)


def test_reference_matches_hf():
    problem = random_problem(2, 10, 7, 5, dtype=torch.float64)
    ours = detr_match_cost(*problem, class_weight=1.5, bbox_weight=5.0, giou_weight=2.0, backend="reference")
    assert ours.dtype == torch.float64 and ours.shape == (2, 10, 5)
    assert_close(ours, hf_cost(*problem, 1.5, 5.0, 2.0), torch.float64)


@pytest.mark.parametrize("shape", [(2, 100, 92, 13), (1, 7, 3, 1), (3, 33, 130, 40)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_matches_reference(shape, dtype, device):
    problem = random_problem(*shape, device=device, dtype=dtype)
    ours = detr_match_cost(*problem, 1.0, 5.0, 2.0, backend="triton")
    assert ours.dtype == torch.float32
    ref = detr_match_cost(*[p.double() if p.is_floating_point() else p for p in problem], 1.0, 5.0, 2.0,
                          backend="reference")
    same_dtype = detr_match_cost(*problem, 1.0, 5.0, 2.0, backend="reference")
    assert_close(ours, ref, torch.float32 if dtype == torch.float32 else dtype, same_dtype_ref=same_dtype)


def test_noncontiguous_and_int32_labels(device):
    logits, pred, labels, target = random_problem(2, 9, 6, 4, device=device)
    logits_t = logits.transpose(0, 1).contiguous().transpose(0, 1)  # batch stride != Q * C
    target_t = target.transpose(0, 1).contiguous().transpose(0, 1)
    ours = detr_match_cost(logits_t, pred, labels.int(), target_t, backend="triton")
    assert_close(ours, detr_match_cost(logits.double(), pred.double(), labels, target.double(),
                                       backend="reference"), torch.float32)


def test_invalid_values_become_max(device):
    logits, pred, labels, target = random_problem(1, 6, 4, 3, device=device)
    logits[0, 1, 0] = float("nan")
    pred[0, 2, 2:] = 0.0  # zero-area box matched against zero-area target -> 0 / 0
    target[0, 1, 2:] = 0.0
    target[0, 1, :2] = pred[0, 2, :2]
    big = torch.finfo(torch.float32).max
    for backend in ("reference", "triton"):
        cost = detr_match_cost(logits, pred, labels, target, backend=backend)
        assert torch.isfinite(cost).all(), backend
        assert (cost[0, 1] == big).all() and cost[0, 2, 1] == big, backend
        assert (cost[0, 0] < big).all(), backend


@pytest.mark.interpreter
def test_matching_agrees_with_hf_matcher():
    from scipy.optimize import linear_sum_assignment
    from transformers.loss.loss_for_object_detection import HungarianMatcher

    logits, pred, labels, target = random_problem(3, 20, 8, 6)
    sizes = [6, 2, 4]
    targets = [{"class_labels": labels[i, :n], "boxes": target[i, :n]} for i, n in enumerate(sizes)]
    expected = HungarianMatcher(1.0, 5.0, 2.0)({"logits": logits, "pred_boxes": pred}, targets)
    cost = detr_match_cost(logits, pred, labels, target, 1.0, 5.0, 2.0, backend="triton")
    for i, n in enumerate(sizes):
        rows, cols = linear_sum_assignment(cost[i, :, :n].numpy())
        assert rows.tolist() == expected[i][0].tolist() and cols.tolist() == expected[i][1].tolist()


def test_empty_inputs(device):
    logits, pred, labels, target = random_problem(2, 5, 4, 0, device=device)
    assert detr_match_cost(logits, pred, labels, target, backend="triton").shape == (2, 5, 0)
    logits, pred, labels, target = random_problem(0, 5, 4, 3, device=device)
    assert detr_match_cost(logits, pred, labels, target, backend="triton").shape == (0, 5, 3)


def test_bad_inputs_name_the_argument():
    logits, pred, labels, target = random_problem(2, 5, 4, 3)
    with pytest.raises(ValueError, match="pred_boxes"):
        detr_match_cost(logits, pred[:, :, :3], labels, target)
    with pytest.raises(ValueError, match="target_boxes"):
        detr_match_cost(logits, pred, labels, target[:, :2])
    with pytest.raises(TypeError, match="target_labels"):
        detr_match_cost(logits, pred, labels.float(), target)
    with pytest.raises(ValueError, match="target_labels must lie"):
        detr_match_cost(logits, pred, labels + 4, target)
    with pytest.raises(TypeError, match="pred_boxes"):
        detr_match_cost(logits, pred.double(), labels, target)
    with pytest.raises(ValueError, match="logits must have at least one class"):
        detr_match_cost(logits[..., :0], pred, labels, target)
    with pytest.raises(ValueError, match="target_labels must have 2 rows"):
        detr_match_cost(logits, pred, labels[:1], target)
    with pytest.raises(vtkernels.BackendError, match="CUDA tensor"):
        detr_match_cost(logits, pred, labels, target, backend="cuda")


@pytest.mark.interpreter
def test_opcheck_and_compile():
    problem = random_problem(2, 9, 5, 4)
    torch.library.opcheck(detr_match_cost_op, (*problem, 1.0, 5.0, 2.0, "triton"))
    compiled = torch.compile(lambda *p: detr_match_cost(*p, backend="triton"), fullgraph=True)
    assert_close(compiled(*problem), detr_match_cost(*problem, backend="reference"), torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_kernels_match_reference(backend, dtype):
    if backend == "cuda":
        pytest.importorskip("vtkernels._C")
    problem = list(random_problem(3, 100, 92, 37, device="cuda", dtype=dtype))
    problem[0] = problem[0].transpose(0, 1).contiguous().transpose(0, 1)  # strided logits
    problem[0][0, 3, 5] = float("nan")
    ref = detr_match_cost(*[p.double() if p.is_floating_point() else p for p in problem], 1.0, 5.0, 2.0,
                          backend="reference")
    same = detr_match_cost(*problem, 1.0, 5.0, 2.0, backend="reference")
    out = detr_match_cost(*problem, 1.0, 5.0, 2.0, backend=backend)
    assert (out[0, 3] == torch.finfo(torch.float32).max).all()
    # The rest without that row: its 3.4e38 entries would dominate a relative error and hide any
    # mismatch elsewhere.
    keep = torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)
    keep[0, 3] = False
    assert_close(out[keep], ref[keep], dtype, same_dtype_ref=same[keep])
    labels, boxes = problem[2], problem[3]
    empty = detr_match_cost(problem[0], problem[1], labels[:, :0], boxes[:, :0], backend=backend)
    assert empty.shape == (3, 100, 0)


@pytest.mark.gpu
def test_gpu_bf16_coco_shapes():
    problem = random_problem(8, 100, 92, 50, device="cuda", dtype=torch.bfloat16)
    ref = detr_match_cost(*[p.double() if p.is_floating_point() else p for p in problem], backend="reference")
    same = detr_match_cost(*problem, backend="reference")
    assert_close(detr_match_cost(*problem), ref, torch.bfloat16, same_dtype_ref=same)
