"""CLIP contrastive loss: reference vs an independent formula, kernels vs the float64 reference
(loss, statistics and the gradients of both feature tensors and logit_scale), the temperature
clamp, awkward shapes, custom-op registration, torch.compile, the module, dispatch, bad input."""

import math
import os
import types

import pytest
import torch
import torch.nn.functional as F

import vtkernels
from vtkernels.reference import clip_loss as ref
from vtkernels.testing import assert_close, rel_error, upcast

HAS_CUDA = torch.cuda.is_available()


def make_inputs(n, d, dtype, device, logit_scale=math.log(1 / 0.07), paired=None):
    # Correlated pairs (text = image + noise) so the accuracies are neither 0 nor 1; at scales
    # near 100 correlated pairs would make the loss and every gradient vanish (~exp(-40)) and the
    # comparison meaningless, so there the pairs are independent.
    paired = logit_scale < math.log(50) if paired is None else paired
    image = torch.randn(n, d, device=device)
    text = (image if paired else 0) + 1.5 * torch.randn(n, d, device=device)
    image = (image * 3).to(dtype).requires_grad_()
    text = text.to(dtype).requires_grad_()
    scale = torch.tensor(logit_scale, device=device, requires_grad=True)
    return image, text, scale


def loss_and_grads(image, text, scale, backend, return_stats=True, **kwargs):
    out = vtkernels.clip_loss(image, text, scale, backend=backend, return_stats=return_stats, **kwargs)
    if not return_stats:  # (the loss alone)
        out = types.SimpleNamespace(loss=out)
    wanted = [t for t in (image, text, scale) if t.requires_grad]
    g = torch.autograd.grad(out.loss, wanted)
    return out, list(g)


def check_against_reference(n, d, dtype, device, backend, logit_scale=math.log(1 / 0.07), normalize=True,
                            max_scale=100.0, grad_tol=None, return_stats=True):
    image, text, scale = make_inputs(n, d, dtype, device, logit_scale)
    out, ours = loss_and_grads(image, text, scale, backend, return_stats, normalize=normalize, max_scale=max_scale)
    inputs64 = upcast(image, text, scale)
    out64, ref_grads = loss_and_grads(*inputs64, "reference", normalize=normalize, max_scale=max_scale)
    peer_inputs = [t.detach().requires_grad_() for t in (image, text, scale)]
    peer, peer_grads = loss_and_grads(*peer_inputs, "reference", normalize=normalize, max_scale=max_scale)

    assert out.loss.dtype == torch.float32 and out.loss.shape == ()
    # Scalars (loss, d logit_scale) against the dtype bound only: the peer's error on one scalar
    # is a single random draw, too noisy for the "2x torch's own error" comparison.
    assert_close([out.loss, ours[2]], [out64.loss, ref_grads[2]], dtype, names=["loss", "d logit_scale"])
    assert_close(ours[:2], ref_grads[:2], dtype, names=["d image", "d text"], tol=grad_tol,
                 same_dtype_ref=peer_grads[:2])
    if not return_stats:
        return out, ours
    assert_close([out.image_logsumexp, out.text_logsumexp], [out64.image_logsumexp, out64.text_logsumexp], dtype,
                 names=["image lse", "text lse"], tol=1e-5 if dtype == torch.float32 else 2e-3)
    if n:
        assert out.image_to_text_accuracy.item() == pytest.approx(out64.image_to_text_accuracy.item())
        assert out.text_to_image_accuracy.item() == pytest.approx(out64.text_to_image_accuracy.item())
    return out, ours


# --- the reference ---------------------------------------------------------------------------

def test_reference_matches_logsumexp_formula():
    image, text, scale = upcast(*make_inputs(23, 19, torch.float32, "cpu"))
    loss = ref.clip_loss(image, text, scale)
    logits = scale.exp() * F.normalize(image, dim=1) @ F.normalize(text, dim=1).T
    expected = ((logits.logsumexp(1) + logits.logsumexp(0)) / 2 - logits.diagonal()).mean()
    assert torch.allclose(loss, expected, rtol=1e-12)
    # The clamp: beyond max_scale the temperature is max_scale and has no gradient.
    big = torch.tensor(math.log(500.0), dtype=torch.float64, requires_grad=True)
    clamped = ref.clip_loss(image, text, big, max_scale=100.0)
    assert torch.allclose(clamped, ref.clip_loss(image, text, torch.tensor(math.log(100.0), dtype=torch.float64)))
    clamped.backward()
    assert big.grad.item() == 0.0


# --- the Triton kernels against the float64 reference (CPU: interpreter) ---------------------

