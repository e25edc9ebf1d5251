"""LayerNorm / RMSNorm: reference vs torch, kernels vs the float64 reference (forward and every
gradient), custom-op registration, torch.compile, modules, dispatch and bad input."""

import pytest
import torch
import torch.nn.functional as F

import vtkernels
from vtkernels.reference import norm as ref
from vtkernels.testing import assert_close, grads, upcast

HAS_CUDA = torch.cuda.is_available()
CPU_DTYPES = [torch.float32, torch.float16]
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def run_norm(x, weight, bias, residual, rms, backend, eps=1e-5):
    if rms:
        return vtkernels.rms_norm(x, weight, eps, residual, backend=backend)
    return vtkernels.layer_norm(x, weight, bias, eps, residual, backend=backend)


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def make_inputs(shape, dtype, device, affine=True, with_bias=True, with_residual=False, requires_grad=True):
    def rand(*s, scale=1.0):
        return (torch.randn(*s, device=device, dtype=torch.float32) * scale).to(dtype).requires_grad_(requires_grad)

    x = rand(*shape, scale=2.0) + 0.5 if requires_grad else rand(*shape, scale=2.0)
    if requires_grad:
        x = x.detach().requires_grad_()
    weight = rand(shape[-1]) if affine else None
    bias = rand(shape[-1]) if affine and with_bias else None
    residual = rand(*shape) if with_residual else None
    return x, weight, bias, residual


def check_against_reference(shape, dtype, device, backend, rms=False, affine=True, with_residual=False):
    x, weight, bias, residual = make_inputs(shape, dtype, device, affine, not rms, with_residual)
    bias = None if rms else bias
    inputs = [x, weight, bias, residual]
    out = as_tuple(run_norm(x, weight, bias, residual, rms, backend))
    cot = [torch.randn_like(o) for o in out]
    ours = grads(out, inputs, cot)

    x64, w64, b64, r64 = upcast(*inputs)
    out64 = as_tuple(run_norm(x64, w64, b64, r64, rms, "reference"))
    ref_grads = grads(out64, [x64, w64, b64, r64], cot)

    peer = as_tuple(run_norm(*[t.detach().requires_grad_() if t is not None else None for t in inputs], rms=rms,
                             backend="reference"))
    names = ["y", "h"][: len(out)]
    assert_close(out, out64, dtype, names=names, same_dtype_ref=peer)
    grad_names = ["dx", "dweight", "dbias", "dresidual"]
    kept = [i for i, t in enumerate(inputs) if t is not None]
    # Gradient sums over many rows (dweight, dbias) carry the dtype's rounding of every row.
    tol = None if dtype == torch.float32 else 2e-2
    assert_close([ours[i] for i in kept], [ref_grads[i] for i in kept], dtype,
                 names=[grad_names[i] for i in kept], tol=tol)


# --- reference vs torch ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_reference_layer_norm_matches_torch(dtype):
    x = torch.randn(4, 9, 100, dtype=dtype)
    w, b = torch.randn(100, dtype=dtype), torch.randn(100, dtype=dtype)
    expected = F.layer_norm(x, (100,), w, b, 1e-5)
    assert torch.allclose(ref.layer_norm(x, w, b, 1e-5), expected, atol=1e-5 if dtype == torch.float32 else 1e-12)
    r = torch.randn_like(x)
    y, h = ref.layer_norm(x, w, b, 1e-5, residual=r)
    assert torch.equal(h, x + r)
    assert torch.allclose(y, F.layer_norm(x + r, (100,), w, b, 1e-5), atol=1e-5)


def test_reference_rms_norm_matches_torch():
    x = torch.randn(6, 64, dtype=torch.float64)
    w = torch.randn(64, dtype=torch.float64)
    assert torch.allclose(ref.rms_norm(x, w, 1e-6), F.rms_norm(x, (64,), w, 1e-6), atol=1e-12)


def test_reference_keeps_low_precision_output_dtype():
    x = torch.randn(3, 32, dtype=torch.float16)
    assert ref.layer_norm(x, None, None).dtype == torch.float16


# --- Triton under the interpreter (CPU) or on the GPU ---------------------------------------

