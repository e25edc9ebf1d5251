"""Transformer pieces shared by every model: the MLP, the pre-norm block, the block
stack that fuses each residual add into the next LayerNorm, backend selection and init helpers.

Module names follow timm (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``,
``mlp.fc2``) so that a timm state_dict loads almost as it is.

The fused residual stream
-------------------------
A pre-norm block computes ``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``. Written naively
every residual add is a separate pass over the activations. Here the stream is carried in two
parts, ``(stream, branch)``, whose sum is the block input: the add is done by the *next*
LayerNorm, which returns both ``LN(stream + branch)`` and the new ``stream`` in one kernel::

    y, stream = norm1(branch, residual=stream)       # stream += branch; y = LN(stream)
    y, stream = norm2(attn(y), residual=stream)      # stream += attn;   y = LN(stream)
    branch = mlp(y)                                  # added by the next block's norm1

Under autocast the branches come out of the Linear layers in the autocast dtype; they are cast to
the stream's dtype before the add, so the residual stream keeps its own precision (as in eager
timm / HF, where ``fp32 + bf16`` promotes). Without autocast the casts are no-ops.

Layer scale (``ls1`` / ``ls2``: a learned per-channel ``gamma``, timm's ``init_values``) and
stochastic depth (``drop_path_rate``: timm's per-block schedule, :func:`drop_path_rates`) scale each
branch before it is added, so the adds stay fused with them too.

The last block's ``branch`` is added by the model's final norm (:func:`final_norm`). A model that
pools one token (CLS, EOT) runs its last block on that row only (:func:`run_blocks_to_row`): every
token's keys and values, the one row's attention, projection, norm and MLP.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.utils.checkpoint
from torch import nn

import vtkernels
from vtkernels.nn import Attention, LayerNorm
from vtkernels.nn.attention import pick_rows
from vtkernels.nn.drop_path import drop_path
from vtkernels.nn.mlp import Mlp as NnMlp


class Mlp(NnMlp):
    """fc1 -> activation -> fc2 as one :func:`vtkernels.mlp` call (the activation fused into fc1's
    GEMM); ``act`` by name: ``gelu`` (exact), ``gelu_tanh``, ``quick_gelu``, ``relu``."""

    def __init__(self, dim: int, hidden_dim: int, act: str = "gelu", bias: bool = True, backend: Optional[str] = None):
        super().__init__(dim, hidden_dim, act_layer=act, bias=bias, backend=backend)


class LayerScale(nn.Module):
    """timm's LayerScale: ``x * gamma``, one learned factor per channel (state_dict key ``gamma``)."""

    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.init_values = float(init_values)
        self.gamma = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, self.init_values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block ``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))`` (timm
    names; the layer scales are identities unless ``init_values`` is given)."""

    grad_checkpointing = False  # see set_grad_checkpointing

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, qkv_bias: bool = True, act: str = "gelu",
                 eps: float = 1e-6, causal: bool = False, backend: Optional[str] = None, drop_path: float = 0.0,
                 init_values: Optional[float] = None):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=eps, backend=backend)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, causal=causal, backend=backend)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = LayerNorm(dim, eps=eps, backend=backend)
        self.mlp = Mlp(dim, mlp_dim, act, backend=backend)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path = drop_path  # stochastic depth of both branches, in training

    def _branch(self, branch: torch.Tensor, layer_scale: nn.Module) -> torch.Tensor:
        if not isinstance(layer_scale, nn.Identity):  # (skipped, not called: eager host time per block)
            branch = layer_scale(branch)
        return drop_path(branch, self.drop_path, self.training)

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """timm semantics: the block's output as one tensor."""
        branch, stream = self.forward_split(x, None, key_padding_mask)
        return stream + branch

    def forward_split(self, stream: torch.Tensor, branch: Optional[torch.Tensor],
                      key_padding_mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Block on the input ``stream + branch`` (``branch`` None: ``stream`` alone).

        Returns ``(branch, stream)`` whose sum is the block's output (see the module docstring).
        """
        if branch is None:
            y = self.norm1(stream)
        else:
            y, stream = self.norm1(branch.to(stream.dtype), residual=stream)
        attn = self._branch(self.attn(y, key_padding_mask=key_padding_mask), self.ls1)
        y, stream = self.norm2(attn.to(stream.dtype), residual=stream)
        return self._branch(self.mlp(y), self.ls2), stream


    def forward_row(self, stream: torch.Tensor, branch: Optional[torch.Tensor], rows: Union[int, torch.Tensor],
                    key_padding_mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward_split` at one token row per sample (``rows``: an index or a (B,) tensor):
        ``(branch, stream)`` (B, D) each. Every token still feeds the attention's keys and values;
        only the pooled row gets the attention output, projection, second norm and MLP."""
        if branch is None:
            y = self.norm1(stream)
        else:
            y, stream = self.norm1(branch.to(stream.dtype), residual=stream)
        attn = self._branch(self.attn.forward_row(y, rows, key_padding_mask), self.ls1)
        y, stream = self.norm2(attn.to(stream.dtype), residual=pick_rows(stream, rows))
        return self._branch(self.mlp(y), self.ls2), stream


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """timm's stochastic-depth schedule: block i of ``depth`` drops with ``rate * i / (depth - 1)``
    (0 for the first block, ``rate`` for the last)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {rate}")
    return torch.linspace(0, rate, depth, device="cpu").tolist()  # (cpu: also inside a meta-device context)


def make_blocks(depth: int, dim: int, num_heads: int, mlp_dim: int, *, qkv_bias: bool = True, act: str = "gelu",
                eps: float = 1e-6, causal: bool = False, backend: Optional[str] = None,
                drop_path_rate: float = 0.0, init_values: Optional[float] = None) -> nn.ModuleList:
    if dim % num_heads:
        raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
    return nn.ModuleList(Block(dim, num_heads, mlp_dim, qkv_bias, act, eps, causal, backend, rate, init_values)
                         for rate in drop_path_rates(drop_path_rate, depth))


def run_checkpointed(block: nn.Module, method, *args):
    """``method(*args)``, one of ``block``'s passes; with the block's ``grad_checkpointing`` set (see
    :func:`set_grad_checkpointing`) and a gradient being recorded, its activations are recomputed in
    the backward instead of kept."""
    if getattr(block, "grad_checkpointing", False) and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(method, *args, use_reentrant=False)
    return method(*args)


def run_split(block: nn.Module, *args, row: bool = False):
    """``block.forward_split(*args)`` (``row``: ``block.forward_row(*args)``), checkpointed where set."""
    return run_checkpointed(block, block.forward_row if row else block.forward_split, *args)


def set_grad_checkpointing(model: nn.Module, enable: bool = True) -> None:
    """Activation checkpointing per block (timm's ``set_grad_checkpointing``, HF's
    ``gradient_checkpointing_enable``): in training, each block's activations are recomputed in the
    backward instead of kept, for about a third more compute. The blocks are the modules with a
    ``grad_checkpointing`` attribute (transformer blocks, DETR's layers; not backbones), whose
    passes the models run through :func:`run_checkpointed`; an iGPT forward that fills a KV cache
    is never checkpointed (a recompute would write the cache twice)."""
    for module in model.modules():
        if hasattr(module, "grad_checkpointing"):
            module.grad_checkpointing = enable


class GradCheckpointing:
    """``model.set_grad_checkpointing(enable=True)`` for the model wrappers (a mixin; returns the
    model): see :func:`set_grad_checkpointing`."""

    def set_grad_checkpointing(self, enable: bool = True):
        set_grad_checkpointing(self, enable)
        return self


def run_blocks(blocks: Sequence[Block], x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None
               ) -> tuple[Optional[torch.Tensor], torch.Tensor]:
    """The stack on ``x``: ``(branch, stream)`` whose sum is the output (``branch`` None for depth 0)."""
    branch, stream = None, x
    for block in blocks:
        branch, stream = run_split(block, stream, branch, key_padding_mask)
    return branch, stream


def run_blocks_to_row(blocks: Sequence[Block], x: torch.Tensor, rows: Union[int, torch.Tensor],
                      key_padding_mask: Optional[torch.Tensor] = None
                      ) -> tuple[Optional[torch.Tensor], torch.Tensor]:
    """:func:`run_blocks`, but only the pooled token row of each sample (``rows``) leaves the last
    block: ``(branch, stream)`` (B, D) each. The last block's other rows are never computed: for
    ViT-B/16 that is 196 of 197 tokens' projection and MLP (about 6% of the model's FLOPs)."""
    if len(blocks) == 0:
        return None, pick_rows(x, rows)
    branch, stream = run_blocks(blocks[:-1], x, key_padding_mask)
    return run_split(blocks[-1], stream, branch, rows, key_padding_mask, row=True)


def final_norm(branch: Optional[torch.Tensor], stream: torch.Tensor, norm: Optional[LayerNorm]) -> torch.Tensor:
    """``norm(stream + branch)`` with the add fused into the norm (no norm: the plain sum)."""
    if branch is None:
        return stream if norm is None else norm(stream)
    if norm is None:
        return stream + branch
    return norm(branch.to(stream.dtype), residual=stream)[0]


def set_backend(module: nn.Module, backend: Optional[str]) -> None:
    """Point every vtkernels submodule (norms, attention, patch embedding) at ``backend``."""
    if backend is not None:
        vtkernels.backend._validate_name(backend)
    for sub in module.modules():
        if hasattr(sub, "backend"):
            sub.backend = backend


def init_linear_and_norms(module: nn.Module, std: float = 0.02) -> None:
    """timm-style init: truncated-normal Linear weights, zero biases, unit LayerNorm."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.trunc_normal_(sub.weight, std=std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.LayerNorm):
            if sub.weight is not None:
                nn.init.ones_(sub.weight)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)


def conv_fan_in_init(proj: nn.Conv2d) -> None:
    """The patch projection initialized like a Linear over the flattened patch (timm/JAX ViT)."""
    fan_in = proj.weight[0].numel()
    nn.init.trunc_normal_(proj.weight, std=math.sqrt(1.0 / fan_in))
    if proj.bias is not None:
        nn.init.zeros_(proj.bias)
