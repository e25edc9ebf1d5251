"""TMA (the Hopper Tensor Memory Accelerator) for the Triton GEMMs: when operands qualify.

A kernel that takes host-built ``TensorDescriptor`` arguments loads ``[rows, cols]`` boxes with
asynchronous bulk copies: no address arithmetic in registers, out-of-bounds elements zero-filled on
load and clipped on store (so no masks). The descriptor needs a 16-byte-aligned base and row
stride and a unit column stride; the Triton interpreter emulates descriptors on the CPU.
"""

from __future__ import annotations

import torch
from triton.tools.tensor_descriptor import TensorDescriptor

TMA_DTYPES = (torch.float16, torch.bfloat16)


def tma_usable(*tensors: torch.Tensor) -> bool:
    """Whether TMA can address these 2-D operands: 16-bit, unit column stride, 16-byte-aligned
    base and row stride, no empty dimension; on CUDA, a GPU with TMA (sm_90+)."""
    for t in tensors:
        if t.dtype not in TMA_DTYPES or t.dim() != 2 or 0 in t.shape:
            return False
        if t.stride(1) != 1 or (t.stride(0) * t.element_size()) % 16 or t.data_ptr() % 16:
            return False
    device = tensors[0].device
    return device.type != "cuda" or torch.cuda.get_device_capability(device)[0] >= 9


def descriptor(t: torch.Tensor, block_rows: int, block_cols: int) -> TensorDescriptor:
    """The descriptor of 2-D ``t`` loading / storing [block_rows, block_cols] boxes."""
    return TensorDescriptor.from_tensor(t, [block_rows, block_cols])
