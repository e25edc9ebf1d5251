"""The public functions' eager path (vtkernels/ops/registration.py): plain eager calls skip the
custom-op dispatch, forward and backward; tracers and fake tensors still get the op; a
differentiated backward raises as the op does."""

import pytest
import torch
from torch._library.custom_ops import CustomOpDef
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

import vtkernels


@pytest.fixture
def op_calls(monkeypatch):
    """Names of the vtkernels custom ops called (through CustomOpDef.__call__)."""
    names, original = [], CustomOpDef.__call__

    def counting(self, *args, **kwargs):
        names.append(self._name)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(CustomOpDef, "__call__", counting)
    return names


def norm_and_attention(x, weight, qkv):
    y, h = vtkernels.layer_norm(x, weight, residual=x, backend="triton")
    return y.sum() + h.sum() + vtkernels.attention_qkv(qkv, causal=True, backend="triton").sum()


def test_plain_eager_calls_skip_the_custom_ops(op_calls, device):
    x = torch.randn(2, 9, 64, device=device, requires_grad=True)
    weight = torch.nn.Parameter(torch.randn(64, device=device))
    qkv = torch.randn(2, 9, 3, 2, 32, device=device, requires_grad=True)
    norm_and_attention(x, weight, qkv).backward()
    assert op_calls == []
    assert x.grad is not None and weight.grad is not None and qkv.grad is not None


def test_fake_tensors_and_tracers_get_the_op(op_calls, device):
    mode = FakeTensorMode()
    x, weight = mode.from_tensor(torch.randn(4, 64, device=device)), mode.from_tensor(torch.randn(64, device=device))
    with mode:
        y = vtkernels.layer_norm(x, weight.requires_grad_(), backend="triton")
        y.sum().backward()
    assert type(y).__name__ == "FakeTensor" and op_calls == ["norm_fwd", "norm_bwd"]
    graph = make_fx(lambda a, b: vtkernels.layer_norm(a, b, backend="triton"), tracing_mode="fake")(
        torch.randn(4, 64, device=device), torch.randn(64, device=device))
    assert "vtkernels.norm_fwd.default" in {str(node.target) for node in graph.graph.nodes}


def test_compiled_autograd_over_an_eager_forward(device):
    from torch._dynamo import compiled_autograd

    torch._dynamo.reset()
    x = torch.randn(2, 9, 64, device=device, requires_grad=True)
    weight = torch.nn.Parameter(torch.randn(64, device=device))
    qkv = torch.randn(2, 9, 3, 2, 32, device=device, requires_grad=True)
    inputs = (x, weight, qkv)
    expected = torch.autograd.grad(norm_and_attention(*inputs), inputs)
    loss = norm_and_attention(*inputs)
    with compiled_autograd._enable(torch.compile(backend="aot_eager")):
        loss.backward()
    for got, want in zip((x.grad, weight.grad, qkv.grad), expected):
        torch.testing.assert_close(got, want)


