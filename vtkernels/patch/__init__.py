"""``optimize(model)``: swap vtkernels' fused ops into an existing HF transformers or timm model.

Monkey-patching in place (like Liger-Kernel's ``apply_liger_kernel_to_*``), on an instance:

* every last-dimension ``LayerNorm`` (torch's, timm's) becomes :class:`vtkernels.nn.LayerNorm`
  with the same weights (ViT, CLIP, Swin, DETR, ...; timm's channels-first ``LayerNorm2d`` is left
  alone), HF iGPT's ``ImageGPTLayerNorm`` becomes :class:`vtkernels.nn.RMSNorm`; HF ``ViTLayer`` /
  ``CLIPEncoderLayer`` (and DINOv2's layer-scaled ``Dinov2Layer``) and timm's ViT ``Block`` add
  their attention residual inside the second norm (one pass);
* the self-attention of HF ``ViTAttention`` / ``CLIPAttention`` (and of the families built from
  them under other names: DeiT, ViT-MSN, I-JEPA, ViT-MAE, DINOv2, SigLIP (2), MetaCLIP 2;
  vision.py) and of timm's ``Attention`` gets a forward that projects q, k, v straight into the
  (B, N, H, d) layout and calls
  :func:`vtkernels.attention` (causal where HF asks for it, as in the CLIP text tower); so do HF
  DETR's self- and cross-attention (positions added to queries and keys) and HF iGPT's causal
  self-attention (its KV cache kept: detr_igpt.py);
* HF ``SwinLayer`` and timm's ``SwinTransformerBlock`` run their shifted-window attention as one
  :func:`vtkernels.window_attention` call on the (B, H, W, 3C) map (roll, padding, partition,
  bias, mask and reverse inside the op), and add their residual inside the fused second norm;
* Swin patch merging (timm ``PatchMerging``, HF ``SwinPatchMerging``): the 2x2 gather and the
  LayerNorm(4C) become one :func:`vtkernels.patch_merging_norm` call before the reduction Linear;
* the MLP of timm (``Mlp``: ViT, Swin, CLIP towers) and HF (``CLIPMLP``, ``ViTMLP``, ``SwinMLP``,
  ``DetrMLP``, iGPT's ``ImageGPTMLP`` of ``Conv1D`` layers) runs as one :func:`vtkernels.mlp`
  call, the activation (GELU, QuickGELU, ReLU) fused into fc1's GEMM;
* QuickGELU (HF ``QuickGELUActivation``, timm's ``QuickGELU``: CLIP, iGPT) elsewhere runs as one
  :func:`vtkernels.quick_gelu` pass instead of eager PyTorch's three;
* the patch embedding of HF ViT / CLIP / SigLIP (convolution + class token, SigLIP's without,
  + position embedding) becomes one :func:`vtkernels.patch_embed` call; timm's ``PatchEmbed`` (flattened or Swin's NHWC output),
  HF's ``SwinPatchEmbeddings`` and the patch embeddings of HF DeiT, ViT-MSN, I-JEPA, ViT-MAE and
  DINOv2 keep their own position handling and get the fused projection.

A patched forward falls back to the original one for the calls it cannot take exactly (attention
masks that are not causal + key padding or that leave a query without keys, dropout in training,
interpolated position encodings, masked-image tokens), so outputs stay within the kernels'
tolerance of the original model.
Patched modules keep their own parameters (q/k/v are concatenated per call, not copied), so the
state_dict, training and saving work exactly as before.

Layout: common.py (shared helpers), vision.py (ViT, CLIP, Swin: HF and timm), detr_igpt.py (HF
DETR and ImageGPT).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import types
from typing import Optional

import torch
from torch import nn

import vtkernels
from vtkernels.patch import detr_igpt, vision
from vtkernels.patch.common import fused_layer_norm, is_plain_layer_norm

logger = logging.getLogger(__name__)

# (the optimize() flag that enables it, detector, report kind, patched forward); the first match wins.
PATCHES = vision.PATCHES + detr_igpt.PATCHES



@dataclasses.dataclass
class OptimizeReport:
    """What :func:`optimize` replaced: counts per module type (``report["LayerNorm"]``)."""

    replaced: dict = dataclasses.field(default_factory=dict)

    def add(self, kind: str) -> None:
        self.replaced[kind] = self.replaced.get(kind, 0) + 1

    def __getitem__(self, kind: str) -> int:
        return self.replaced.get(kind, 0)

    @property
    def total(self) -> int:
        return sum(self.replaced.values())

    def __str__(self) -> str:
        counts = ", ".join(f"{kind}: {n}" for kind, n in sorted(self.replaced.items())) or "nothing"
        return f"vtkernels.optimize replaced {counts}"


def optimize(model: nn.Module, *, norms: bool = True, attention: bool = True, patch_embed: bool = True,
             mlp: bool = True, activations: bool = True, backend: Optional[str] = None, return_report: bool = False):
    """Swap fused modules into ``model`` in place; returns ``model`` (and the report if asked).

    The report is also kept as ``model.vtkernels_report``. Calling it twice replaces nothing more.
    """
    if backend is not None:
        vtkernels.backend._validate_name(backend)
    report = OptimizeReport()
    for _, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            fused = _fused_norm(child, backend) if norms else None
            if fused is not None:
                setattr(parent, name, fused)
                report.add(type(fused).__name__)
    enabled = {"norms": norms, "attention": attention, "patch_embed": patch_embed, "mlp": mlp,
               "activations": activations}
    for module in model.modules():
        if getattr(module, "_vtkernels_patched", False):
            continue
        kind, forward = next(((kind, forward) for flag, detect, kind, forward in PATCHES
                              if enabled[flag] and detect(module)), (None, None))
        if kind is not None:
            module._vtkernels_original_forward = module.forward
            module._vtkernels_backend = backend
            module._vtkernels_patched = True
            if hasattr(module, "gradient_checkpointing"):  # an HF GradientCheckpointingLayer
                forward = _checkpointed_like_hf(forward)
            module.forward = types.MethodType(forward, module)
            report.add(kind)
    model.vtkernels_report = report
    logger.info("%s", report)
    return (model, report) if return_report else model


def _checkpointed_like_hf(forward):
    """HF's ``GradientCheckpointingLayer`` (ViT, CLIP, Swin layers, ...) checkpoints inside its
    class's forward; a forward set on the instance bypasses that. This one checkpoints the patched
    forward where HF's would (``gradient_checkpointing_enable()``, training, gradients on)."""

    @functools.wraps(forward)
    def checkpointed(self, *args, **kwargs):
        if getattr(self, "gradient_checkpointing", False) and self.training and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(functools.partial(forward, self, **kwargs), *args)
        return forward(self, *args, **kwargs)
    return checkpointed


def _fused_norm(module: nn.Module, backend: Optional[str]) -> Optional[nn.Module]:
    """The fused norm that replaces ``module``, or None."""
    if is_plain_layer_norm(module):
        return fused_layer_norm(module, backend)
    if detr_igpt.is_hf_igpt_norm(module):
        return detr_igpt.fused_igpt_norm(module, backend)
    return None