@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 64), (5, 100), (7, 768), (3, 1000)])
@pytest.mark.parametrize("rms", [False, True])
def test_triton_matches_reference(shape, dtype, rms, device):
    check_against_reference(shape, dtype, device, "triton", rms=rms)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("rms", [False, True])
def test_triton_fused_residual(dtype, rms, device):
    check_against_reference((9, 200), dtype, device, "triton", rms=rms, with_residual=True)


@pytest.mark.parametrize("rms", [False, True])
def test_triton_without_affine(rms, device):
    check_against_reference((6, 96), torch.float32, device, "triton", rms=rms, affine=False)


def test_triton_non_contiguous_input(device):
    base = torch.randn(8, 130, device=device)
    x = base[:, 1:129].requires_grad_()  # row stride 130, last dim contiguous
    w = torch.randn(128, device=device, requires_grad=True)
    y = vtkernels.layer_norm(x, w, None, backend="triton")
    expected = ref.layer_norm(x.detach().double(), w.detach().double(), None)
    assert_close(y, expected, torch.float32)
    xt = torch.randn(64, 6, device=device).t().requires_grad_()  # last dim strided: copied
    assert_close(vtkernels.layer_norm(xt, None, None, backend="triton"), ref.layer_norm(xt.double(), None, None),
                 torch.float32)


def check_strided_weight_and_bias(rms, device, backend):
    """Weight / bias views with a non-unit stride (w[::2]): the kernels read them with unit
    stride, so the op copies them (before, Triton read the wrong elements)."""
    x = torch.randn(5, 64, device=device, requires_grad=True)
    bases = [torch.randn(128, device=device, requires_grad=True) for _ in range(2)]
    weight, bias = bases[0][::2], None if rms else bases[1][::2]
    out = run_norm(x, weight, bias, None, rms, backend)
    inputs = [x, bases[0]] + ([] if rms else [bases[1]])
    ref_inputs = upcast(*inputs)
    expected = run_norm(ref_inputs[0], ref_inputs[1][::2], None if rms else ref_inputs[2][::2], None, rms, "reference")
    cot = torch.randn_like(out)
    assert_close(out, expected, torch.float32)
    assert_close(grads(out, inputs, cot), grads(expected, ref_inputs, cot), torch.float32)


@pytest.mark.parametrize("rms", [False, True])
def test_triton_strided_weight_and_bias(rms, device):
    check_strided_weight_and_bias(rms, device, "triton")


def test_empty_batch_gives_empty_output(device):
    x = torch.randn(0, 7, 64, device=device, requires_grad=True)
    w = torch.randn(64, device=device, requires_grad=True)
    y = vtkernels.layer_norm(x, w, None, backend="triton")
    assert y.shape == (0, 7, 64)
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.all(w.grad == 0)


def test_one_dimensional_input(device):
    x, weight = torch.randn(8, device=device), torch.randn(8, device=device)
    for rms in (False, True):
        assert_close(run_norm(x, weight, None, None, rms, "triton"), run_norm(x.double(), weight.double(), None, None, rms,
                                                                             "reference"), torch.float32)


def test_batch_of_one(device):
    check_against_reference((1, 1, 64), torch.float32, device, "triton")


# --- GPU: both kernel backends, every dtype, awkward sizes -------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("shape", [(4, 197, 768), (2, 577, 1024), (3, 257, 1280), (64, 8192), (33, 64), (5, 1000),
                                   (7, 1001), (1, 1, 512), (130, 4096)])
@pytest.mark.parametrize("rms", [False, True])
def test_gpu_kernels_match_reference(backend, dtype, shape, rms):
    check_against_reference(shape, dtype, torch.device("cuda"), backend, rms=rms)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_gpu_fused_residual(backend, dtype, affine):
    check_against_reference((8, 197, 768), dtype, torch.device("cuda"), backend, affine=affine, with_residual=True)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_weight_grad_is_deterministic(backend):
    x, w, b, _ = make_inputs((64, 197, 768), torch.bfloat16, "cuda")
    dy = torch.randn_like(x)
    results = []
    for _ in range(2):
        dw, db = torch.autograd.grad(vtkernels.layer_norm(x, w, b, backend=backend), [w, b], dy)
        results.append((dw, db))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_strided_weight_and_bias(backend):
    check_strided_weight_and_bias(False, torch.device("cuda"), backend)


