"""CLIP contrastive loss: validation, dispatch, autograd, custom ops, data parallelism.

Both kernel backends expose the same four building blocks (see vtkernels/triton/clip_loss.py):
``normalize_rows``, ``logit_stats`` (forward sweep), ``grad_features`` (backward sweep) and
``finish_grad`` (scale + normalization backward). :func:`_forward` / :func:`_backward` chain them
for one process or, given a Communicator, for data parallelism:

- each rank holds n local pairs; texts are all-gathered, the rank's S block is its rows x all N
  columns; column logsumexps are merged across ranks (max + sum all-reduces of N floats);
- every rank returns the full-batch loss; the local feature gradients are
  ``sum_k d loss_k / d local`` (open_clip's gather_with_grad: with DDP averaging, exactly the
  single-process gradients), the logit_scale gradient is this rank's ``d loss / d logit_scale``.

One process runs behind the custom ops ``vtkernels::clip_loss_fwd`` / ``clip_loss_bwd``
(traceable by torch.compile); the data-parallel path is a torch.autograd.Function around the
same chain. The reference backend is plain PyTorch (all_gather_with_grad when distributed).
"""

from __future__ import annotations

import math
import types
from typing import Optional

import torch
from torch import Tensor

from vtkernels import distributed as vt_dist
from vtkernels._extension import kernel_functions
from vtkernels.backend import OpDispatcher
from vtkernels.ops import checks
from vtkernels.ops.registration import backward_call, forward_call
from vtkernels.reference import clip_loss as reference
from vtkernels.reference.clip_loss import ClipLossOutput

CUDA_DTYPES = (torch.float16, torch.bfloat16)


def _kernel_refusals(backend: str, image_features: Tensor, **_) -> list[str]:
    if backend == "cuda" and image_features.dtype not in CUDA_DTYPES + (torch.float64,):
        return [f"the CUDA clip_loss kernels take float16/bfloat16 (tensor cores), got {image_features.dtype}"]
    return []


dispatcher = OpDispatcher("clip_loss", gpu_preference=("triton", "cuda"), dtype_of="image_features",
                          refusals=_kernel_refusals)


KERNEL_STEPS = ("normalize_rows", "logit_stats", "grad_features", "finish_grad")


def _kernels(backend: str) -> types.SimpleNamespace:
    """The backend's four building blocks by name (the extension prefixes them with ``clip_``)."""
    functions = kernel_functions(backend, triton_module="vtkernels.triton.clip_loss", triton=KERNEL_STEPS,
                                 cuda=tuple(f"clip_{step}" for step in KERNEL_STEPS))
    return types.SimpleNamespace(**dict(zip(KERNEL_STEPS, functions)))


def _scale(logit_scale: Tensor, max_scale: float) -> Tensor:
    return logit_scale.detach().float().exp().clamp(max=max_scale).reshape(1)


def _forward(kern, image, text, logit_scale, normalize, max_scale, with_stats, comm=None):
    """Returns (loss, acc_i2t, acc_t2i, row_lse, own col_lse, image_n, text_n, all texts_n, all col_lse)."""
    rows = image.shape[0]
    rank, world = (comm.rank, comm.world) if comm else (0, 1)
    image_n = kern.normalize_rows(image)[0] if normalize else image
    text_n = kern.normalize_rows(text)[0] if normalize else text
    texts = comm.all_gather(text_n) if comm else text_n
    scale = _scale(logit_scale, max_scale)
    offset = rank * rows  # image i's positive is global text offset + i
    row_lse, col_lse, diag, row_max, col_max = kern.logit_stats(image_n, texts, scale, offset, with_stats)
    if comm:
        col_lse = comm.merge_lse(col_lse)
    own_col_lse = col_lse[offset:offset + rows]
    total = (0.5 * (row_lse + own_col_lse) - diag).sum()
    hits = torch.zeros(2, dtype=torch.float32, device=image.device)
    if with_stats:
        if comm:
            col_max = comm.all_reduce(col_max, torch.distributed.ReduceOp.MAX)
        # S[i, i] is the largest of its row / column: the same fp32 values, so the test is exact.
        hits = torch.stack([(diag >= row_max).float().sum(), (diag >= col_max[offset:offset + rows]).float().sum()])
    if comm:
        total, hits = comm.all_reduce(total), comm.all_reduce(hits)
    n_total = rows * world
    loss = total / n_total if n_total else total * float("nan")
    acc = hits / n_total if n_total else hits * float("nan")
    return loss, acc[0].clone(), acc[1].clone(), row_lse, own_col_lse, image_n, text_n, texts, col_lse


