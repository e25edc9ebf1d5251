"""The CUDA backend without a GPU: csrc/'s kernels and bindings built for the CPU emulator
(tools/cuda_emulator) take CPU tensors, and every op's `backend="cuda"` path runs through the same
Python glue, bindings and kernels as on a GPU, against the float64 reference: forward and every
gradient, all three dtypes, the awkward shapes of the GPU tests at smaller sizes.

What this checks: index math, masking, tails, layouts, barrier placement (a __syncthreads in
divergent code deadlocks the emulator), reads of shared memory never written (it starts as NaN),
shared-memory races that change results with the thread order (reverse-schedule tests), and the
tensor-core fragment bookkeeping (mma.sync emulated from the PTX fragment layout). What it
cannot: timing, occupancy, and out-of-bounds global accesses that land in valid host memory.
"""

import os
import sys

import pytest
import torch

import vtkernels

import test_activation as activation_tests
import test_attention as attention_tests
import test_clip_loss as clip_loss_tests
import test_detr_cost as detr_cost_tests
import test_mlp as mlp_tests
import test_norm as norm_tests
import test_palette as palette_tests
import test_patch_embed as patch_embed_tests
import test_patch_merging as patch_merging_tests
import test_window_attention as window_attention_tests

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools", "cuda_emulator"))
import build as emulator_build  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
CPU = torch.device("cpu")

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU runs the real CUDA backend")


@pytest.fixture(scope="module", autouse=True)
def cuda_backend_on_cpu():
    """vtkernels._C is the emulated build for this module's tests, and the CUDA backend takes CPU
    tensors; both undone afterwards."""
    module, undo = emulator_build.install()
    yield module
    undo()


@pytest.fixture(params=["forward", "reverse"])
def schedule(request, monkeypatch):
    """The order the emulator runs a block's threads between barriers."""
    monkeypatch.setenv("VTK_EMU_SCHEDULE", request.param)
    return request.param


def test_the_cuda_backend_takes_cpu_tensors_here(cuda_backend_on_cpu):
    x = torch.randn(3, 64)
    assert vtkernels.ops.norm.dispatcher.refusals("cuda", CPU, x=x) == []
    assert vtkernels._extension.load_extension() is cuda_backend_on_cpu
    with pytest.raises(RuntimeError, match="normalized size"):  # the bindings' checks run too
        cuda_backend_on_cpu.norm_fwd(torch.randn(2, 9000), None, None, None, 1e-5, False)


# --- norm ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 9, 768), (33, 64), (7, 1001), (3, 1280), (2, 8192)])
@pytest.mark.parametrize("rms", [False, True])
def test_norm(shape, dtype, rms):
    norm_tests.check_against_reference(shape, dtype, CPU, "cuda", rms=rms)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("affine", [True, False])
def test_norm_fused_residual(dtype, affine, schedule):
    norm_tests.check_against_reference((3, 11, 768), dtype, CPU, "cuda", affine=affine, with_residual=True)


def test_norm_strided_weight_and_misaligned_rows():
    norm_tests.check_strided_weight_and_bias(False, CPU, "cuda")
    base = torch.randn(16 * 769 + 1, dtype=torch.float16)
    x = base[1:].view(16, 769)[:, :768]  # rows start 2 bytes off 16-byte alignment: the scalar path
    w = torch.randn(768, dtype=torch.float16)
    y = vtkernels.layer_norm(x, w, None, backend="cuda")
    norm_tests.assert_close(y, norm_tests.ref.layer_norm(x.double(), w.double(), None), torch.float16)


