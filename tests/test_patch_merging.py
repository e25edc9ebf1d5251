"""Swin patch merging (2x2 gather + LayerNorm(4C)): reference vs HF, Triton vs the float64
reference (forward, dx, dweight, dbias), custom ops, torch.compile, module, bad input."""

import pytest
import torch

import vtkernels
from vtkernels.reference import window_attention as ref
from vtkernels.testing import assert_close, grads, upcast

CPU_DTYPES = [torch.float32, torch.float16]
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(2, 8, 6, 24), (1, 7, 9, 32), (3, 5, 5, 20), (1, 1, 1, 16)]


def make_inputs(shape, dtype, device, affine=True):
    x = (torch.randn(*shape, device=device) * 2 + 0.5).to(dtype).requires_grad_()
    c4 = 4 * shape[-1]
    w = torch.randn(c4, device=device).to(dtype).requires_grad_() if affine else None
    b = torch.randn(c4, device=device).to(dtype).requires_grad_() if affine else None
    return x, w, b


def check_against_reference(shape, dtype, device, backend, affine=True, transform=None):
    x, w, b = make_inputs(shape, dtype, device, affine)
    used = transform(x) if transform else x
    out = vtkernels.patch_merging_norm(used, w, b, 1e-5, backend=backend)
    cot = torch.randn_like(out)
    ours = grads(out, [x, w, b], cot)
    x64, w64, b64 = upcast(x, w, b)
    out64 = vtkernels.patch_merging_norm(transform(x64) if transform else x64, w64, b64, 1e-5, backend="reference")
    expected = grads(out64, [x64, w64, b64], cot)
    peer = vtkernels.patch_merging_norm(used.detach(), w if w is None else w.detach(), b if b is None else b.detach(),
                                        1e-5, backend="reference")
    assert_close(out, out64, dtype, names=["y"], same_dtype_ref=peer)
    kept = [i for i, t in enumerate([x, w, b]) if t is not None]
    assert_close([ours[i] for i in kept], [expected[i] for i in kept], dtype,
                 names=[["dx", "dweight", "dbias"][i] for i in kept], tol=None if dtype == torch.float32 else 2e-2)


@pytest.mark.parametrize("height, width", [(8, 6), (7, 9)])
def test_reference_gather_matches_hf(height, width):
    pytest.importorskip("transformers")
    from transformers.models.swin.modeling_swin import SwinPatchMerging

    hf = SwinPatchMerging(16).double()
    torch.nn.init.normal_(hf.norm.weight)
    torch.nn.init.normal_(hf.norm.bias)
    x = torch.randn(2, height, width, 16, dtype=torch.float64)
    expected = hf(x.view(2, -1, 16), (height, width))
    ours = vtkernels.patch_merging_norm(x, hf.norm.weight, hf.norm.bias, hf.norm.eps, backend="reference")
    got = hf.reduction(ours).view(2, -1, 32)
    assert torch.allclose(got, expected, atol=1e-10)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_matches_reference(shape, dtype, device):
    check_against_reference(shape, dtype, device, "triton")


def test_triton_without_affine_and_non_contiguous(device):
    check_against_reference((2, 6, 7, 24), torch.float32, device, "triton", affine=False)
    check_against_reference((2, 6, 7, 24), torch.float32, device, "triton",
                            transform=lambda t: t.transpose(1, 2).contiguous().transpose(1, 2))


def check_strided_weight_and_bias(device, backend):
    """Weight / bias views with a non-unit stride: copied by the op (Triton read them wrongly)."""
    x = torch.randn(2, 6, 7, 8, device=device, requires_grad=True)
    bases = [torch.randn(64, device=device, requires_grad=True) for _ in range(2)]
    out = vtkernels.patch_merging_norm(x, bases[0][::2], bases[1][::2], 1e-5, backend=backend)
    inputs = upcast(x, *bases)
    expected = vtkernels.patch_merging_norm(inputs[0], inputs[1][::2], inputs[2][::2], 1e-5, backend="reference")
    cot = torch.randn_like(out)
    assert_close(out, expected, torch.float32)
    assert_close(grads(out, [x, *bases], cot), grads(expected, inputs, cot), torch.float32)


def test_triton_strided_weight_and_bias(device):
    check_strided_weight_and_bias(device, "triton")


def test_empty_batch(device):
    x, w, b = make_inputs((0, 6, 6, 16), torch.float32, device)
    out = vtkernels.patch_merging_norm(x, w, b, backend="triton")
    assert out.shape == (0, 3, 3, 64)
    out.sum().backward()
    assert x.grad.shape == x.shape


GPU_SHAPES = SHAPES + [(8, 56, 56, 96), (8, 28, 28, 192), (4, 14, 14, 384), (2, 7, 7, 512), (2, 9, 11, 36),
                       (2, 3, 5, 1100), (1, 3, 4, 2048)]


