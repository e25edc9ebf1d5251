"""Drop-in torch.nn modules built on the fused ops."""

from vtkernels.nn.norm import LayerNorm, RMSNorm

__all__ = ["LayerNorm", "RMSNorm"]