def test_norm_eager_autograd_is_the_extensions_cpp_node(cuda_backend_on_cpu):
    """In eager mode the CUDA backend's norm records csrc's C++ autograd node, not the custom op's
    Python one; its gradients are those of the reference, including where only the residual sum
    h is used, and a differentiated backward (create_graph) is refused with the op's name."""
    x, r = torch.randn(3, 5, 64, requires_grad=True), torch.randn(3, 5, 64, requires_grad=True)
    w, b = torch.randn(64, requires_grad=True), torch.randn(64, requires_grad=True)
    y, h = vtkernels.layer_norm(x, w, b, residual=r, backend="cuda")
    assert "NormAutograd" in y.grad_fn.next_functions[0][0].name()  # (y.grad_fn: the view to x's shape)
    h.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x)) and torch.equal(r.grad, torch.ones_like(r))
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))
    inputs = (x, r, w, b)
    for t in inputs:
        t.grad = None
    y, h = vtkernels.layer_norm(x, w, b, residual=r, backend="cuda")
    cot = torch.randn_like(y)
    ours = torch.autograd.grad((y * cot + h).sum(), inputs)
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    ref_y, ref_h = norm_tests.ref.layer_norm(ref_inputs[0], ref_inputs[2], ref_inputs[3], 1e-5, ref_inputs[1])
    theirs = torch.autograd.grad((ref_y * cot.double() + ref_h).sum(), ref_inputs)
    norm_tests.assert_close(list(ours), list(theirs), torch.float32)
    y = vtkernels.rms_norm(x, w, backend="cuda")
    with pytest.raises(RuntimeError, match="rms_norm .*not differentiable"):
        torch.autograd.grad(y.square().sum(), x, create_graph=True)


# --- attention ----------------------------------------------------------------------------------

# fp32 runs the CUDA backend's scalar kernel, which takes ~50 s emulated at N = 197 (CI time); its
# tails and blocks are covered by the shorter cases, the 197-token tiling by fp16 / bf16.
ATTENTION_CASES = [(case, dtype) for case in attention_tests.CPU_CASES for dtype in DTYPES
                   if not (dtype == torch.float32 and case[2] > 100)]


@pytest.mark.parametrize("case, dtype", ATTENTION_CASES,
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_attention(case, dtype):
    attention_tests.check_against_reference(*case, dtype=dtype, device=CPU, backend="cuda")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", [
    (1, 2, 130, 130, 64, False, True, "bnhd"),   # tiles of 64 with a ragged last one, padding
    (1, 2, 70, 150, 32, True, False, "bhnd"),    # causal, Nq < Nkv, several key blocks
    (1, 1, 150, 70, 80, True, True, "bhnd"),     # causal, Nq > Nkv: rows without keys
], ids=lambda c: "x".join(map(str, c)))
def test_attention_several_tiles(case, dtype, schedule):
    attention_tests.check_against_reference(*case, dtype=dtype, device=CPU, backend="cuda")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_attention_packed_qkv(dtype):
    attention_tests.check_packed(2, 50, 2, 64, True, True, dtype, CPU, "cuda")


# --- window attention ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", [c for c in window_attention_tests.CASES
                                  if window_attention_tests._cuda_takes(c[5], c[4])],
                         ids=lambda c: "x".join(map(str, c)))
def test_window_attention(case, dtype):
    window_attention_tests.check_against_reference(case, dtype, CPU, "cuda")


def test_window_attention_reverse_schedule(schedule):
    window_attention_tests.check_against_reference((1, 14, 21, 2, 32, 7, 3, False, True), torch.bfloat16, CPU, "cuda")


# --- patch merging, patch embedding -------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 6, 6, 16), (2, 9, 11, 36), (1, 5, 5, 20), (1, 3, 5, 1100), (1, 2, 2, 2048)])
def test_patch_merging(shape, dtype):
    patch_merging_tests.check_against_reference(shape, dtype, CPU, "cuda")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_patch_merging_without_affine_and_unaligned(dtype):
    patch_merging_tests.check_against_reference((2, 5, 6, 64), dtype, CPU, "cuda", affine=False)
    patch_merging_tests.check_against_reference((1, 6, 7, 66), dtype, CPU, "cuda", affine=False,
                                               transform=lambda t: t[..., 1:65])
    patch_merging_tests.check_strided_weight_and_bias(CPU, "cuda")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", sorted(patch_embed_tests.VARIANTS))
def test_patch_embed(variant, dtype):
    patch_embed_tests.check_against_reference(variant, dtype, CPU, "cuda")


