"""Drop-in Swin modules on the fused kernels, state_dict-compatible with timm.

- :class:`WindowAttention`: timm's ``WindowAttention`` parameters (``relative_position_bias_table``,
  ``qkv``, ``proj``; ``relative_position_index`` a non-persistent buffer as in timm), but
  ``forward`` takes the (B, H, W, C) map and does the whole (shifted-)window attention: roll,
  partition, bias, mask, reverse all happen inside :func:`vtkernels.window_attention`.
  :meth:`WindowAttention.from_hf` converts an HF transformers ``SwinAttention``.
- :class:`SwinTransformerBlock`: timm's block (``norm1``, ``attn``, ``norm2``, ``mlp.fc1/fc2``).
- :class:`HFSwinLayer`: HF transformers' ``SwinLayer`` (same state_dict and call).
- :class:`PatchMerging`: timm's (``norm``, ``reduction``) with the 2x2 gather fused into the norm.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from vtkernels.nn.drop_path import drop_path
from vtkernels.nn.mlp import Mlp
from vtkernels.nn.norm import LayerNorm, _cast
from vtkernels.ops.patch_merging import patch_merging_norm
from vtkernels.ops.window_attention import window_attention
from vtkernels.reference.window_attention import effective_window, relative_position_index


def _square(value, name: str) -> int:
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] != value[1]:
            raise NotImplementedError(f"{name} must be square for the fused kernels, got {tuple(value)}")
        value = value[0]
    return int(value)


class WindowAttention(nn.Module):
    """(B, H, W, C) -> (B, H, W, C): qkv Linear, fused shifted-window attention, proj Linear.

    ``pad_first=False`` rolls then pads (timm); ``True`` pads then rolls (HF transformers). The
    window and shift passed here are used as given after the ``min(H, W) <= window`` shrink rule
    (see :func:`vtkernels.reference.window_attention.effective_window`).
    """

    def __init__(self, dim: int, num_heads: int, head_dim: Optional[int] = None, window_size=7, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, shift_size=0, pad_first: bool = False,
                 mask_value: float = -100.0, backend: Optional[str] = None, device=None, dtype=None):
        super().__init__()
        if attn_drop:
            raise NotImplementedError("attention dropout is not fused; use attn_drop=0 (Swin's default)")
        self.dim = dim
        self.window_size = _square(window_size, "window_size")
        self.shift_size = _square(shift_size, "shift_size")
        self.num_heads = num_heads
        head_dim = head_dim or dim // num_heads
        self.scale = head_dim ** -0.5
        self.pad_first = pad_first
        self.mask_value = mask_value
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        m = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * m - 1) ** 2, num_heads, **factory))
        self.register_buffer("relative_position_index", relative_position_index(m).to(device), persistent=False)
        self.qkv = nn.Linear(dim, head_dim * num_heads * 3, bias=qkv_bias, **factory)
        self.proj = nn.Linear(head_dim * num_heads, dim, **factory)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Older timm saved relative_position_index (a function of the window) as a persistent buffer.
        saved = state_dict.pop(prefix + "relative_position_index", None)
        if saved is not None and not torch.equal(saved.cpu().reshape(-1), self.relative_position_index.cpu().reshape(-1)):
            raise ValueError(f"{prefix}relative_position_index does not match a {self.window_size}x{self.window_size} window")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        out = window_attention(qkv, self.relative_position_bias_table, self.num_heads, self.window_size,
                               self.shift_size, self.scale, self.mask_value, self.backend,
                               pad_qkv=_cast(self.qkv.bias, qkv), pad_first=self.pad_first)
        return self.proj_drop(self.proj(out))

    @classmethod
    def from_hf(cls, hf_attention: nn.Module, shift_size: int = 0, backend: Optional[str] = None) -> "WindowAttention":
        """From an HF transformers ``SwinAttention`` (q/k/v/o projections + relative_position_bias)."""
        bias_module = hf_attention.relative_position_bias
        window = _square(bias_module.window_size, "window_size")
        dim = hf_attention.q_proj.in_features
        weight = hf_attention.q_proj.weight
        module = cls(dim, hf_attention.num_attention_heads, hf_attention.head_dim, window,
                     hf_attention.q_proj.bias is not None, shift_size=shift_size, pad_first=True, backend=backend,
                     device=weight.device, dtype=weight.dtype)
        module.load_state_dict(hf_to_timm_attention_state_dict(hf_attention.state_dict()))
        return module

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, "
                f"shift_size={self.shift_size}, pad_first={self.pad_first}")


def hf_to_timm_attention_state_dict(hf: dict) -> dict:
    """HF ``SwinAttention`` state_dict -> timm ``WindowAttention`` keys (q/k/v concatenated into qkv)."""
    out = {
        "relative_position_bias_table": hf["relative_position_bias.relative_position_bias_table"],
        "qkv.weight": torch.cat([hf[f"{n}_proj.weight"] for n in "qkv"]),
        "proj.weight": hf["o_proj.weight"],
        "proj.bias": hf["o_proj.bias"],
    }
    if "q_proj.bias" in hf:
        out["qkv.bias"] = torch.cat([hf[f"{n}_proj.bias"] for n in "qkv"])
    return out


class SwinTransformerBlock(nn.Module):
    """timm's SwinTransformerBlock on (B, H, W, C), same state_dict; attention fully fused.

    Window and shift follow timm's rule for ``input_resolution`` (per axis: a window that does
    not fit shrinks to the map, unshifted); the fused kernels need the result to be square.
    """

    def __init__(self, dim: int, input_resolution, num_heads: int = 4, head_dim: Optional[int] = None,
                 window_size=7, shift_size=0, always_partition: bool = False, dynamic_mask: bool = False,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, act_layer=nn.GELU, norm_layer=LayerNorm, backend: Optional[str] = None,
                 device=None, dtype=None):
        super().__init__()
        self.dim = dim
        self.input_resolution = tuple(input_resolution)
        window, shift = _square(window_size, "window_size"), _square(shift_size, "shift_size")
        if not always_partition:
            windows = [r if r <= window else window for r in self.input_resolution]
            shifts = [0 if r <= w else shift for r, w in zip(self.input_resolution, windows)]
            window, shift = _square(windows, "effective window"), _square(shifts, "effective shift")
        self.window_size, self.shift_size = window, shift
        factory = {"device": device, "dtype": dtype}
        self.norm1 = norm_layer(dim, **factory)
        self.attn = WindowAttention(dim, num_heads, head_dim, window, qkv_bias, attn_drop, proj_drop, shift,
                                    backend=backend, **factory)
        self.drop_path = drop_path
        self.norm2 = norm_layer(dim, **factory)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, backend=backend, **factory)
        for norm in (self.norm1, self.norm2):  # (a norm_layer of ours; torch's has no backend)
            if hasattr(norm, "backend"):
                norm.backend = backend

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "attn_mask", None)  # older timm: a persistent buffer; computed in-kernel here
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[1], x.shape[2]
        if effective_window(height, width, self.window_size, self.shift_size) != (self.window_size, self.shift_size):
            raise ValueError(f"x's map {height}x{width} needs a smaller window than this block's "
                             f"{self.window_size} (built for input_resolution={self.input_resolution})")
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class PatchMerging(nn.Module):
    """timm's PatchMerging on (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), out_dim); same state_dict."""

    def __init__(self, dim: int, out_dim: Optional[int] = None, norm_layer=None, eps: float = 1e-5,
                 backend: Optional[str] = None, device=None, dtype=None):
        super().__init__()
        if norm_layer not in (None, nn.LayerNorm, LayerNorm):
            raise NotImplementedError("PatchMerging fuses LayerNorm only")
        self.dim = dim
        self.out_dim = out_dim or 2 * dim
        self.backend = backend
        self.norm = nn.LayerNorm(4 * dim, eps=eps, device=device, dtype=dtype)
        self.reduction = nn.Linear(4 * dim, self.out_dim, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = patch_merging_norm(x, _cast(self.norm.weight, x), _cast(self.norm.bias, x), self.norm.eps, self.backend)
        return self.reduction(y)


class _HFSwinAttentionWeights(nn.Module):
    """HF ``SwinAttention``'s parameters under its names (q/k/v/o projections, bias table)."""

    def __init__(self, dim: int, num_heads: int, window: int, qkv_bias: bool):
        super().__init__()
        self.num_attention_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.o_proj = nn.Linear(dim, dim)
        self.relative_position_bias = nn.Module()
        self.relative_position_bias.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))

    def qkv(self):
        """One (3C, C) weight and (3C) bias (or None): three projections as one Linear."""
        weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        if self.q_proj.bias is None:
            return weight, None
        return weight, torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])