@pytest.mark.gpu
@pytest.mark.extension
def test_gpu_cuda_misaligned_rows_use_fallback():
    base = torch.randn(16 * 769 + 1, device="cuda", dtype=torch.float16)
    x = base[1:].view(16, 769)[:, :768]  # rows start 2 bytes off 16-byte alignment
    w = torch.randn(768, device="cuda", dtype=torch.float16)
    y = vtkernels.layer_norm(x, w, None, backend="cuda")
    assert_close(y, ref.layer_norm(x.double(), w.double(), None), torch.float16)


# --- registration, compile, modules ------------------------------------------------------------

def test_opcheck_norm_ops(device):
    x = torch.randn(6, 64, device=device, requires_grad=True)
    r = torch.randn(6, 64, device=device, requires_grad=True)
    w = torch.randn(64, device=device, requires_grad=True)
    b = torch.randn(64, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.vtkernels.norm_fwd.default, (x, r, w, b, 1e-5, False, "triton"))
    torch.library.opcheck(torch.ops.vtkernels.norm_fwd.default, (x, None, w, None, 1e-5, True, "triton"))
    y, h, mean, rstd = torch.ops.vtkernels.norm_fwd(x.detach(), r.detach(), w.detach(), b.detach(), 1e-5, False,
                                                    "triton")
    torch.library.opcheck(torch.ops.vtkernels.norm_bwd.default,
                          (torch.randn_like(y), torch.randn_like(y), h, w.detach(), mean, rstd, False, True, "triton"))


def test_torch_compile_fullgraph_has_no_graph_break(device):
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = vtkernels.nn.LayerNorm(64, backend="triton")
            self.norm2 = vtkernels.nn.LayerNorm(64, backend="triton")

        def forward(self, x, r):
            y, h = self.norm1(x, r)
            return self.norm2(y * 2 + h)

    block = Block().to(device)
    x = torch.randn(3, 5, 64, device=device, requires_grad=True)
    r = torch.randn(3, 5, 64, device=device)
    compiled = torch.compile(block, fullgraph=True)  # inductor on the CPU
    out = compiled(x, r)
    out.sum().backward()
    assert torch.allclose(out, block(x, r), atol=1e-5)
    assert x.grad is not None


@pytest.mark.interpreter
def test_layer_norm_module_is_drop_in():
    theirs = torch.nn.LayerNorm(96, eps=1e-6)
    torch.nn.init.normal_(theirs.weight)
    torch.nn.init.normal_(theirs.bias)
    ours = vtkernels.nn.LayerNorm(96, eps=1e-6)
    ours.load_state_dict(theirs.state_dict())
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x = torch.randn(4, 96)
    with vtkernels.use_backend("triton"):
        assert_close(ours(x), theirs(x).double(), torch.float32)
    no_bias = vtkernels.nn.LayerNorm(96, bias=False)
    assert "bias" not in no_bias.state_dict()


def test_rms_norm_module_matches_torch_rms_norm():
    theirs = torch.nn.RMSNorm(80, eps=1e-5)
    torch.nn.init.normal_(theirs.weight)
    ours = vtkernels.nn.RMSNorm(80, eps=1e-5)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 80)
    assert_close(ours(x), theirs(x).double(), torch.float32)


def test_module_casts_fp32_params_to_activation_dtype(device):
    norm = vtkernels.nn.LayerNorm(64, backend="triton").to(device)
    x = torch.randn(4, 64, device=device, dtype=torch.float16)
    assert norm(x).dtype == torch.float16


# --- dispatch and bad input --------------------------------------------------------------------

def test_cpu_tensors_default_to_reference():
    assert vtkernels.ops.norm.dispatcher.choose(torch.device("cpu"), None, x=torch.randn(2, 8)) == "reference"