CPU_DTYPES = [torch.float32, torch.float16]


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("n", [1, 37, 70])
@pytest.mark.parametrize("d", [32, 48, 256])
def test_triton_matches_reference(n, d, dtype, device):
    check_against_reference(n, d, dtype, device, "triton")


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("n", [1, 70])
def test_triton_without_stats(n, dtype, device):
    """Without return_stats the kernels skip the maxima and take the positive logits from a
    row-wise dot product instead of the logit tiles."""
    check_against_reference(n, 48, dtype, device, "triton", return_stats=False)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_triton_scale_100_no_overflow(dtype, device):
    out, _ = check_against_reference(45, 48, dtype, device, "triton", logit_scale=math.log(99.5))
    assert torch.isfinite(out.loss)


def test_triton_clamped_scale_has_zero_gradient(device):
    out, (_, _, d_scale) = check_against_reference(33, 32, torch.float32, device, "triton", logit_scale=math.log(300.0))
    assert d_scale.item() == 0.0


def test_triton_unclamped_scale_has_gradient(device):
    _, (_, _, d_scale) = check_against_reference(33, 32, torch.float32, device, "triton", logit_scale=1.0)
    assert d_scale.abs().item() > 1e-3


def test_triton_without_normalize(device):
    check_against_reference(40, 48, torch.float32, device, "triton", normalize=False, logit_scale=-1.0)


def test_triton_several_backward_strips(monkeypatch, device):
    from vtkernels.triton import clip_loss as triton_clip

    # Strips of one column block: the dI accumulation and per-strip dT run several times.
    monkeypatch.setattr(triton_clip, "STRIP_BYTES", 1)
    monkeypatch.setattr(triton_clip, "MIN_STRIP", 1)
    check_against_reference(70, 48, torch.float32, device, "triton")
    check_against_reference(70, 32, torch.float16, device, "triton")


@pytest.mark.interpreter
def test_triton_tma_operands(monkeypatch):
    """The tile kernels and strip GEMMs with TMA descriptors (interpreted on the CPU): ragged n,
    several strips with a narrower last one (its stale columns must not leak into the GEMMs),
    and a d whose rows are not 16-byte aligned (40 bytes), which keeps pointers."""
    from vtkernels.triton import clip_loss as triton_clip
    from vtkernels.triton import strip_matmul as triton_strip

    boxes = []
    for module in (triton_clip, triton_strip):
        original_config, original_descriptor = module.launch_config, module.descriptor
        monkeypatch.setattr(module, "launch_config",
                            lambda *a, _original=original_config, **k: {**_original(*a, **k), "TMA": True})

        def spy(t, rows, cols, _original=original_descriptor):
            boxes.append((rows, cols))
            return _original(t, rows, cols)
        monkeypatch.setattr(module, "descriptor", spy)
    monkeypatch.setattr(triton_clip, "STRIP_BYTES", 1)
    monkeypatch.setattr(triton_clip, "MIN_STRIP", 1)  # 70 columns: strips of 32, 32 and 6 (32-wide tiles)
    check_against_reference(70, 48, torch.float16, torch.device("cpu"), "triton")
    # stats (I, T) + dlogits (I, T) + 3 strips x 2 GEMMs x (A, B)
    assert len(boxes) == 16
    boxes.clear()
    check_against_reference(37, 20, torch.float16, torch.device("cpu"), "triton")
    assert boxes == []


def test_forward_partials_stay_linear_in_n():
    """The forward's column partials have one row per row group (at most 32), not per 128-row
    block: at n = 262144 they take 32 x n x 4 bytes = 32 MiB instead of 2 GiB; the programs stay
    near 1024 at every size."""
    from vtkernels.triton.clip_loss import MAX_ROW_GROUPS, program_groups

    assert program_groups(2048, 4096) == (32, 64, 32, 128)  # n = 262144: 128-row, 64-column blocks
    assert program_groups(8, 16) == (8, 1, 16, 1)  # n = 1024: one block per group, 128 programs
    for row_blocks, col_blocks in ((512, 1024), (513, 1025), (3, 7)):
        row_groups, rows_per, groups, cols_per = program_groups(row_blocks, col_blocks)
        assert row_groups <= MAX_ROW_GROUPS and row_groups * rows_per >= row_blocks > (row_groups - 1) * rows_per
        assert groups * cols_per >= col_blocks > (groups - 1) * cols_per


def test_triton_non_contiguous_inputs(device):
    wide = torch.randn(50, 96, device=device)
    image = wide[:, :40].requires_grad_(False)  # row stride 96
    text = torch.randn(40, 50, device=device).T  # column stride 40: copied
    image.requires_grad_()
    text.requires_grad_()
    scale = torch.tensor(2.0, device=device, requires_grad=True)
    out, ours = loss_and_grads(image, text, scale, "triton")
    out64, theirs = loss_and_grads(*upcast(image, text, scale), "reference")
    assert_close([out.loss] + ours, [out64.loss] + theirs, torch.float32)