# CUDA scalar path: channels not a multiple of 8 in fp16 / bf16 ((3, 5, 5, 20), (2, 9, 11, 36)), and
# fp32 backward rows longer than its widest vector layout (4 * 1100, 4 * 2048 > 4096 columns).
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_gpu_kernels_match_reference(shape, dtype, backend):
    check_against_reference(shape, dtype, torch.device("cuda"), backend)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_gpu_without_affine_and_non_contiguous(dtype, backend):
    cuda = torch.device("cuda")
    check_against_reference((2, 13, 10, 64), dtype, cuda, backend, affine=False)
    check_against_reference((2, 13, 10, 64), dtype, cuda, backend,
                            transform=lambda t: t.transpose(1, 2).contiguous().transpose(1, 2))
    # Channels 1..64 of a 66-channel buffer: pixels start off 16-byte alignment (the CUDA scalar path).
    check_against_reference((2, 6, 7, 66), dtype, cuda, backend, affine=False, transform=lambda t: t[..., 1:65])


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_strided_weight_and_bias(backend):
    check_strided_weight_and_bias(torch.device("cuda"), backend)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_empty_batch(backend):
    x, w, b = make_inputs((0, 6, 6, 16), torch.float32, torch.device("cuda"))
    out = vtkernels.patch_merging_norm(x, w, b, backend=backend)
    assert out.shape == (0, 3, 3, 64)
    out.sum().backward()
    assert x.grad.shape == x.shape and torch.all(w.grad == 0) and torch.all(b.grad == 0)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_weight_grad_is_deterministic(backend):
    x, w, b = make_inputs((16, 56, 56, 96), torch.bfloat16, torch.device("cuda"))
    cot = torch.randn(16, 28, 28, 384, device="cuda", dtype=torch.bfloat16)
    first = torch.autograd.grad(vtkernels.patch_merging_norm(x, w, b, backend=backend), [x, w, b], cot)
    second = torch.autograd.grad(vtkernels.patch_merging_norm(x, w, b, backend=backend), [x, w, b], cot)
    for a, c in zip(first, second):
        assert torch.equal(a, c)


@pytest.mark.gpu
@pytest.mark.extension
def test_gpu_opcheck_cuda_ops():
    x, w, b = make_inputs((2, 5, 6, 8), torch.float32, torch.device("cuda"))
    torch.library.opcheck(torch.ops.vtkernels.patch_merging_norm_fwd.default, (x, w, b, 1e-5, "cuda"))
    torch.library.opcheck(torch.ops.vtkernels.patch_merging_norm_fwd.default, (x, None, None, 1e-5, "cuda"))
    y, mean, rstd = torch.ops.vtkernels.patch_merging_norm_fwd(x.detach(), w.detach(), b.detach(), 1e-5, "cuda")
    torch.library.opcheck(torch.ops.vtkernels.patch_merging_norm_bwd.default,
                          (torch.randn_like(y), x.detach(), w.detach(), mean, rstd, True, "cuda"))


def test_opcheck_patch_merging_ops(device):
    x, w, b = make_inputs((2, 5, 6, 8), torch.float32, device)
    torch.library.opcheck(torch.ops.vtkernels.patch_merging_norm_fwd.default, (x, w, b, 1e-5, "triton"))
    torch.library.opcheck(torch.ops.vtkernels.patch_merging_norm_fwd.default, (x, None, None, 1e-5, "triton"))
    y, mean, rstd = torch.ops.vtkernels.patch_merging_norm_fwd(x.detach(), w.detach(), b.detach(), 1e-5, "triton")
    torch.library.opcheck(torch.ops.vtkernels.patch_merging_norm_bwd.default,
                          (torch.randn_like(y), x.detach(), w.detach(), mean, rstd, True, "triton"))


def test_module_state_dict_and_compile(device):
    ours = vtkernels.nn.PatchMerging(16, backend="triton").to(device)
    assert set(ours.state_dict()) == {"norm.weight", "norm.bias", "reduction.weight"}
    x = torch.randn(2, 7, 6, 16, device=device, requires_grad=True)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    expected = ours.reduction(ref.patch_merging_norm(x, ours.norm.weight, ours.norm.bias, 1e-5))
    assert out.shape == (2, 4, 3, 32)
    assert_close(out, expected.double(), torch.float32)
    assert x.grad is not None and ours.norm.weight.grad is not None


@pytest.mark.parametrize("kwargs, match", [
    (dict(weight=torch.randn(63)), "weight"),
    (dict(x=torch.randn(4, 4, 16)), "x"),
    (dict(x=torch.randn(1, 4, 4, 0), weight=torch.randn(0)), "x must have channels"),
    (dict(eps=0.0), "eps"),
    (dict(bias=torch.randn(64).double()), "bias"),
])
def test_bad_input_names_the_argument(kwargs, match):
    x = kwargs.get("x", torch.randn(1, 4, 4, 16))
    with pytest.raises((ValueError, TypeError), match=match):
        vtkernels.patch_merging_norm(x, kwargs.get("weight"), kwargs.get("bias"), kwargs.get("eps", 1e-5))
