"""QuickGELU op: reference vs HF's activation, kernels vs the float64 reference (forward and dx,
odd sizes, large |x|, non-contiguous input), opcheck, torch.compile, errors; the Triton formulas
of every activation (the MLP's GEMM epilogues) point by point against float64."""

import pytest
import torch
import triton
import triton.language as tl

import vtkernels
from vtkernels.ops.activation import quick_gelu_bwd, quick_gelu_fwd
from vtkernels.reference.activation import ACTIVATIONS, activation
from vtkernels.triton.activation import ACTIVATION_CODE, activate, activation_grad
from vtkernels.testing import assert_close, grads, upcast

CPU_DTYPES = [torch.float32, torch.float16]
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def check_against_reference(shape, dtype, device, backend, scale=4.0, transform=None):
    x = (scale * torch.randn(shape, device=device)).to(dtype).requires_grad_()
    used = transform(x) if transform else x
    out = vtkernels.quick_gelu(used, backend)
    assert out.shape == used.shape and out.dtype == dtype
    (x64,) = upcast(x)
    expected = vtkernels.quick_gelu(transform(x64) if transform else x64, "reference")
    peer = vtkernels.quick_gelu(used.detach(), "reference")
    assert_close(out, expected, dtype, names=["y"], same_dtype_ref=peer)
    cot = torch.randn_like(out)
    assert_close(grads(out, [x], cot), grads(expected, [x64], cot), dtype, names=["dx"])


def test_reference_matches_hf_activation():
    from transformers.activations import ACT2FN

    x = torch.randn(4, 33, dtype=torch.float64) * 5
    torch.testing.assert_close(vtkernels.quick_gelu(x, "reference"), ACT2FN["quick_gelu"](x))


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 77, 96), (5000,), (1,), (3, 2049)])  # tails of a 2048-element program
def test_triton_matches_reference(shape, dtype, device):
    check_against_reference(shape, dtype, device, "triton")


def test_triton_saturated_inputs_and_non_contiguous(device):
    x = torch.tensor([-200.0, -60.0, -1e-3, 0.0, 1e-3, 60.0, 200.0], device=device)
    y = vtkernels.quick_gelu(x, "triton")
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, vtkernels.quick_gelu(x, "reference"))
    check_against_reference((6, 40), torch.float32, device, "triton", transform=lambda t: t.t())


@triton.jit
def _formulas_kernel(X, Y, DY, n, ACT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    x = tl.load(X + offs, mask=ok, other=0.0)
    tl.store(Y + offs, activate(x, ACT), mask=ok)
    tl.store(DY + offs, activation_grad(x, ACT), mask=ok)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_triton_formulas_pointwise(name, device):
    """act(x) and act'(x) in fp32 within 1e-5 relative (plus 1e-6 absolute: act' crosses 0, and
    GELU's tail polynomial stops at |x| = 6.375, where |GELU(x)| < 6e-10) of float64 at every
    point of a dense sweep over [-12, 12], tiny and huge values, infinities and NaN (NaN wherever
    torch gives NaN)."""
    sweep = torch.linspace(-12, 12, 24001)
    special = torch.tensor([0.0, 1e-30, -1e-30, 1e-8, -1e-8, 6.375, -6.375, 6.374, -6.374, 1e18, -1e18,
                            float("inf"), float("-inf"), float("nan")])
    x = torch.cat([sweep, special]).to(device)
    x64 = x.cpu().double().requires_grad_()
    expected = activation(x64, name)
    (expected_grad,) = torch.autograd.grad(expected.sum(), x64)
    y, dy = torch.empty_like(x), torch.empty_like(x)
    _formulas_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, dy, x.numel(), ACT=ACTIVATION_CODE[name], BLOCK=1024)
    for ours, ref in ((y, expected.detach()), (dy, expected_grad)):
        torch.testing.assert_close(ours.cpu().double(), ref, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_cuda_gelu_uses_the_triton_polynomial():
    """The CUDA GELU (csrc/common/activation.cuh) evaluates the polynomial the pointwise test above
    checks in Triton: the same coefficients and cut-off, as float32."""
    import pathlib
    import re

    from vtkernels.triton import activation as triton_activation

    header = (pathlib.Path(__file__).parents[1] / "csrc/common/activation.cuh").read_text()
    table = re.search(r"kTailP\[10\] = \{([^}]*)\}", header).group(1)
    cuda = torch.tensor([float(c.strip().rstrip("f")) for c in table.split(",")])
    names = [f"TAIL_P{k}" for k in range(10)]
    ours = torch.tensor([getattr(triton_activation, name).value for name in names])
    torch.testing.assert_close(cuda, ours, rtol=0, atol=0)
    limit = float(re.search(r"kTailLimit = ([0-9.]+)f;", header).group(1))
    assert limit == triton_activation.TAIL_LIMIT.value


def test_empty_input(device):
    x = torch.empty(0, 8, device=device, requires_grad=True)
    out = vtkernels.quick_gelu(x, "triton")
    out.sum().backward()
    assert out.shape == (0, 8) and x.grad.shape == (0, 8)


def test_custom_ops_opcheck(device):
    x = torch.randn(3, 50, device=device)
    torch.library.opcheck(quick_gelu_fwd, (x, "triton"))
    torch.library.opcheck(quick_gelu_bwd, (torch.randn_like(x), x, "triton"))


def test_torch_compile_fullgraph(device):
    block = torch.nn.Sequential(torch.nn.Linear(16, 64), vtkernels.nn.QuickGELU("triton")).to(device)
    x = torch.randn(2, 5, 16, device=device)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), block(x))


@pytest.mark.interpreter
def test_bad_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match="x has dtype torch.int64"):
        vtkernels.quick_gelu(torch.ones(3, dtype=torch.long))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        vtkernels.quick_gelu([1.0, 2.0])
    with pytest.raises(vtkernels.BackendError, match="bfloat16"):
        vtkernels.quick_gelu(torch.ones(3, dtype=torch.bfloat16), backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("shape", [(256, 197, 3072), (7, 1001), (3,)])  # CLIP-B/16's MLP; odd sizes: scalar tail
def test_gpu_kernels_match_reference(shape, dtype, backend):
    check_against_reference(shape, dtype, torch.device("cuda"), backend)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_unaligned_view(backend):
    """A view starting one element in: the CUDA kernel's 16-byte vectors do not apply."""
    base = torch.randn(4097, device="cuda", dtype=torch.bfloat16)
    x = base[1:]
    torch.testing.assert_close(vtkernels.quick_gelu(x, backend), vtkernels.quick_gelu(x.double(), "reference").bfloat16())