def _backward(kern, grad, image, text, image_n, texts, logit_scale, row_lse, col_lse, normalize, max_scale,
              comm=None):
    """(d image, d text, d logit_scale) for the loss cotangent ``grad`` (0-dim)."""
    rank, world = (comm.rank, comm.world) if comm else (0, 1)
    rows = image.shape[0]
    n_total = rows * world
    scale = _scale(logit_scale, max_scale)
    grad = grad.detach().float().reshape(1)
    grad_all = comm.all_reduce(grad) if comm else grad  # sum over ranks: gather_with_grad semantics
    coef = scale * grad_all / max(n_total, 1)
    # One process finishes the text gradient strip by strip; ranks first sum their partial dT.
    d_image, d_texts, dt_sum = kern.grad_features(image_n, texts, scale, row_lse, col_lse, rank * rows,
                                                  None if comm else text, None if comm else coef, normalize)
    if comm:
        dt_sum = comm.all_reduce(dt_sum)
        dy = kern.finish_grad(comm.reduce_scatter(d_texts), text, coef, normalize)
    else:
        dy = d_texts
    dx = kern.finish_grad(d_image, image, coef, normalize)
    unclamped = (logit_scale.detach().float().exp() <= max_scale).float()
    d_logit_scale = (grad * dt_sum / max(n_total, 1) * unclamped).reshape(logit_scale.shape).to(logit_scale.dtype)
    return dx, dy, d_logit_scale


