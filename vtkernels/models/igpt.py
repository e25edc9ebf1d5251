"""iGPT (Chen et al. 2020; HF ``ImageGPTModel`` / ``ImageGPTForCausalImageModeling``) on vtkernels.

A GPT-2 decoder over colour-palette tokens: token + position embeddings, pre-norm blocks with
iGPT's RMS-style norm (``x / sqrt(mean(x^2) + eps) * w``, no bias), causal attention and a
QuickGELU MLP, a final norm and an LM head over the 512 colours (the SOS token, id 512, is
never predicted). Images enter and leave through the fused palette ops
(:func:`vtkernels.palette_quantize` / :func:`vtkernels.palette_dequantize`).

The residual adds are fused into the next norm, as in :mod:`vtkernels.models.blocks`:
``rms_norm(branch, residual=stream)`` returns ``(norm(stream + branch), stream + branch)``.

Decoding with a KV cache (:class:`KVCache`, used by :mod:`vtkernels.models.igpt_sampling`)
keeps every shape static: the cache is preallocated to ``n_positions``, the current position
is a device tensor, new keys/values are written in place (``kv_cache_write``) and the q_len = 1
attention runs over the whole cache with a key-padding mask hiding the positions not yet
written. Nothing syncs with the host, so a decode step can be captured in a CUDA graph.

Dropout is not modelled (inference and fine-tuning without dropout).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn

import vtkernels
from vtkernels.models.blocks import GradCheckpointing, Mlp, run_split, set_backend
from vtkernels.nn import RMSNorm
from vtkernels.ops.palette import palette_dequantize, palette_quantize
from vtkernels.ops.registration import forward_call


@dataclasses.dataclass(frozen=True)
class ImageGPTConfig:
    vocab_size: int = 513          # 512 colours + the SOS token (id 512)
    n_positions: int = 1024        # 32 x 32 pixels
    dim: int = 512
    depth: int = 24
    num_heads: int = 8
    mlp_dim: Optional[int] = None  # 4 * dim
    eps: float = 1e-5
    act: str = "quick_gelu"
    scale_by_inverse_layer_idx: bool = False

    @property
    def n_colours(self) -> int:
        return self.vocab_size - 1

    @property
    def sos_token(self) -> int:
        return self.vocab_size - 1


SIZES = {  # openai/imagegpt-{small,medium,large}
    "S": ImageGPTConfig(dim=512, depth=24, num_heads=8),
    "M": ImageGPTConfig(dim=1024, depth=36, num_heads=8),
    "L": ImageGPTConfig(dim=1536, depth=48, num_heads=16),
}


class KVCache:
    """Preallocated keys and values for every layer in one tensor, ``kv`` (depth, 2, B,
    n_positions, heads, head_dim), so that a layer's new key and value are written by one copy;
    ``keys`` / ``values`` are its (depth, B, n_positions, heads, head_dim) halves.

    ``pos`` (a 1-element int64 device tensor) is the position the next decode step writes.
    """

    def __init__(self, config: ImageGPTConfig, batch: int, device, dtype):
        head_dim = config.dim // config.num_heads
        shape = (config.depth, 2, batch, config.n_positions, config.num_heads, head_dim)
        self.kv = torch.zeros(shape, device=device, dtype=dtype)
        self.keys, self.values = self.kv[:, 0], self.kv[:, 1]
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.slots = torch.arange(config.n_positions, device=device)

    def padding_mask(self) -> torch.Tensor:
        """(B, n_positions) bool, True on the slots after ``pos`` (not yet written: ignored)."""
        return (self.slots > self.pos).expand(self.keys.shape[1], -1)


@torch.library.custom_op("vtkernels::kv_cache_write", mutates_args=("kv",))
def kv_cache_write(kv: torch.Tensor, kv_new: torch.Tensor, pos: torch.Tensor) -> None:
    """kv[:, :, pos] = kv_new: one layer's cache (2, B, n_positions, H, d) gets the new key and
    value (2, B, 1, H, d; any strides: the qkv projection's output read in place) in one copy; pos
    a 1-element device tensor. An op that declares its write, so that torch.compile updates the
    cache in place: traced as ``index_copy_``, Inductor copied every layer's whole cache on each
    decode step and wrote it back."""
    kv.index_copy_(2, pos, kv_new)


call_kv_cache_write = forward_call(kv_cache_write)


def _new_keys_values(qkv: torch.Tensor) -> torch.Tensor:
    """The keys and values of a packed (B, N, 3, H, d) projection as a (2, B, N, H, d) view."""
    return qkv[:, :, 1:].permute(2, 0, 1, 3, 4)


class CausalSelfAttention(nn.Module):
    """Fused qkv projection + causal attention + output projection; optional KV-cache I/O."""

    def __init__(self, dim: int, num_heads: int, scale: float, backend: Optional[str] = None):
        super().__init__()
        self.num_heads, self.head_dim, self.scale = num_heads, dim // num_heads, scale
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.backend = backend

    def _packed(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape  # (B, N, 3, H, d): q, k, v are its (B, N, H, d) slices, read in place ("bnhd")
        return self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None, layer: int = 0) -> torch.Tensor:
        """Full causal attention over ``x`` (B, N, D); with ``cache``, also stores k, v in slots [0, N)."""
        qkv = self._packed(x)
        if cache is not None:
            cache.kv[layer, :, :, : x.shape[1]] = _new_keys_values(qkv)
        out = vtkernels.attention_qkv(qkv, causal=True, scale=self.scale, backend=self.backend)
        return self.proj(out.flatten(2))

    def decode(self, x: torch.Tensor, cache: KVCache, layer: int, mask: torch.Tensor) -> torch.Tensor:
        """One new token per sequence, x (B, 1, D): write k, v at ``cache.pos``, attend the cache."""
        qkv = self._packed(x)
        kv = cache.kv[layer]
        call_kv_cache_write(kv, _new_keys_values(qkv), cache.pos)
        out = vtkernels.attention(qkv[:, :, 0], kv[0], kv[1], key_padding_mask=mask, scale=self.scale, layout="bnhd",
                                  backend=self.backend)
        return self.proj(out.flatten(2))


class ImageGPTBlock(nn.Module):
    grad_checkpointing = False  # see blocks.set_grad_checkpointing (training forwards only: no cache)

    def __init__(self, config: ImageGPTConfig, layer: int, backend: Optional[str] = None):
        super().__init__()
        scale = (config.dim // config.num_heads) ** -0.5
        if config.scale_by_inverse_layer_idx:
            scale /= layer + 1
        self.layer = layer
        self.norm1 = RMSNorm(config.dim, eps=config.eps, backend=backend)
        self.attn = CausalSelfAttention(config.dim, config.num_heads, scale, backend)
        self.norm2 = RMSNorm(config.dim, eps=config.eps, backend=backend)
        self.mlp = Mlp(config.dim, config.mlp_dim or 4 * config.dim, config.act, backend=backend)

    def forward_split(self, stream, branch, cache: Optional[KVCache] = None, mask: Optional[torch.Tensor] = None):
        """Block on ``stream + branch``; returns ``(branch, stream)`` whose sum is its output.

        ``mask`` given: a decode step against ``cache``; else full causal attention (filling
        ``cache`` when one is given).
        """
        y, stream = (self.norm1(stream), stream) if branch is None else self.norm1(branch, residual=stream)
        a = self.attn(y, cache, self.layer) if mask is None else self.attn.decode(y, cache, self.layer, mask)
        y, stream = self.norm2(a, residual=stream)
        return self.mlp(y), stream


class ImageGPT(GradCheckpointing, nn.Module):
    """iGPT with an LM head over the colours (``head=False``: the bare ``ImageGPTModel``)."""

    def __init__(self, config: ImageGPTConfig = SIZES["S"], head: bool = True, backend: Optional[str] = None):
        super().__init__()
        if config.dim % config.num_heads:
            raise ValueError(f"dim {config.dim} is not divisible by num_heads {config.num_heads}")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.dim)
        self.wpe = nn.Embedding(config.n_positions, config.dim)
        self.blocks = nn.ModuleList(ImageGPTBlock(config, i, backend) for i in range(config.depth))
        self.norm = RMSNorm(config.dim, eps=config.eps, backend=backend)
        self.lm_head = nn.Linear(config.dim, config.n_colours, bias=False) if head else None
        # iGPT's palette (K, 3) in [-1, 1]; set by from_hf(clusters=...) or assigned directly.
        self.register_buffer("clusters", torch.zeros(0, 3), persistent=False)
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.01)

    @classmethod
    def from_size(cls, size: str, **kwargs) -> "ImageGPT":
        if size not in SIZES:
            raise ValueError(f"size must be one of {tuple(SIZES)}, got {size!r}")
        return cls(SIZES[size], **kwargs)

    def set_backend(self, backend: Optional[str]) -> None:
        set_backend(self, backend)

    # -- full-sequence forward ------------------------------------------------------------
    def forward_features(self, input_ids: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        """(B, N) ids -> (B, N, D) final-norm hidden states (HF ``last_hidden_state``)."""
        n = input_ids.shape[1]
        if n > self.config.n_positions:
            raise ValueError(f"input_ids has {n} tokens, more than n_positions={self.config.n_positions}")
        stream = self.wte(input_ids) + self.wpe.weight[:n]
        branch = None
        for block in self.blocks:  # (a recomputed block would write the cache twice: checkpoint without one)
            branch, stream = block.forward_split(stream, branch, cache) if cache is not None else run_split(
                block, stream, branch)
        if cache is not None:
            cache.pos.fill_(n)
        return self.norm(stream) if branch is None else self.norm(branch, residual=stream)[0]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, N) ids -> logits over the colours (B, N, 512), or hidden states without a head."""
        hidden = self.forward_features(input_ids)
        return hidden if self.lm_head is None else self.lm_head(hidden)

    def loss(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy (HF's ``labels=input_ids``: logits[:, :-1] vs ids[:, 1:])."""
        logits = self(input_ids)
        return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten())

    # -- KV-cache decoding ----------------------------------------------------------------
    def new_cache(self, batch: int, device=None, dtype=None) -> KVCache:
        weight = self.wte.weight
        return KVCache(self.config, batch, device or weight.device, dtype or weight.dtype)

    def prefill(self, input_ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run the prompt (B, P) through the model, fill cache slots [0, P); logits of the last token."""
        hidden = self.forward_features(input_ids, cache)[:, -1]
        return hidden if self.lm_head is None else self.lm_head(hidden)

    def decode_step(self, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """token (B,) at position ``cache.pos`` -> logits (B, 512) for the next one; advances ``pos``.

        Static shapes and no host sync: capturable in a CUDA graph.
        """
        stream = (self.wte(token) + self.wpe(cache.pos))[:, None]  # (B, 1, D)
        mask = cache.padding_mask()
        branch = None
        for block in self.blocks:
            branch, stream = block.forward_split(stream, branch, cache, mask)
        hidden = self.norm(branch, residual=stream)[0][:, 0] if branch is not None else self.norm(stream)[:, 0]
        cache.pos.add_(1)
        return hidden if self.lm_head is None else self.lm_head(hidden)

    # -- images <-> tokens ----------------------------------------------------------------
    def _palette(self) -> torch.Tensor:
        if self.clusters.numel() == 0:
            raise ValueError("the model has no colour palette: pass clusters= to from_hf or set model.clusters")
        return self.clusters

    def images_to_tokens(self, images: torch.Tensor, layout: str = "nchw") -> torch.Tensor:
        """uint8 images (B, 3, H, W) or (B, H, W, 3) -> (B, H*W) colour ids (fused quantizer)."""
        return palette_quantize(images, self._palette(), layout)

    def tokens_to_images(self, tokens: torch.Tensor, image_size: tuple[int, int], layout: str = "nchw") -> torch.Tensor:
        return palette_dequantize(tokens, self._palette(), image_size, layout)

    def generate(self, batch: int, **kwargs) -> torch.Tensor:
        """Sample ``batch`` sequences; see :func:`vtkernels.models.igpt_sampling.sample`."""
        from vtkernels.models.igpt_sampling import sample

        return sample(self, batch, **kwargs)

    # -- Hugging Face weights -------------------------------------------------------------
    @classmethod
    def from_hf(cls, hf_model: nn.Module, clusters=None, backend: Optional[str] = None) -> "ImageGPT":
        """From ``ImageGPTModel`` or ``ImageGPTForCausalImageModeling`` (weights copied, same dtype)."""
        has_head = hasattr(hf_model, "lm_head")
        model = cls(config_from_hf(hf_model.config), head=has_head, backend=backend)
        reference = next(hf_model.parameters())
        model.to(device=reference.device, dtype=reference.dtype)
        model.load_state_dict(state_dict_from_hf(hf_model.state_dict(), model.config.depth))
        if clusters is not None:
            model.clusters = torch.as_tensor(clusters, dtype=torch.float32, device=reference.device)
        return model.train(hf_model.training)


def config_from_hf(hf_config) -> ImageGPTConfig:
    if hf_config.activation_function != "quick_gelu":
        raise ValueError(f"only activation_function='quick_gelu' is supported, got {hf_config.activation_function!r}")
    if not hf_config.scale_attn_weights:
        raise ValueError("only scale_attn_weights=True is supported")
    return ImageGPTConfig(vocab_size=hf_config.vocab_size, n_positions=hf_config.n_positions, dim=hf_config.n_embd,
                          depth=hf_config.n_layer, num_heads=hf_config.n_head, mlp_dim=hf_config.n_inner,
                          eps=hf_config.layer_norm_epsilon,
                          scale_by_inverse_layer_idx=hf_config.scale_attn_by_inverse_layer_idx)


def state_dict_from_hf(hf_state: dict, depth: int) -> dict:
    """HF names -> ours; GPT-2's Conv1D weights are (in, out), nn.Linear's (out, in): transposed."""
    prefix = "transformer." if "transformer.wte.weight" in hf_state else ""
    get = lambda name: hf_state[prefix + name]  # noqa: E731
    out = {"wte.weight": get("wte.weight"), "wpe.weight": get("wpe.weight"), "norm.weight": get("ln_f.weight")}
    renames = {"ln_1.weight": "norm1.weight", "ln_2.weight": "norm2.weight", "attn.c_attn": "attn.qkv",
               "attn.c_proj": "attn.proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for i in range(depth):
        for hf_name, name in renames.items():
            if hf_name.endswith(".weight"):
                out[f"blocks.{i}.{name}"] = get(f"h.{i}.{hf_name}")
            else:
                out[f"blocks.{i}.{name}.weight"] = get(f"h.{i}.{hf_name}.weight").t()
                out[f"blocks.{i}.{name}.bias"] = get(f"h.{i}.{hf_name}.bias")
    if "lm_head.weight" in hf_state:
        out["lm_head.weight"] = hf_state["lm_head.weight"]
    return out