# --- CLIP loss, MLP, activation -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n, d", [(1, 256), (70, 40), (200, 64), (129, 200)])
def test_clip_loss(n, d, dtype):
    clip_loss_tests.check_against_reference(n, d, dtype, CPU, "cuda")


def test_clip_loss_scale_100(schedule):
    clip_loss_tests.check_against_reference(150, 64, torch.bfloat16, CPU, "cuda", logit_scale=4.605170185988092)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("activation", mlp_tests.ACTIVATIONS)
@pytest.mark.parametrize("shape", [((3, 5), 96, 384, 96), ((5,), 100, 200, 60)])
def test_mlp(shape, activation, dtype):
    lead, dim, hidden, dim_out = shape
    mlp_tests.check_against_reference(lead, dim, hidden, dim_out, activation, dtype, CPU, "cuda")


def test_mlp_relu_keeps_nan():
    mlp_tests.check_relu_nan_like_torch("cuda", torch.float16, CPU)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 700), (7, 1001), (3,)])
def test_quick_gelu(shape, dtype):
    activation_tests.check_against_reference(shape, dtype, CPU, "cuda")


# --- palette, DETR matching cost ----------------------------------------------------------------

@pytest.mark.parametrize("cluster_dtype", DTYPES, ids=str)
def test_palette_matches_reference_exactly(cluster_dtype):
    from vtkernels import palette_dequantize, palette_quantize

    clusters = palette_tests.random_clusters(700, "cpu", cluster_dtype)  # two shared-memory chunks
    clusters[600:] = clusters[:100]  # duplicates: the lowest id must win
    image = palette_tests.random_images(2, 9, 7).to(memory_format=torch.channels_last)
    ids = palette_quantize(image, clusters, backend="cuda")
    assert torch.equal(ids, palette_quantize(image, clusters, backend="reference"))
    for layout in ("nchw", "nhwc"):
        for tokens in (ids, ids.int()):
            out = palette_dequantize(tokens, clusters, (9, 7), layout=layout, backend="cuda")
            assert torch.equal(out, palette_dequantize(tokens, clusters, (9, 7), layout=layout, backend="reference"))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_detr_match_cost(dtype):
    from vtkernels import detr_match_cost

    problem = list(detr_cost_tests.random_problem(2, 100, 92, 13, dtype=dtype))
    problem[0] = problem[0].transpose(0, 1).contiguous().transpose(0, 1)  # strided logits
    problem[0][0, 3, 5] = float("nan")
    ref = detr_match_cost(*[p.double() if p.is_floating_point() else p for p in problem], 1.0, 5.0, 2.0,
                          backend="reference")
    same = detr_match_cost(*problem, 1.0, 5.0, 2.0, backend="reference")
    out = detr_match_cost(*problem, 1.0, 5.0, 2.0, backend="cuda")
    assert (out[0, 3] == torch.finfo(torch.float32).max).all()
    keep = torch.ones(out.shape[:2], dtype=torch.bool)
    keep[0, 3] = False
    detr_cost_tests.assert_close(out[keep], ref[keep], dtype, same_dtype_ref=same[keep])


def test_selfcheck_runs_the_cuda_backend(capsys):
    """`python -m vtkernels selfcheck --backend cuda` (the GPU run's compute-sanitizer workload):
    every op's CUDA cases pass here in float16, and the calls the kernels refuse are skipped with
    the reason, not failed."""
    from vtkernels import selfcheck

    assert selfcheck.run(verbose=False, backends=["cuda"], dtypes=(torch.float16, torch.bfloat16)) == 0
    out = capsys.readouterr().out
    assert " 0 failed" in out and " 0 skipped" in out
    for op in ("activation", "attention", "clip_loss", "detr_cost", "mlp", "norm", "palette", "patch_embed",
               "patch_merging", "window_attention"):
        assert f"ok   {op} [cuda]" in out, op
    assert selfcheck.run(verbose=False, backends=["cuda"], dtypes=(torch.float32,)) == 0
    assert "skip mlp [cuda]" in capsys.readouterr().out  # the tensor-core MLP takes fp16 / bf16 only
