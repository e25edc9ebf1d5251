"""The transformer MLP on :func:`vtkernels.mlp` (activation fused into fc1's GEMM), a drop-in for
timm's ``Mlp`` (same state_dict: ``fc1``, ``fc2``), and QuickGELU as a module."""

from __future__ import annotations

import functools
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

import vtkernels
from vtkernels.reference.activation import ACTIVATIONS


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation ``x * sigmoid(1.702 x)`` (HF ``quick_gelu``), one fused pass
    (:func:`vtkernels.quick_gelu`) instead of eager PyTorch's three."""

    def __init__(self, backend: Optional[str] = None):
        super().__init__()
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return vtkernels.quick_gelu(x, self.backend)


# (package, class) -> name, for the activation modules of timm, HF and ours that compute exactly
# one of the op's activations (HF's NewGELUActivation writes out the tanh formula).
_ACTIVATION_CLASSES = {
    ("timm", "GELU"): "gelu", ("timm", "GELUTanh"): "gelu_tanh", ("timm", "QuickGELU"): "quick_gelu",
    ("transformers", "QuickGELUActivation"): "quick_gelu", ("transformers", "NewGELUActivation"): "gelu_tanh",
    ("vtkernels", "QuickGELU"): "quick_gelu",
}


def activation_name(act: nn.Module) -> Optional[str]:
    """The :func:`vtkernels.mlp` name of an activation module (torch's, timm's, HF's, ours), or
    None when the op has no kernel for it."""
    if isinstance(act, nn.GELU):
        return "gelu" if act.approximate == "none" else "gelu_tanh"
    if isinstance(act, nn.ReLU):
        return "relu"
    key = (type(act).__module__.split(".")[0], type(act).__name__)
    if key in _ACTIVATION_CLASSES:
        return _ACTIVATION_CLASSES[key]
    if key in (("transformers", "GELUActivation"), ("transformers", "GELUTanh")):  # HF "gelu", "gelu_pytorch_tanh"
        function = getattr(act, "act", None)
        if function is F.gelu:
            return "gelu"
        tanh = {"approximate": "tanh"}
        if isinstance(function, functools.partial) and function.func is F.gelu and function.keywords == tanh:
            return "gelu_tanh"
    return None


def make_activation(act: Union[str, Callable[[], nn.Module]], backend: Optional[str] = None) -> nn.Module:
    """An activation module from a :func:`vtkernels.mlp` name or a module class (timm's act_layer)."""
    if not isinstance(act, str):
        return act()
    modules = {"gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
               "quick_gelu": lambda: QuickGELU(backend), "relu": nn.ReLU}
    if act not in modules:
        raise ValueError(f"act must be one of {ACTIVATIONS} or a module class, got {act!r}")
    return modules[act]()


class Mlp(nn.Module):
    """``fc1 -> act -> dropout -> fc2 -> dropout``, timm's ``Mlp`` (same constructor arguments
    where they overlap, same state_dict). With an activation the fused op has (GELU exact or tanh,
    QuickGELU, ReLU) and no dropout between the layers in training, fc1, act and fc2 are one
    :func:`vtkernels.mlp` call; otherwise the modules run one by one.

    ``act_layer``: a module class (timm) or a name (``"gelu"``, ``"gelu_tanh"``, ``"quick_gelu"``,
    ``"relu"``).
    """

    def __init__(self, in_features: int, hidden_features: Optional[int] = None, out_features: Optional[int] = None,
                 act_layer: Union[str, Callable[[], nn.Module]] = nn.GELU, bias: bool = True, drop: float = 0.0,
                 backend: Optional[str] = None, device=None, dtype=None):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        factory = {"device": device, "dtype": dtype}
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias, **factory)
        self.act = make_activation(act_layer, backend)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias, **factory)
        self.drop2 = nn.Dropout(drop)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(fused_mlp(self.fc1, self.act, self.fc2, x, self.drop1, self.backend))


def linear_weight(layer: nn.Module) -> Optional[torch.Tensor]:
    """The weight of a linear layer whose forward is exactly ``x @ W^T + b``, in ``nn.Linear``
    layout (out, in): a plain ``nn.Linear``'s own, or the transpose (a view) of HF's ``Conv1D``
    (iGPT, GPT-2), which holds it as (in, out). None for any other layer."""
    if type(layer) is nn.Linear:
        return layer.weight
    if type(layer).__name__ == "Conv1D" and type(layer).__module__.startswith("transformers."):
        return layer.weight.t()
    return None


def fused_mlp(fc1: nn.Module, act: nn.Module, fc2: nn.Module, x: torch.Tensor, drop: Optional[nn.Module],
              backend: Optional[str]) -> torch.Tensor:
    """``fc2(drop(act(fc1(x))))``, as one :func:`vtkernels.mlp` call where it can be (linear
    layers :func:`linear_weight` reads, an activation the op has, the dropout inactive, no hooks
    on the modules whose forward the fused call skips); the modules one by one otherwise. Shared
    by :class:`Mlp` and the MLPs :func:`vtkernels.optimize` patches."""
    name = activation_name(act)
    dropping = drop is not None and drop.training and drop.p > 0
    hooked = any(m._forward_hooks or m._forward_pre_hooks for m in (fc1, act, fc2))
    w1, w2 = linear_weight(fc1), linear_weight(fc2)
    if name is None or dropping or hooked or w1 is None or w2 is None:
        h = act(fc1(x))
        return fc2(drop(h) if drop is not None else h)
    return vtkernels.mlp(x, w1, fc1.bias, w2, fc2.bias, name, backend)