@pytest.mark.interpreter
def test_backend_selection_order(monkeypatch):
    x = torch.randn(2, 8)
    choose = vtkernels.ops.norm.dispatcher.choose
    monkeypatch.setenv("VTKERNELS_BACKEND", "reference")
    assert choose(x.device, None, x=x) == "reference"
    with vtkernels.use_backend("triton"):
        assert choose(x.device, None, x=x) == "triton"
        assert choose(x.device, "reference", x=x) == "reference"


def test_forcing_an_unavailable_backend_lists_the_reasons():
    with pytest.raises(vtkernels.BackendError, match="cuda.*CUDA tensor"):
        vtkernels.layer_norm(torch.randn(2, 8), backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        vtkernels.layer_norm(torch.randn(2, 8), backend="tpu")


def test_kernels_run_on_their_tensors_gpu_when_there_are_several(monkeypatch):
    """Triton launches on the current device: with several GPUs, its kernel functions make the
    first tensor argument's GPU current for the call; with one they are handed out unwrapped."""
    from vtkernels import _extension

    entered = []

    class RecordingDevice:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            return False

    def kernel(x, y):
        return entered[-1] if entered else None

    class OnSecondGpu(torch.Tensor):  # a CPU tensor that reports cuda:1
        device = property(lambda self: torch.device("cuda", 1))

    on_cuda1 = torch.zeros(1).as_subclass(OnSecondGpu)
    monkeypatch.setattr(_extension, "_several_gpus", lambda: False)
    assert _extension.device_guarded(kernel) is kernel
    monkeypatch.setattr(_extension, "_several_gpus", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", RecordingDevice)
    assert _extension.device_guarded(kernel)(3, on_cuda1) == torch.device("cuda", 1)
    entered.clear()
    assert _extension.device_guarded(kernel)(torch.zeros(1), on_cuda1) is None  # the first tensor is on the CPU


@pytest.mark.gpu
def test_gpu_norm_on_a_second_gpu():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    x, w = torch.randn(4, 96, device="cuda:1"), torch.randn(96, device="cuda:1")
    for backend in ("triton", "cuda"):
        if vtkernels.ops.norm.dispatcher.refusals(backend, x.device, x=x):
            continue
        assert_close(vtkernels.rms_norm(x, w, backend=backend), vtkernels.rms_norm(x, w, backend="reference"),
                     torch.float32, names=[backend])


@pytest.mark.interpreter
def test_triton_refuses_bf16_in_the_interpreter():
    if HAS_CUDA:
        pytest.skip("the interpreter is only used without a GPU")
    with pytest.raises(vtkernels.BackendError, match="interpreter"):
        vtkernels.layer_norm(torch.randn(2, 8, dtype=torch.bfloat16), backend="triton")


@pytest.mark.interpreter
def test_too_wide_rows_fall_back_to_reference_or_explain():
    x = torch.randn(2, 8193)
    assert vtkernels.layer_norm(x).shape == x.shape  # reference on CPU
    with pytest.raises(vtkernels.BackendError, match="8193 > 8192"):
        vtkernels.layer_norm(x, backend="triton")


@pytest.mark.parametrize("call, match", [
    (lambda: vtkernels.layer_norm(torch.randn(2, 8), torch.randn(7)), "weight must have shape"),
    (lambda: vtkernels.layer_norm(torch.randn(2, 8), None, torch.randn(8, dtype=torch.float16)), "bias has dtype"),
    (lambda: vtkernels.layer_norm(torch.randn(2, 8), eps=0.0), "eps must be > 0"),
    (lambda: vtkernels.layer_norm(torch.randn(2, 8), eps=-1e-5), "eps must be > 0"),
    (lambda: vtkernels.layer_norm(torch.randn(2, 0)), "non-empty last"),
    (lambda: vtkernels.layer_norm(torch.randn(2, 8), residual=torch.randn(2, 9)), "residual must have shape"),
    (lambda: vtkernels.layer_norm(torch.randint(0, 5, (2, 8))), "x has dtype"),
    (lambda: vtkernels.rms_norm([1.0, 2.0]), "x must be a torch.Tensor"),
    (lambda: vtkernels.layer_norm(torch.randn(2, 8), torch.randn(8, device="meta")), "weight is on meta"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
