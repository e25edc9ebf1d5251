"""How the public functions call the kernel custom ops: the op under torch.compile, its plain
implementation in eager mode.

Every kernel op is a ``torch.library`` custom op with a fake implementation, so that
torch.compile traces it and ``torch.library.opcheck`` checks it. In eager mode that machinery
costs per call: two trips through the dispatcher (~10 us), and with autograd torch's
``fill_defaults`` (the schema's arguments rebuilt from C++ once per argument, O(args^2)) and a
redispatch, 20-40 us more. Measured on a 2-core CPU machine with the kernel launches stubbed out,
that was as much as the rest of a call (validation, dispatch, launch setup: 30-50 us), and it
adds up for models whose GPU time per op is short (CLIP text, DETR at batch 8).

:func:`forward_call` registers the op's autograd and returns the function the public code
calls: in plain eager mode (real tensors, no dispatch mode, tracer or torch.func transform) an
``autograd.Function`` whose forward runs the op's implementation and then the same
``setup_context``, with the same ``backward`` (or the implementation alone when nothing needs a
gradient); otherwise, and under torch.compile, the custom op itself (FakeTensorMode, make_fx,
jit.trace and compiled autograd need its fake implementation and dispatch). The eager Function
passes None, not a zero tensor, as the gradient of an output nothing used
(``set_materialize_grads(False)``): a backward sees None for the outputs saved for it
(activations, statistics) and, where an op returns two (the norm's residual sum), for either;
with no gradient at all it is not called. Backward functions call their backward op through
:func:`backward_call`: the implementation when the backward runs from that eager Function, the op
when AOTAutograd traces the registered one. That choice is a flag set by the eager Function, not
``torch.compiler.is_compiling()`` alone, so it does not depend on whether torch holds the
compiling flag while AOTAutograd traces a backward.
"""

from __future__ import annotations

import contextvars
from typing import Callable, Optional

import torch

_eager_backward = contextvars.ContextVar("vtkernels_eager_backward", default=False)


def _implementation(op) -> Callable:
    # The function the custom op was made from (CustomOpDef keeps it as _init_fn); the op itself
    # if a torch version does not, which is slower but the same.
    return getattr(op, "_init_fn", op)


# Plain eager execution is what the implementation can run: real tensors, nothing intercepting
# the dispatch. Anything else (FakeTensorMode, make_fx, jit tracing, torch.func transforms,
# FakeTensor / DTensor arguments) needs the op, whose fake implementation and dispatch it relies on.
_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)
_dispatch_mode_count = getattr(torch._C, "_len_torch_dispatch_stack", None)
_functorch_transform = getattr(getattr(torch._C, "_functorch", None), "peek_interpreter_stack", None)


def _plain_needs_grad(args) -> Optional[bool]:
    """None unless plain eager; else whether a gradient is needed (one pass over the arguments:
    this runs on every call)."""
    if (_dispatch_mode_count is None or _functorch_transform is None  # a torch without these probes
            or _dispatch_mode_count() or _functorch_transform() is not None or torch.jit.is_tracing()):
        return None
    needs_grad = False
    for a in args:
        if isinstance(a, torch.Tensor):
            if type(a) not in _PLAIN_TENSOR_TYPES:
                return None
            needs_grad = needs_grad or a.requires_grad
    return needs_grad and torch.is_grad_enabled()


def plain_eager(args) -> bool:
    """Whether a call with these arguments runs in plain eager mode (real tensors, no tracer,
    dispatch mode or transform, not compiling): where an op may call an extension function that
    records its own C++ autograd node instead of the custom op."""
    return not torch.compiler.is_compiling() and _plain_needs_grad(args) is not None


def forward_call(op, backward: Optional[Callable] = None, setup_context: Optional[Callable] = None) -> Callable:
    """The callable for ``op`` (positional arguments only); with ``backward``, registers it (and
    ``setup_context``) as the op's autograd formula and uses the same pair in eager mode."""
    implementation = _implementation(op)
    function = None  # the eager autograd Function, for ops with a backward
    if backward is not None:
        op.register_autograd(backward, setup_context=setup_context)

        def function_backward(ctx, *grads):
            if all(g is None for g in grads):  # (e.g. a custom Function downstream returned None)
                return (None,) * len(ctx.needs_input_grad)
            token = _eager_backward.set(True)
            try:
                return backward(ctx, *grads)
            finally:
                _eager_backward.reset(token)

        def function_forward(ctx, *inputs):
            output = implementation(*inputs)
            # Outputs that are saved for the backward, not used (the MLP's hidden activations,
            # attention's logsumexp, the norm's statistics), get None, not a zero tensor each:
            # for ViT-B's MLP at batch 256 that was 2 x 310 MB written per layer per backward.
            ctx.set_materialize_grads(False)
            setup_context(ctx, inputs, output)
            return output

        # forward(ctx, *inputs) calling setup_context itself, not a separate setup_context
        # staticmethod: with one, Function.apply binds the arguments through inspect.signature on
        # every call (~20 us of host time; the calls here are positional, nothing to bind).
        name = "Eager" + "".join(part.title() for part in getattr(implementation, "__name__", "op").split("_"))
        function = type(name, (torch.autograd.Function,), {"forward": staticmethod(function_forward),
                                                           "backward": staticmethod(function_backward)})

    def call(*args):
        grad = None if torch.compiler.is_compiling() else _plain_needs_grad(args)
        if grad is None:
            return op(*args)
        return function.apply(*args) if grad and function is not None else implementation(*args)

    return call


def backward_call(op) -> Callable:
    """The callable for a backward op inside a backward registered through :func:`forward_call`.
    A backward that is itself differentiated (``create_graph=True``) gets the op, whose missing
    autograd formula raises as before rather than returning gradients detached from the graph."""
    implementation = _implementation(op)

    def call(*args):
        # is_compiling first: Dynamo (compiled autograd tracing the eager backward) then never reads the flag.
        eager = not torch.compiler.is_compiling() and _eager_backward.get() and _plain_needs_grad(args) is False
        return implementation(*args) if eager else op(*args)

    return call