@torch.library.custom_op("vtkernels::clip_loss_fwd", mutates_args=())
def clip_loss_fwd(image: Tensor, text: Tensor, logit_scale: Tensor, normalize: bool, max_scale: float,
                  with_stats: bool, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(rows, d) features with unit column stride. Returns loss, acc_i2t, acc_t2i (fp32 scalars;
    accuracies 0 unless with_stats), row_lse, col_lse (fp32 (rows,)), image_n, text_n (the
    normalized features; empty without normalize)."""
    out = _forward(_kernels(backend), image, text, logit_scale, normalize, max_scale, with_stats)
    loss, acc_i2t, acc_t2i, row_lse, col_lse, image_n, text_n = out[:7]
    if not normalize:
        image_n, text_n = image.new_empty(0), text.new_empty(0)
    return loss, acc_i2t, acc_t2i, row_lse, col_lse, image_n, text_n


@clip_loss_fwd.register_fake
def _(image, text, logit_scale, normalize, max_scale, with_stats, backend):
    scalar = image.new_empty((), dtype=torch.float32)
    stats = image.new_empty(image.shape[0], dtype=torch.float32)
    normed = (lambda t: t.new_empty(t.shape)) if normalize else (lambda t: t.new_empty(0))
    return (scalar, scalar.new_empty(()), scalar.new_empty(()), stats, stats.new_empty(stats.shape), normed(image),
            normed(text))


@torch.library.custom_op("vtkernels::clip_loss_bwd", mutates_args=())
def clip_loss_bwd(grad: Tensor, image: Tensor, text: Tensor, image_n: Tensor, text_n: Tensor, logit_scale: Tensor,
                  row_lse: Tensor, col_lse: Tensor, normalize: bool, max_scale: float,
                  backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Returns d image, d text, d logit_scale."""
    if not normalize:
        image_n, text_n = image, text
    return _backward(_kernels(backend), grad, image, text, image_n, text_n, logit_scale, row_lse, col_lse,
                     normalize, max_scale)


@clip_loss_bwd.register_fake
def _(grad, image, text, image_n, text_n, logit_scale, row_lse, col_lse, normalize, max_scale, backend):
    return image.new_empty(image.shape), text.new_empty(text.shape), logit_scale.new_empty(logit_scale.shape)


call_clip_loss_bwd = backward_call(clip_loss_bwd)


def _setup_context(ctx, inputs, output):
    image, text, logit_scale, normalize, max_scale, _, backend = inputs
    _, _, _, row_lse, col_lse, image_n, text_n = output
    ctx.save_for_backward(image, text, image_n, text_n, logit_scale, row_lse, col_lse)
    ctx.normalize, ctx.max_scale, ctx.backend = normalize, max_scale, backend


def _autograd_backward(ctx, grad_loss, *_unused):
    image, text, image_n, text_n, logit_scale, row_lse, col_lse = ctx.saved_tensors
    if grad_loss is None:
        grad_loss = torch.zeros((), dtype=torch.float32, device=image.device)
    dx, dy, dt = call_clip_loss_bwd(grad_loss, image, text, image_n, text_n, logit_scale, row_lse, col_lse,
                                    ctx.normalize, ctx.max_scale, ctx.backend)
    return dx, dy, dt, None, None, None, None


call_clip_loss_fwd = forward_call(clip_loss_fwd, _autograd_backward, _setup_context)


class _DataParallelClipLoss(torch.autograd.Function):
    """The data-parallel chain (collectives inside), one rank's view."""

    @staticmethod
    def forward(ctx, image, text, logit_scale, normalize, max_scale, with_stats, backend, comm):
        kern = _kernels(backend)
        loss, acc_i2t, acc_t2i, row_lse, own_col_lse, image_n, _, texts, col_lse = _forward(
            kern, image, text, logit_scale, normalize, max_scale, with_stats, comm)
        ctx.save_for_backward(image, text, image_n, texts, logit_scale, row_lse, col_lse)
        ctx.args = (kern, normalize, max_scale, comm)
        ctx.mark_non_differentiable(acc_i2t, acc_t2i, row_lse, own_col_lse)
        return loss, acc_i2t, acc_t2i, row_lse, own_col_lse

    @staticmethod
    def backward(ctx, grad_loss, *_unused):
        image, text, image_n, texts, logit_scale, row_lse, col_lse = ctx.saved_tensors
        kern, normalize, max_scale, comm = ctx.args
        if grad_loss is None:
            grad_loss = torch.zeros((), dtype=torch.float32, device=image.device)
        dx, dy, dt = _backward(kern, grad_loss, image, text, image_n, texts, logit_scale, row_lse, col_lse,
                               normalize, max_scale, comm)
        return dx, dy, dt, None, None, None, None, None


def _validate(image, text, logit_scale, max_scale):
    checks.check_tensor("image_features", image, ndim=2)
    checks.check_tensor("text_features", text, ndim=2)
    checks.check_tensor("logit_scale", logit_scale)
    checks.check_same_device("image_features", image, text_features=text, logit_scale=logit_scale)
    checks.check_same_dtype("image_features", image, text_features=text)
    checks.check_shape("text_features", text, tuple(image.shape))
    if image.shape[1] == 0:
        raise ValueError(f"image_features must have a non-empty feature dimension, got shape {tuple(image.shape)}")
    if logit_scale.numel() != 1:
        raise ValueError(f"logit_scale must be a 0-dim (one-element) tensor, got shape {tuple(logit_scale.shape)}")
    checks.check_positive("max_scale", max_scale)


def clip_loss(image_features: Tensor, text_features: Tensor, logit_scale: Tensor, normalize: bool = True,
              max_scale: float = 100.0, return_stats: bool = False, backend: Optional[str] = None,
              distributed: Optional[bool] = None, group=None):
    """CLIP's symmetric contrastive loss without materializing the n x n logits.

    ``logits = min(exp(logit_scale), max_scale) * normalize(image) @ normalize(text)^T``;
    loss = (CE(logits, arange) + CE(logits^T, arange)) / 2, returned in float32 for the kernel
    backends. Gradients flow to both feature tensors and ``logit_scale`` (zero once clamped).
    With ``return_stats`` returns a :class:`ClipLossOutput` (accuracies both ways, per-row and
    per-column logsumexps; the accuracy counts ties with the positive as hits).

    ``distributed`` (default: on when torch.distributed is initialized with > 1 rank in ``group``):
    each rank passes its local pairs (same count on every rank); the result is the full-batch
    loss, and the gradients follow open_clip's gather_with_grad (see module docstring).
    """
    _validate(image_features, text_features, logit_scale, max_scale)
    comm = vt_dist.maybe_communicator(distributed, group)
    if comm:
        comm.check_equal_rows("image_features", image_features.shape[0], image_features.device)
    chosen = dispatcher.choose(image_features.device, backend, image_features=image_features)
    if chosen == "reference":
        if comm:
            image_features = vt_dist.all_gather_with_grad(image_features, group)
            text_features = vt_dist.all_gather_with_grad(text_features, group)
        out = reference.clip_loss(image_features, text_features, logit_scale, normalize, max_scale, return_stats)
        if comm and return_stats:  # per-row statistics of this rank's pairs, as the kernels return
            rows = slice(comm.rank * out.image_logsumexp.shape[0] // comm.world,
                         (comm.rank + 1) * out.image_logsumexp.shape[0] // comm.world)
            out = out._replace(image_logsumexp=out.image_logsumexp[rows], text_logsumexp=out.text_logsumexp[rows])
        return out
    image = checks.unit_stride(image_features)
    text = checks.unit_stride(text_features)
    if comm:
        out = _DataParallelClipLoss.apply(image, text, logit_scale, normalize, float(max_scale), return_stats,
                                          chosen, comm)
    else:
        out = call_clip_loss_fwd(image, text, logit_scale, normalize, float(max_scale), return_stats, chosen)
    loss, acc_i2t, acc_t2i, row_lse, col_lse = out[:5]
    return ClipLossOutput(loss, acc_i2t, acc_t2i, row_lse, col_lse) if return_stats else loss


def selfcheck_cases(backend: str = "triton", dtypes=(torch.float32, torch.float16)):
    """Small kernel-vs-reference checks (loss, statistics, every gradient) for `python -m vtkernels selfcheck`."""
    from vtkernels.testing import assert_close, upcast, check_device

    def run(image, text, scale, backend, **kwargs):
        out = clip_loss(image, text, scale, backend=backend, return_stats=True, **kwargs)
        return [out.loss, *torch.autograd.grad(out.loss, (image, text, scale)), out.image_logsumexp,
                out.text_logsumexp]

    def check(n, d, dtype, backend, logit_scale, normalize):
        device = check_device()
        image = torch.randn(n, d, device=device).to(dtype).requires_grad_()
        # Paired texts correlate with their images, except at scale ~100 where that would make the
        # loss (and every gradient) vanish to ~exp(-50): there the pairs are independent.
        corr = 1.0 if logit_scale < 4 else 0.0
        text = (corr * image.detach().float() + torch.randn(n, d, device=device)).to(dtype).requires_grad_()
        scale = torch.tensor(logit_scale, device=device, requires_grad=True)
        ours = run(image, text, scale, backend, normalize=normalize)
        theirs = run(*upcast(image, text, scale), "reference", normalize=normalize)
        names = ["loss", "d image", "d text", "d logit_scale", "image lse", "text lse"]
        assert_close(ours, theirs, dtype, names=names, tol=None if dtype == torch.float32 else 2e-2)

    for n, d, logit_scale, normalize in ((70, 48, 2.659, True), (37, 256, 4.6, True), (45, 33, 0.5, False)):
        for dtype in dtypes:
            name = f"n={n} d={d} scale={math.exp(logit_scale):.1f}{'' if normalize else ' raw'} {dtype}"
            yield name, (lambda c=(n, d, dtype, backend, logit_scale, normalize): check(*c))
