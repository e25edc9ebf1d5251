"""vtkernels: fused GPU kernels for vision transformers (CUDA and Triton), with PyTorch references."""

from vtkernels.backend import BACKENDS, BackendError, use_backend
from vtkernels.ops.norm import layer_norm, rms_norm
from vtkernels.ops.clip_loss import clip_loss
from vtkernels.reference.clip_loss import ClipLossOutput
from vtkernels.ops.patch_embed import patch_embed
from vtkernels.ops.attention import attention, attention_qkv
from vtkernels.ops.palette import palette_dequantize, palette_quantize
from vtkernels.ops.detr_cost import detr_match_cost
from vtkernels.ops.window_attention import window_attention
from vtkernels.ops.patch_merging import patch_merging_norm
from vtkernels.ops.activation import quick_gelu
from vtkernels.ops.mlp import mlp
from vtkernels import nn

__version__ = "0.1.0"


_LAZY = ("models", "optimize", "OptimizeReport")


def __getattr__(name: str):
    """``models`` (every model wrapper) and ``optimize`` / ``OptimizeReport`` (vtkernels.patch) load
    on first use (PEP 562), so that ``import vtkernels`` neither pays for them nor fails with them."""
    if name == "models":
        import vtkernels.models

        return vtkernels.models
    if name in ("optimize", "OptimizeReport"):
        from vtkernels import patch

        return getattr(patch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["BACKENDS", "BackendError", "use_backend", "layer_norm", "rms_norm", "clip_loss", "ClipLossOutput", "patch_embed", "attention", "attention_qkv", "palette_quantize", "palette_dequantize", "detr_match_cost", "window_attention", "patch_merging_norm", "quick_gelu", "mlp", "nn", "models", "optimize", "OptimizeReport", "__version__"]
