"""TMA (the Hopper Tensor Memory Accelerator) for the Triton GEMMs: when operands qualify.

A kernel that takes host-built ``TensorDescriptor`` arguments loads ``[rows, cols]`` boxes with
asynchronous bulk copies: no address arithmetic in registers, out-of-bounds elements zero-filled on
load and clipped on store (so no masks). The descriptor needs a 16-byte-aligned base and row
stride and a unit column stride; the Triton interpreter emulates descriptors on the CPU.

``VTKERNELS_TMA=0`` in the environment turns TMA off everywhere (every kernel then takes its
pointer path), to compare the two or to rule TMA out while chasing a problem.
"""

from __future__ import annotations

import functools
import os

import torch
from triton.tools.tensor_descriptor import TensorDescriptor

TMA_DTYPES = (torch.float16, torch.bfloat16)


def tma_usable(*tensors: torch.Tensor) -> bool:
    """Whether TMA can address these operands (2-D to 5-D): 16-bit, unit last stride,
    16-byte-aligned base and other strides, no empty dimension, no broadcast (zero-stride)
    dimension; on CUDA, a GPU with TMA (sm_90+); not with VTKERNELS_TMA=0. Every
    :func:`descriptor` is built from operands this accepted."""
    if os.environ.get("VTKERNELS_TMA", "1") == "0":
        return False
    for t in tensors:
        strides = t.stride()
        if t.dtype not in TMA_DTYPES or not 2 <= len(strides) <= 5 or strides[-1] != 1 or 0 in t.shape:
            return False
        if t.data_ptr() % 16:
            return False
        element_size = t.element_size()
        for stride in strides[:-1]:
            if stride == 0 or stride * element_size % 16:
                return False
    device = tensors[0].device
    return device.type != "cuda" or _has_tma(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _has_tma(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def descriptor(t: torch.Tensor, *block: int) -> TensorDescriptor:
    """The descriptor of ``t`` loading / storing boxes of shape ``block`` (one size per dimension,
    powers of two). ``t`` is an operand :func:`tma_usable` accepted, which checked what
    TensorDescriptor's constructor would check again (alignment, strides, shape): the fields are
    set directly, ~0.6 us instead of ~2 us, several descriptors per launch."""
    desc = object.__new__(TensorDescriptor)
    desc.base, desc.shape, desc.strides, desc.block_shape, desc.padding = (
        t, list(t.shape), list(t.stride()), list(block), "zero")
    return desc
