"""torch.distributed helpers: all-gather with gradients and the few collectives clip_loss needs.

``all_gather_with_grad`` follows open_clip's ``gather_with_grad``: the backward sums the
gradient of the gathered tensor over all ranks and hands each rank its own slice, so a loss
computed from gathered features gives each rank ``sum_k d loss_k / d local features``.
Works with every backend (reduce-scatter on NCCL, all-reduce + slice elsewhere, e.g. gloo).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


def is_distributed(group=None) -> bool:
    """True when torch.distributed is initialized with more than one rank in ``group``."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


class Communicator:
    """The collectives of one process group, on tensors of equal shape on every rank."""

    def __init__(self, group=None):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)

    def check_equal_rows(self, name: str, rows: int, device: torch.device) -> None:
        sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([rows], dtype=torch.int64, device=device), group=self.group)
        sizes = [int(s.item()) for s in sizes]
        if len(set(sizes)) != 1:
            raise ValueError(f"{name}: every rank must pass the same number of rows, got {sizes} across ranks")

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        t = t.contiguous()
        out = t.new_empty((self.world * t.shape[0],) + tuple(t.shape[1:]))
        dist.all_gather(list(out.chunk(self.world)), t, group=self.group)
        return out

    def all_reduce(self, t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t, op=op, group=self.group)
        return t

    def merge_lse(self, lse: torch.Tensor) -> torch.Tensor:
        """logsumexp over ranks of per-rank partial logsumexps (elementwise)."""
        m = self.all_reduce(lse, dist.ReduceOp.MAX)
        m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
        return m + self.all_reduce(torch.exp(lse - m)).log()

    def reduce_scatter(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of ``t`` over ranks, this rank's slice of dim 0 (``t.shape[0]`` = world * rows)."""
        t = t.contiguous()
        rows = t.shape[0] // self.world
        if dist.get_backend(self.group) == dist.Backend.NCCL:
            out = t.new_empty((rows,) + tuple(t.shape[1:]))
            dist.reduce_scatter_tensor(out, t, group=self.group)
            return out
        return self.all_reduce(t)[self.rank * rows:(self.rank + 1) * rows].contiguous()


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, comm):
        ctx.comm = comm
        return comm.all_gather(t)

    @staticmethod
    def backward(ctx, grad):
        return ctx.comm.reduce_scatter(grad), None


def all_gather_with_grad(t: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenation over ranks of ``t`` (same shape everywhere) along dim 0, differentiable."""
    return _AllGatherWithGrad.apply(t, Communicator(group))


def maybe_communicator(distributed: Optional[bool], group=None) -> Optional[Communicator]:
    """A Communicator when ``distributed`` (None: when initialized with > 1 rank), else None."""
    if distributed is None:
        distributed = is_distributed(group)
    if not distributed:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("distributed=True but torch.distributed is not initialized")
    return Communicator(group)
