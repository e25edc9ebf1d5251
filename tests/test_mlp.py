"""MLP op (fc1 -> activation -> fc2, activation fused into the GEMMs): reference vs torch / HF
activations, kernels vs the float64 reference (forward and every gradient, ragged sizes, no bias,
leading shapes, non-contiguous input), inference path (no pre-activation saved), opcheck,
torch.compile, autocast, errors, the modules and optimize() of timm / HF MLPs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vtkernels
from vtkernels.nn.mlp import activation_name
from vtkernels.ops.mlp import mlp_bwd, mlp_fwd
from vtkernels.reference.activation import ACTIVATIONS
from vtkernels.testing import assert_close, grads, upcast

CPU_DTYPES = [torch.float32, torch.float16]
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
GRAD_NAMES = ["dx", "dfc1_weight", "dfc1_bias", "dfc2_weight", "dfc2_bias"]


def make_inputs(lead, dim, hidden, dim_out, dtype, device, bias=True):
    def param(*shape):
        return (torch.randn(shape, device=device) / 3).to(dtype).requires_grad_()

    return [param(*lead, dim), param(hidden, dim), param(hidden) if bias else None, param(dim_out, hidden),
            param(dim_out) if bias else None]


def check_against_reference(lead, dim, hidden, dim_out, activation, dtype, device, backend, bias=True, transform=None):
    inputs = make_inputs(lead, dim, hidden, dim_out, dtype, device, bias)
    x = transform(inputs[0]) if transform else inputs[0]
    out = vtkernels.mlp(x, *inputs[1:], activation=activation, backend=backend)
    assert out.shape == (*x.shape[:-1], dim_out) and out.dtype == dtype
    upcast_inputs = upcast(*inputs)
    x64 = transform(upcast_inputs[0]) if transform else upcast_inputs[0]
    expected = vtkernels.mlp(x64, *upcast_inputs[1:], activation=activation, backend="reference")
    peer = vtkernels.mlp(x.detach(), *[t if t is None else t.detach() for t in inputs[1:]], activation=activation,
                         backend="reference")
    assert_close(out, expected, dtype, names=["out"], same_dtype_ref=peer)
    cot = torch.randn_like(out)
    names = [n for n, t in zip(GRAD_NAMES, inputs) if t is not None]
    assert_close(grads(out, [t for t in inputs if t is not None], cot),
                 grads(expected, [t for t in upcast_inputs if t is not None], cot), dtype, names=names)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_reference_activations_match_torch_and_hf(activation):
    from transformers.activations import ACT2FN

    x = torch.randn(4, 33, dtype=torch.float64) * 4
    hf_name = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu", "relu": "relu"}[activation]
    weights = [torch.randn(20, 33, dtype=torch.float64), torch.randn(20, dtype=torch.float64),
               torch.randn(7, 20, dtype=torch.float64), torch.randn(7, dtype=torch.float64)]
    expected = F.linear(ACT2FN[hf_name](F.linear(x, *weights[:2])), *weights[2:])
    torch.testing.assert_close(vtkernels.mlp(x, *weights, activation=activation, backend="reference"), expected)


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_triton_matches_reference(activation, dtype, device):
    # dim 48 and hidden 80 are ragged against the interpreter's 32-wide tiles; 77 rows too.
    check_against_reference((77,), 48, 80, 40, activation, dtype, device, "triton")


@pytest.mark.parametrize("shape", [((2, 3, 5), 16, 64, 16), ((1,), 32, 128, 32), ((64,), 96, 384, 96)])
def test_triton_shapes_and_no_bias(shape, device):
    lead, dim, hidden, dim_out = shape
    check_against_reference(lead, dim, hidden, dim_out, "gelu", torch.float32, device, "triton")
    check_against_reference(lead, dim, hidden, dim_out, "quick_gelu", torch.float16, device, "triton", bias=False)


def test_triton_non_contiguous_input(device):
    check_against_reference((24, 10), 40, 64, 40, "gelu_tanh", torch.float32, device, "triton",
                            transform=lambda t: t.transpose(0, 1))


@pytest.fixture
def kernel_spy(monkeypatch):
    """Forces the TMA choice of vtkernels.triton.mlp.launch_config (``force(True)``) and records
    which GEMM kernel each launch ran."""
    from vtkernels.triton import mlp as triton_mlp

    ran, original_config = [], triton_mlp.launch_config
    for name in ("gemm_act_kernel", "gemm_act_tma_kernel"):
        kernel = getattr(triton_mlp, name)

        class Spy:
            def __getitem__(self, grid, kernel=kernel, name=name):
                ran.append(name)
                return kernel[grid]
        monkeypatch.setattr(triton_mlp, name, Spy())

    def force(tma: bool):
        monkeypatch.setattr(triton_mlp, "launch_config", lambda *a, **k: {**original_config(*a, **k), "TMA": tma})
    return force, ran


@pytest.mark.interpreter
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", [((77,), 48, 80, 40), ((3, 5), 8, 16, 8), ((70,), 96, 104, 24)])
def test_triton_tma_kernel_matches_reference(shape, activation, kernel_spy):
    """The persistent TMA kernel (on the CPU: interpreted descriptors, 3 programs walking the
    tiles), ragged against its 32-wide tiles in every dimension, forward and backward."""
    force, ran = kernel_spy
    force(True)
    lead, dim, hidden, dim_out = shape
    check_against_reference(lead, dim, hidden, dim_out, activation, torch.float16, torch.device("cpu"), "triton")
    assert ran == ["gemm_act_tma_kernel", "gemm_act_tma_kernel"]


@pytest.mark.interpreter
def test_triton_tma_falls_back_where_tma_cannot_address(kernel_spy):
    """Row strides that are not a multiple of 16 bytes (x and d out rows of 20 fp16: 40 bytes),
    fp32, and views whose base is not 16-byte aligned (or broadcast) run on the pointer kernel."""
    from vtkernels.triton.tma import tma_usable

    force, ran = kernel_spy
    force(True)
    check_against_reference((9,), 20, 32, 20, "gelu", torch.float16, torch.device("cpu"), "triton")
    assert ran == ["gemm_act_kernel", "gemm_act_kernel"]
    ran.clear()
    check_against_reference((9,), 16, 32, 16, "relu", torch.float32, torch.device("cpu"), "triton")
    assert ran == ["gemm_act_kernel", "gemm_act_kernel"]
    base = torch.zeros(4, 17, dtype=torch.float16)
    assert tma_usable(base[:, :16].contiguous()) and not tma_usable(base.view(-1)[1:65].view(4, 16))
    assert not tma_usable(torch.zeros(0, 16, dtype=torch.float16))
    assert not tma_usable(torch.zeros(1, 16, dtype=torch.float16).expand(4, 16))  # a broadcast row


def test_descriptor_equals_tritons_own():
    """vtkernels.triton.tma.descriptor sets TensorDescriptor's fields without its constructor (whose
    checks tma_usable made): the same type and fields as the constructor's, for the operand kinds
    the kernels use (a (B, H, N, d) view of a fused qkv, a matrix, a column slice of one)."""
    import dataclasses

    from triton.tools.tensor_descriptor import TensorDescriptor

    from vtkernels.triton.tma import descriptor, tma_usable

    qkv = torch.zeros(2, 77, 3, 8, 64, dtype=torch.float16)
    for t, block in ((qkv[:, :, 1].transpose(1, 2), (1, 1, 64, 64)), (torch.zeros(48, 32, dtype=torch.bfloat16), (16, 32)),
                     (torch.zeros(32, 48, dtype=torch.float16)[:, :40], (32, 16))):
        assert tma_usable(t)
        ours, theirs = descriptor(t, *block), TensorDescriptor(t, list(t.shape), list(t.stride()), list(block))
        assert type(ours) is TensorDescriptor
        for field in dataclasses.fields(TensorDescriptor):
            if field.name == "base":
                assert ours.base is theirs.base
            else:
                assert getattr(ours, field.name) == getattr(theirs, field.name), field.name


@pytest.mark.interpreter
def test_vtkernels_tma_0_turns_tma_off(kernel_spy, monkeypatch):
    force, ran = kernel_spy
    force(True)
    monkeypatch.setenv("VTKERNELS_TMA", "0")
    check_against_reference((9,), 16, 32, 16, "relu", torch.float16, torch.device("cpu"), "triton")
    assert ran == ["gemm_act_kernel", "gemm_act_kernel"]


def test_inference_saves_no_pre_activation(device):
    x, w1, b1, w2, b2 = (t.detach() for t in make_inputs((9,), 16, 32, 16, torch.float32, device))
    out, h, pre = mlp_fwd(x, w1, b1, w2, b2, "gelu", False, "triton")
    assert h.numel() == 0 and pre.numel() == 0
    with torch.no_grad():
        fused = vtkernels.mlp(x, w1, b1, w2, b2, "gelu", backend="triton")
    torch.testing.assert_close(fused, out)
    torch.testing.assert_close(fused, vtkernels.mlp(x, w1, b1, w2, b2, "gelu", backend="reference"))


def test_only_some_gradients(device):
    x, w1, b1, w2, b2 = make_inputs((9,), 16, 32, 16, torch.float32, device)
    w1.requires_grad_(False)
    b1.requires_grad_(False)
    out = vtkernels.mlp(x, w1, b1, w2, b2, "relu", backend="triton")
    out.sum().backward()
    assert w1.grad is None and b1.grad is None and x.grad is not None and w2.grad is not None
    expected = [t.detach().requires_grad_() for t in (x, w2, b2)]
    vtkernels.mlp(expected[0], w1, b1, *expected[1:], "relu", backend="reference").sum().backward()
    for ours, ref in zip((x, w2, b2), expected):
        torch.testing.assert_close(ours.grad, ref.grad)


def test_double_backward_matches_reference(device):
    """create_graph=True takes a differentiable backward; first-order backward stays fused."""
    x, w1, b1, w2, b2 = make_inputs((6,), 16, 32, 16, torch.float32, device)

    def second_order(backend):
        out = vtkernels.mlp(x, w1, b1, w2, b2, "gelu", backend=backend)
        (gx,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
        return torch.autograd.grad(gx.sum(), [x, w1, b2])

    assert_close(second_order("triton"), second_order("reference"), torch.float32)


def check_relu_nan_like_torch(backend, dtype, device):
    """relu(NaN) is NaN with gradient 1 in torch (threshold_backward passes it): a NaN in x makes
    its row of the output NaN, and its row of d x stays finite."""
    inputs = make_inputs((5,), 16, 32, 8, dtype, device)
    with torch.no_grad():
        inputs[0][2, 3] = float("nan")
    out = vtkernels.mlp(*inputs, "relu", backend=backend)
    upcast_inputs = upcast(*inputs)
    expected = vtkernels.mlp(*upcast_inputs, "relu", backend="reference")
    cot = torch.randn_like(out)
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 5e-2, "rtol": 5e-2}
    for ours, ref in zip([out, *grads(out, inputs, cot)], [expected, *grads(expected, upcast_inputs, cot)]):
        torch.testing.assert_close(ours.double(), ref, equal_nan=True, **tol)


def test_relu_nan_like_torch(device):
    check_relu_nan_like_torch("triton", torch.float32, device)


def test_empty_input(device):
    x, w1, b1, w2, b2 = make_inputs((0,), 16, 32, 8, torch.float32, device)
    out = vtkernels.mlp(x, w1, b1, w2, b2, backend="triton")
    out.sum().backward()
    assert out.shape == (0, 8) and x.grad.shape == (0, 16) and torch.all(w1.grad == 0)


def test_custom_ops_opcheck(device):
    x, w1, b1, w2, b2 = (t.detach() for t in make_inputs((5,), 16, 32, 8, torch.float32, device))
    for save in (True, False):
        torch.library.opcheck(mlp_fwd, (x, w1, b1, w2, b2, "gelu", save, "triton"))
    _, h, pre = mlp_fwd(x, w1, b1, w2, b2, "gelu", True, "triton")
    torch.library.opcheck(mlp_bwd, (torch.randn(5, 8, device=device), x, w1, w2, h, pre, "gelu", True, True, True,
                                    "triton"))
    torch.library.opcheck(mlp_bwd, (torch.randn(5, 8, device=device), x, w1, w2, h, pre, "gelu", False, True, False,
                                    "triton"))


def test_torch_compile_fullgraph(device):
    block = vtkernels.nn.Mlp(16, 64, act_layer="quick_gelu", backend="triton").to(device)
    x = torch.randn(2, 5, 16, device=device, requires_grad=True)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, block(x))
    out.sum().backward()
    assert x.grad is not None and block.fc1.weight.grad is not None


def test_autocast_computes_in_the_autocast_dtype():
    x, w1, b1, w2, b2 = (t.detach() for t in make_inputs((6,), 16, 32, 16, torch.float32, "cpu"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vtkernels.mlp(x, w1, b1, w2, b2, backend="reference")
        linear = nn.Linear(16, 16)(x)
        float64 = vtkernels.mlp(*(t.double() for t in (x, w1, b1, w2, b2)))
    assert out.dtype == linear.dtype == torch.bfloat16
    assert float64.dtype == torch.float64  # autocast leaves float64 alone


@pytest.mark.interpreter
def test_bad_inputs_raise_clear_errors():
    x, w1, b1, w2, b2 = (t.detach() for t in make_inputs((4,), 16, 32, 8, torch.float32, "cpu"))
    with pytest.raises(ValueError, match="activation must be one of"):
        vtkernels.mlp(x, w1, b1, w2, b2, "swish")
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 16\)"):
        vtkernels.mlp(x[:, :8], w1, b1, w2, b2)
    with pytest.raises(ValueError, match="fc2_weight must have shape"):
        vtkernels.mlp(x, w1, b1, w2[:, :5], b2)
    with pytest.raises(ValueError, match="fc1_bias must have shape"):
        vtkernels.mlp(x, w1, b1[:3], w2, b2)
    with pytest.raises(TypeError, match="fc2_weight has dtype torch.float16 but x"):
        vtkernels.mlp(x, w1, b1, w2.half(), b2)
    with pytest.raises(TypeError, match="fc1_weight must be a torch.Tensor"):
        vtkernels.mlp(x, None, b1, w2, b2)
    with pytest.raises(vtkernels.BackendError, match="bfloat16"):
        vtkernels.mlp(*(t.bfloat16() for t in (x, w1, b1, w2, b2)), backend="triton")


@pytest.mark.parametrize("module, name", [(nn.GELU(), "gelu"), (nn.GELU(approximate="tanh"), "gelu_tanh"),
                                          (nn.ReLU(), "relu"), (vtkernels.nn.QuickGELU(), "quick_gelu"),
                                          (nn.SiLU(), None)])
def test_activation_names(module, name):
    assert activation_name(module) == name


def test_hf_activation_names():
    from transformers.activations import ACT2FN

    expected = {"quick_gelu": "quick_gelu", "gelu": "gelu", "relu": "relu", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_new": "gelu_tanh", "gelu_python": None, "gelu_fast": None, "silu": None}
    assert {name: activation_name(ACT2FN[name]) for name in expected} == expected


def test_timm_activation_names():
    layers = pytest.importorskip("timm.layers")
    kinds = ("gelu", "gelu_tanh", "quick_gelu", "silu")
    names = {kind: activation_name(layers.get_act_layer(kind)()) for kind in kinds}
    assert names == {"gelu": "gelu", "gelu_tanh": "gelu_tanh", "quick_gelu": "quick_gelu", "silu": None}


def test_module_is_timm_mlp_drop_in():
    ours = vtkernels.nn.Mlp(16, 48, 8, act_layer=nn.GELU, drop=0.1)
    assert set(ours.state_dict()) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    ours.eval()
    x = torch.randn(3, 16)
    expected = ours.fc2(F.gelu(ours.fc1(x)))
    torch.testing.assert_close(ours(x), expected)
    ours.train()  # dropout between the layers: the modules one by one
    assert ours(x).shape == (3, 8)


@pytest.mark.interpreter
def test_module_uses_the_fused_op_unless_dropping(monkeypatch):
    calls = []
    original = vtkernels.mlp
    monkeypatch.setattr(vtkernels, "mlp", lambda *a, **k: calls.append(a[5]) or original(*a, **k))
    block = vtkernels.models.Mlp(8, 32, act="quick_gelu", backend="triton")
    block(torch.randn(2, 8))
    assert calls == ["quick_gelu"]
    unknown = vtkernels.nn.Mlp(8, 32, act_layer=nn.SiLU)
    unknown(torch.randn(2, 8))
    assert calls == ["quick_gelu"]


def test_hooks_and_linear_subclasses_take_the_module_path(monkeypatch):
    """The fused call skips fc1 / act / fc2's own forward: hooks on them, or Linear subclasses with
    their own forward, must still run."""
    calls = []
    monkeypatch.setattr(vtkernels, "mlp", lambda *a, **k: calls.append(1))
    block = vtkernels.nn.Mlp(8, 16)
    seen = []
    handle = block.fc1.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    block(torch.randn(2, 8))
    assert seen == [(2, 16)] and calls == []
    handle.remove()

    class ScaledLinear(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    block.fc2 = ScaledLinear(16, 8)
    block(torch.randn(2, 8))
    assert calls == []


@pytest.mark.interpreter
def test_optimize_timm_mlp():
    layers = pytest.importorskip("timm.layers")
    model = nn.Sequential(layers.Mlp(16, 64, act_layer=nn.GELU), layers.Mlp(16, 64, act_layer=nn.SiLU)).eval()
    x = torch.randn(2, 7, 16)
    expected = model(x)
    _, report = vtkernels.optimize(model, backend="triton", return_report=True)
    assert report.replaced.get("Mlp") == 1
    torch.testing.assert_close(model(x), expected)


@pytest.mark.interpreter
def test_optimize_hf_clip_mlp():
    from transformers import CLIPTextConfig
    from transformers.models.clip.modeling_clip import CLIPMLP

    config = CLIPTextConfig(hidden_size=16, intermediate_size=48, hidden_act="quick_gelu")
    block = CLIPMLP(config).eval()
    x = torch.randn(2, 5, 16)
    expected = block(x)
    _, report = vtkernels.optimize(block, backend="triton", return_report=True)
    assert report.replaced.get("Mlp") == 1
    torch.testing.assert_close(block(x), expected)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", [((2, 197), 768, 3072, 768), ((3, 50), 96, 384, 96), ((5,), 100, 200, 60)])
def test_gpu_kernels_match_reference(shape, activation, backend, dtype):
    if backend == "cuda" and dtype == torch.float32:
        pytest.skip("the CUDA MLP runs fp16 / bf16 only (refusal tested below)")
    lead, dim, hidden, dim_out = shape
    check_against_reference(lead, dim, hidden, dim_out, activation, dtype, torch.device("cuda"), backend)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("tma", [True, False])
def test_gpu_triton_both_gemm_kernels(tma, dtype, kernel_spy):
    """Each of the two Triton GEMM kernels on the GPU, at a ViT-B-like shape (with a ragged row
    count) where TMA can address every operand: the TMA kernel needs sm_90."""
    force, ran = kernel_spy
    force(tma)
    check_against_reference((3, 197), 768, 3072, 768, "gelu", dtype, torch.device("cuda"), "triton")
    expected = "gemm_act_tma_kernel" if tma and torch.cuda.get_device_capability()[0] >= 9 else "gemm_act_kernel"
    assert ran == [expected, expected]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_relu_nan_like_torch(backend):
    check_relu_nan_like_torch(backend, torch.float16, torch.device("cuda"))


@pytest.mark.gpu
@pytest.mark.extension
def test_gpu_cuda_refuses_fp32():
    x, w1, b1, w2, b2 = (t.detach() for t in make_inputs((4,), 16, 32, 8, torch.float32, "cuda"))
    with pytest.raises(vtkernels.BackendError, match="fp16 / bf16"):
        vtkernels.mlp(x, w1, b1, w2, b2, backend="cuda")
