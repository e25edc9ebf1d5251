"""The public functions' eager path (vtkernels/ops/registration.py): no custom-op dispatch in
eager mode, forward or backward; a differentiated backward raises as the op does."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import vtkernels


class DispatchedOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def test_eager_calls_skip_the_custom_ops(device):
    x = torch.randn(2, 9, 64, device=device, requires_grad=True)
    weight = torch.randn(64, device=device, requires_grad=True)
    qkv = torch.randn(2, 9, 3, 2, 32, device=device, requires_grad=True)
    with DispatchedOps() as dispatched:
        y, h = vtkernels.layer_norm(x, weight, residual=x, backend="triton")
        out = vtkernels.attention_qkv(qkv, causal=True, backend="triton")
        (y.sum() + h.sum() + out.sum()).backward()
    assert dispatched.names and not [name for name in dispatched.names if "vtkernels" in name]
    assert x.grad is not None and weight.grad is not None and qkv.grad is not None


def test_differentiated_backward_raises_like_the_op(device):
    x = torch.randn(4, 64, device=device, requires_grad=True)
    y = vtkernels.layer_norm(x, torch.randn(64, device=device), backend="triton")
    (dx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        dx.sum().backward()
