"""vtkernels: fused GPU kernels for vision transformers (CUDA and Triton), with PyTorch references."""

from vtkernels.backend import BACKENDS, BackendError, use_backend
from vtkernels.ops.norm import layer_norm, rms_norm
from vtkernels import nn

__version__ = "0.1.0"

__all__ = ["BACKENDS", "BackendError", "use_backend", "layer_norm", "rms_norm", "nn", "__version__"]