class HFSwinLayer(nn.Module):
    """Drop-in for HF transformers' ``SwinLayer`` (same constructor, state_dict and call), with
    pad, roll, partition, bias, mask, reverse and crop fused into :func:`vtkernels.window_attention`.

    The q/k/v projections keep HF's names and run as one matmul (their weights concatenated per call).
    """

    def __init__(self, config, dim: int, input_resolution, num_heads: int, drop_path_rate: float = 0.0,
                 shift_size: int = 0, backend: Optional[str] = None):
        super().__init__()
        from transformers.activations import ACT2FN

        self.window_size = config.window_size
        self.shift_size = shift_size
        self.input_resolution = input_resolution
        self.drop_path = drop_path_rate
        self.backend = backend
        self.attention = _HFSwinAttentionWeights(dim, num_heads, config.window_size, config.qkv_bias)
        self.layernorm_before = LayerNorm(dim, eps=config.layer_norm_eps)
        self.layernorm_after = LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(dim, int(config.mlp_ratio * dim))
        self.mlp.activation_fn = ACT2FN[config.hidden_act] if isinstance(config.hidden_act, str) else config.hidden_act
        self.mlp.fc2 = nn.Linear(int(config.mlp_ratio * dim), dim)

    def forward(self, hidden_states: torch.Tensor, input_dimensions, always_partition: bool = False, **kwargs):
        height, width = input_dimensions
        if always_partition and min(height, width) < self.window_size:
            raise NotImplementedError("always_partition with a window larger than the map is not fused")
        batch, _, channels = hidden_states.shape
        attn = self.attention
        x = self.layernorm_before(hidden_states).view(batch, height, width, channels)
        weight, bias = attn.qkv()
        qkv = torch.nn.functional.linear(x, weight, bias)
        out = window_attention(qkv, attn.relative_position_bias.relative_position_bias_table, attn.num_attention_heads,
                               self.window_size, self.shift_size, attn.head_dim ** -0.5, -100.0, self.backend,
                               pad_qkv=_cast(bias, qkv), pad_first=True)
        hidden_states = hidden_states + drop_path(attn.o_proj(out).view_as(hidden_states), self.drop_path,
                                                   self.training)
        mlp = self.mlp
        hidden_states = hidden_states + mlp.fc2(mlp.activation_fn(mlp.fc1(self.layernorm_after(hidden_states))))
        return hidden_states, None