def test_accuracy_counts_ties_as_hits(device):
    """Image 1 / text 1 duplicate image 0 / text 0: their logits tie with the positive, a hit in
    the reference (the spec) and the kernels alike (an argmax would take the first index: 0.8)."""
    image = torch.randn(5, 16, device=device)
    image[1] = image[0]
    for backend in ("reference", "triton"):
        out = vtkernels.clip_loss(image, image.clone(), torch.tensor(2.0, device=device), return_stats=True,
                                  backend=backend)
        assert out.image_to_text_accuracy.item() == out.text_to_image_accuracy.item() == 1.0


def test_empty_batch(device):
    image, text, scale = make_inputs(0, 32, torch.float32, device)
    loss = vtkernels.clip_loss(image, text, scale, backend="triton")
    expected = vtkernels.clip_loss(image, text, scale, backend="reference")
    assert torch.isnan(loss) and torch.isnan(expected)
    d_image, d_text, d_scale = torch.autograd.grad(loss, (image, text, scale))
    assert d_image.shape == (0, 32) and d_text.shape == (0, 32) and d_scale.item() == 0.0


# --- registration, compile, module, dispatch ---------------------------------------------------

def test_opcheck_clip_loss_ops(device):
    image, text, scale = make_inputs(20, 32, torch.float32, device)
    for normalize in (True, False):
        for stats in (True, False):
            torch.library.opcheck(torch.ops.vtkernels.clip_loss_fwd.default,
                                  (image, text, scale, normalize, 100.0, stats, "triton"))
    out = torch.ops.vtkernels.clip_loss_fwd(image.detach(), text.detach(), scale.detach(), True, 100.0, False,
                                            "triton")
    _, _, _, row_lse, col_lse, image_n, text_n = out
    grad = torch.tensor(0.7, device=device)
    torch.library.opcheck(torch.ops.vtkernels.clip_loss_bwd.default,
                          (grad, image.detach(), text.detach(), image_n, text_n, scale.detach(), row_lse, col_lse,
                           True, 100.0, "triton"))


def test_torch_compile_fullgraph_has_no_graph_break(device):
    module = vtkernels.nn.ClipLoss(backend="triton").to(device)
    image, text, _ = make_inputs(24, 32, torch.float32, device)

    def step(a, b):
        return module(a * 2.0, b)

    compiled = torch.compile(step, fullgraph=True)  # inductor on the CPU
    loss = compiled(image, text)
    loss.backward()
    expected = vtkernels.clip_loss(image.detach() * 2.0, text.detach(), module.logit_scale.detach(),
                                   backend="reference")
    assert torch.allclose(loss, expected.float(), rtol=1e-5)
    assert image.grad is not None and module.logit_scale.grad is not None


def test_clip_loss_module(device):
    module = vtkernels.nn.ClipLoss(backend="triton", return_stats=True).to(device)
    assert list(module.state_dict()) == ["logit_scale"]
    assert module.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    image, text, _ = make_inputs(30, 32, torch.float32, device)
    out = module(image, text)
    assert isinstance(out, vtkernels.ClipLossOutput)
    out.loss.backward()
    expected = vtkernels.clip_loss(*upcast(image, text, module.logit_scale), backend="reference")
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert module.logit_scale.grad is not None and module.logit_scale.grad.abs().item() > 0
    with pytest.raises(ValueError, match="init_temperature"):
        vtkernels.nn.ClipLoss(init_temperature=0.0)


@pytest.mark.interpreter
def test_dispatch(device):
    image, text, scale = make_inputs(8, 16, torch.float32, "cpu")
    with vtkernels.use_backend("triton"):
        from_context = vtkernels.clip_loss(image, text, scale)
    assert from_context.dtype == torch.float32
    with pytest.raises(vtkernels.BackendError, match="CUDA"):
        vtkernels.clip_loss(image, text, scale, backend="cuda")
    with pytest.raises(vtkernels.BackendError, match="float64"):
        vtkernels.clip_loss(image.double(), text.double(), scale, backend="triton")
    # Automatic choice on the CPU is the reference (its loss keeps the input dtype).
    assert vtkernels.clip_loss(image.double(), text.double(), scale).dtype == torch.float64


