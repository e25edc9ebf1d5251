"""Models built from vtkernels.nn: ViT and CLIP (with HF / timm weight loaders) and the shared blocks."""

from vtkernels.models.blocks import Block, Mlp
from vtkernels.nn.mlp import QuickGELU
from vtkernels.models.clip import CLIP, CLIPConfig, CLIPOutput, CLIPTextConfig, CLIPVisionConfig
from vtkernels.models.vit import ViT, ViTConfig
from vtkernels.models.igpt import ImageGPT, ImageGPTConfig
from vtkernels.models.detr import DETR, DetrConfig, DetrOutput
from vtkernels.models.detr_loss import DetrSetLoss
from vtkernels.models.swin import Swin, SwinConfig

__all__ = ["Block", "Mlp", "QuickGELU", "ViT", "ViTConfig", "CLIP", "CLIPConfig", "CLIPVisionConfig",
           "CLIPTextConfig", "CLIPOutput", "ImageGPT", "ImageGPTConfig", "DETR", "DetrConfig", "DetrOutput",
           "DetrSetLoss", "Swin", "SwinConfig"]