def test_differentiated_backward_raises_like_the_op(device):
    x = torch.randn(4, 64, device=device, requires_grad=True)
    y = vtkernels.layer_norm(x, torch.randn(64, device=device), backend="triton")
    (dx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        dx.sum().backward()


def test_unused_outputs_get_no_zero_gradients(device):
    """The MLP's hidden activations are outputs saved for its backward: their gradients stay None
    rather than two (tokens, hidden) zero tensors per backward."""
    from torch.profiler import ProfilerActivity, profile

    tokens, dim, hidden = 6, 16, 40
    x = torch.randn(tokens, dim, device=device, requires_grad=True)
    params = [torch.randn(shape, device=device, requires_grad=True) for shape in ((hidden, dim), (hidden,), (dim, hidden), (dim,))]
    out = vtkernels.mlp(x, *params, backend="triton")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        out.sum().backward()
    zeroed = [e.input_shapes for e in prof.events() if e.name in ("aten::zero_", "aten::zeros_like", "aten::fill_")]
    assert [tokens, hidden] not in [shapes[0] for shapes in zeroed if shapes]
    assert x.grad is not None and all(p.grad is not None for p in params)


def test_norm_backward_when_only_the_residual_sum_is_used(device):
    x, residual = (torch.randn(4, 64, device=device, requires_grad=True) for _ in range(2))
    _, h = vtkernels.layer_norm(x, torch.randn(64, device=device), residual=residual, backend="triton")
    (3 * h).sum().backward()  # y unused: its gradient is None
    torch.testing.assert_close(x.grad, torch.full_like(x, 3.0))
    torch.testing.assert_close(residual.grad, torch.full_like(x, 3.0))


@pytest.mark.parametrize("op, argument", [("mlp", "x"), ("patch_embed", "weight")])
def test_cuda_refusals_trace_under_torch_compile(op, argument):
    """The backend choice runs while Dynamo traces: a refusal that asks the extension (whose import
    Dynamo cannot trace) must be a compile-time constant, or fullgraph fails."""
    import importlib

    refusals = importlib.import_module(f"vtkernels.ops.{op}")._kernel_refusals

    def shifted(t):
        return t + len(refusals("cuda", **{argument: t}))

    torch._dynamo.reset()
    t = torch.zeros(2, 4, dtype=torch.float16)
    torch.testing.assert_close(torch.compile(shifted, fullgraph=True)(t), shifted(t))


@pytest.mark.interpreter
def test_automatic_gpu_choice_traces_under_torch_compile(monkeypatch):
    """On a GPU the automatic choice walks each op's preference order and evaluates the refusals
    while Dynamo traces (on the CPU it returns the reference at once). Here every dispatcher takes
    that GPU path for CPU tensors (the Triton interpreter runs the kernels; the extension is
    refused as unavailable): CLIP's loss with its gradients and a two-stage Swin compile whole."""
    from vtkernels.backend import OpDispatcher
    from vtkernels.models.clip import CLIP, CLIPConfig, CLIPTextConfig, CLIPVisionConfig
    from vtkernels.models.swin import Swin, SwinConfig

    choose = OpDispatcher.choose
    chosen = []

    def gpu_choice(self, device, backend=None, **call):
        chosen.append(choose(self, torch.device("cuda"), backend, **call))
        return chosen[-1]

    monkeypatch.setattr(OpDispatcher, "choose", gpu_choice)
    monkeypatch.delenv("VTKERNELS_BACKEND", raising=False)
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(16, CLIPVisionConfig(image_size=16, patch_size=8, width=64, layers=1, heads=2),
                           CLIPTextConfig(vocab_size=32, context_length=6, width=64, layers=1, heads=2)))
    images, ids = torch.randn(2, 3, 16, 16), torch.randint(0, 32, (2, 6))
    swin = Swin(SwinConfig(img_size=32, embed_dim=32, depths=(2, 2), num_heads=(1, 2), window_size=4,
                           num_classes=10)).eval()
    x = torch.randn(1, 3, 32, 32)
    expected_loss = clip.loss(images, ids)
    expected_grads = torch.autograd.grad(expected_loss, list(clip.parameters()), allow_unused=True)
    with torch.no_grad():
        expected_swin = swin(x)
    assert "triton" in chosen and "reference" not in chosen
    torch._dynamo.reset()
    loss = torch.compile(clip.loss, backend="aot_eager", fullgraph=True)(images, ids)
    grads = torch.autograd.grad(loss, list(clip.parameters()), allow_unused=True)
    torch.testing.assert_close(loss, expected_loss)
    for got, want in zip(grads, expected_grads):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(swin, backend="aot_eager", fullgraph=True)(x), expected_swin)


def test_a_none_gradient_from_downstream_reaches_no_backward(device):
    """A custom Function after our op may return None for its input's gradient: the op's
    backward, handed no gradient at all, returns none (it crashed on None before)."""
    class Detach(torch.autograd.Function):
        @staticmethod
        def forward(ctx, y, other):
            return y + other

        @staticmethod
        def backward(ctx, grad):
            return None, grad

    x = torch.randn(4, 16, device=device, requires_grad=True)
    params = [torch.randn(shape, device=device, requires_grad=True) for shape in ((32, 16), (32,), (16, 32), (16,))]
    other = torch.randn(4, 16, device=device, requires_grad=True)
    Detach.apply(vtkernels.mlp(x, *params, backend="triton"), other).sum().backward()
    assert x.grad is None and other.grad is not None
