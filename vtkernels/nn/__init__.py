"""Drop-in torch.nn modules built on the fused ops."""

from vtkernels.nn.norm import LayerNorm, RMSNorm
from vtkernels.nn.clip_loss import ClipLoss
from vtkernels.nn.patch_embed import PatchEmbed, resample_pos_embed
from vtkernels.nn.attention import Attention
from vtkernels.nn.mlp import Mlp, QuickGELU
from vtkernels.nn.swin import HFSwinLayer, PatchMerging, SwinTransformerBlock, WindowAttention

__all__ = ["LayerNorm", "RMSNorm", "ClipLoss", "PatchEmbed", "resample_pos_embed", "Attention", "Mlp", "QuickGELU", "WindowAttention", "SwinTransformerBlock", "PatchMerging", "HFSwinLayer"]