def test_bad_input_names_the_argument():
    image, text, scale = make_inputs(8, 16, torch.float32, "cpu")
    with pytest.raises(ValueError, match="image_features must have 2 dimensions"):
        vtkernels.clip_loss(image[0], text, scale)
    with pytest.raises(ValueError, match="text_features must have shape"):
        vtkernels.clip_loss(image, text[:5], scale)
    with pytest.raises(TypeError, match="text_features has dtype"):
        vtkernels.clip_loss(image, text.half(), scale)
    with pytest.raises(ValueError, match="logit_scale must be a 0-dim"):
        vtkernels.clip_loss(image, text, torch.ones(2))
    with pytest.raises(TypeError, match="logit_scale must be a torch.Tensor"):
        vtkernels.clip_loss(image, text, 2.0)
    with pytest.raises(TypeError, match="image_features must be a torch.Tensor"):
        vtkernels.clip_loss(image.tolist(), text, scale)
    with pytest.raises(ValueError, match="max_scale must be > 0"):
        vtkernels.clip_loss(image, text, scale, max_scale=0.0)
    with pytest.raises(TypeError, match="image_features has dtype"):
        vtkernels.clip_loss(image.int(), text.int(), scale)
    with pytest.raises(ValueError, match="image_features must have a non-empty feature dimension"):
        vtkernels.clip_loss(image[:, :0], text[:, :0], scale)
    with pytest.raises(RuntimeError, match="torch.distributed is not initialized"):
        vtkernels.clip_loss(image, text, scale, distributed=True)


# --- GPU ---------------------------------------------------------------------------------------

GPU_BACKENDS = ["triton", "cuda"]


# compute-sanitizer injects itself through this variable; under it (pytest run under the tool by
# hand; tools/gpu_check.sh runs it over the self-check instead), only the small shapes run
# (memcheck makes every access 10-100x slower).
UNDER_CUDA_TOOL = "CUDA_INJECTION64_PATH" in os.environ


def _skip_if_heavy(n):
    if UNDER_CUDA_TOOL and n > 512:
        pytest.skip("large shape skipped under compute-sanitizer")


def _skip_if_refused(backend, dtype):
    probe = torch.zeros(2, 8, device="cuda", dtype=dtype)
    from vtkernels.ops.clip_loss import dispatcher

    reasons = dispatcher.refusals(backend, probe.device, image_features=probe)
    if reasons:
        pytest.skip("; ".join(reasons))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [256, 512, 768, 1024])
@pytest.mark.parametrize("n", [1, 333, 1000, 4097])
def test_gpu_matches_reference(n, d, dtype, backend):
    _skip_if_refused(backend, dtype)
    _skip_if_heavy(n)
    check_against_reference(n, d, dtype, "cuda", backend)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_large_scales_and_odd_d(dtype, backend):
    _skip_if_refused(backend, dtype)
    n = 200 if UNDER_CUDA_TOOL else 2000
    # log(99), not log(100): exp(log 100) lands on the clamp at 100, where float32 (ours, torch's)
    # and float64 round to opposite sides, and the logit_scale gradient is 0 on one side only.
    for d in (40, 200, 777):
        check_against_reference(n, d, dtype, "cuda", backend, logit_scale=math.log(99.0))
    check_against_reference(n - 1, 64, dtype, "cuda", backend, logit_scale=math.log(300.0))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_several_backward_strips(dtype, backend):
    # 128 MiB strips of n = 20000 rows are ~3300 columns wide: 7 strips, the last one partial.
    _skip_if_refused(backend, dtype)
    _skip_if_heavy(20000)
    check_against_reference(20000, 256, dtype, "cuda", backend)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_memory_stays_linear(backend):
    _skip_if_refused(backend, torch.bfloat16)
    _skip_if_heavy(32768)
    n, d = 32768, 768  # the logits alone would take n * n * 2 bytes = 2 GiB in bf16
    image, text, scale = make_inputs(n, d, torch.bfloat16, "cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = vtkernels.clip_loss(image, text, scale, backend=backend)
    loss.backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra < 768 * 2**20, f"peak extra memory {extra / 2**20:.0f} MiB"


def test_assert_close_allows_only_the_rounding_error_of_subnormal_results():
    # fp16 gradients of ~1e-6 (the loss's at n = 4096): stored exactly they are ~1e-2 off already,
    # so the bound is twice that rounding error, and a result 5x worse still fails.
    exact = (torch.rand(4096, dtype=torch.float64) + 0.1) * 1e-6
    stored = exact.to(torch.float16)
    assert rel_error(stored, exact) > 1e-2
    assert_close(stored, exact, torch.float16)
    noisy = (exact * (1 + 5 * rel_error(stored, exact) * torch.randn_like(exact).sign())).to(torch.float16)
    with pytest.raises(AssertionError, match="relative error"):
        assert_close(noisy, exact, torch.float16)
    # A reference beyond fp16's range (or infinite) loosens nothing, and NaN never passes.
    with pytest.raises(AssertionError, match="relative error"):
        assert_close(torch.tensor([float("nan"), 0.0], dtype=torch.float16), torch.tensor([1.0, 7e4]), torch.float16)
