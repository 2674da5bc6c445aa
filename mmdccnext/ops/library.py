"""DCConv as ``torch.library`` custom ops: the one seam every device path plugs into.

Three ops in the namespace ``mmdccnext``, each taking the leaf to run as its last argument
(``impl``: ``'cpu'`` = the C++ kernels of :mod:`.cpu_impl`, ``'triton'`` = :mod:`.triton_impl`,
``'pytorch'`` = :mod:`.pytorch_impl`), already chosen by :func:`.dcconv.resolve_impl`:

* ``mmdccnext::cluster(Tensor s, int kernel_size, str impl) -> Tensor``
* ``mmdccnext::aggregate(Tensor x, Tensor idx, Tensor weight, Tensor? bias, str impl) -> Tensor``
* ``mmdccnext::aggregate_backward(Tensor grad_out, Tensor x, Tensor idx, Tensor weight,
  bool need_x, bool need_weight, bool need_bias, str impl) -> (Tensor, Tensor, Tensor)``

Why ops and not ``autograd.Function``: ``torch.compile`` (and MMEngine's ``compile=True``)
sees a custom op as one node with a shape function (``register_fake``) and an autograd
formula (``register_autograd``), so a model compiles with no graph break at DCConv while the
kernels inside stay whatever the leaf is. The leaf rides as an argument, not as per-device
kernel tables, because the PyTorch path must stay selectable for CPU tensors (tests,
benchmarks) and Triton runs CPU tensors under ``TRITON_INTERPRET=1``: the choice is made
once, in :func:`.dcconv.resolve_impl`, and the device tables would only repeat it.

Every op takes contiguous inputs in the compute dtype (the public functions convert them);
gradients that are not needed come back from ``aggregate_backward`` as empty tensors (an op's
outputs cannot be ``None``) and are returned to autograd as ``None``.
"""
import functools
import importlib

import torch
from torch.library import custom_op

_LEAF_MODULES = {
    'cpu': 'mmdccnext.ops.cpu_impl',
    'triton': 'mmdccnext.ops.triton_impl',
    'pytorch': 'mmdccnext.ops.pytorch_impl',
}


@functools.lru_cache(maxsize=None)
def leaf(impl):
    """The module implementing ``impl`` (imported on first use: Triton only when asked)."""
    try:
        name = _LEAF_MODULES[impl]
    except KeyError:
        raise ValueError(f'no DCConv leaf {impl!r}; leaves: {tuple(_LEAF_MODULES)}') from None
    return importlib.import_module(name)


@custom_op('mmdccnext::cluster', mutates_args=())
def cluster_op(s: torch.Tensor, kernel_size: int, impl: str) -> torch.Tensor:
    return leaf(impl).cluster(s, kernel_size)


@cluster_op.register_fake
def _(s, kernel_size, impl):
    B, N, _ = s.shape
    return s.new_empty((B, N, torch.sym_min(kernel_size, N)), dtype=torch.long)


@custom_op('mmdccnext::aggregate', mutates_args=())
def aggregate_op(x: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None, impl: str) -> torch.Tensor:
    return leaf(impl).aggregate_forward(x, idx, weight, bias)


@aggregate_op.register_fake
def _(x, idx, weight, bias, impl):
    return x.new_empty(x.shape)


@custom_op('mmdccnext::aggregate_backward', mutates_args=())
def aggregate_backward_op(grad_out: torch.Tensor, x: torch.Tensor, idx: torch.Tensor,
                          weight: torch.Tensor, need_x: bool, need_weight: bool, need_bias: bool,
                          impl: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grads = leaf(impl).aggregate_backward(grad_out, x, idx, weight, need_x, need_weight,
                                          need_bias)
    return tuple(x.new_empty(0) if g is None else g for g in grads)


@aggregate_backward_op.register_fake
def _(grad_out, x, idx, weight, need_x, need_weight, need_bias, impl):
    return (x.new_empty(x.shape if need_x else 0),
            weight.new_empty(weight.shape if need_weight else 0),
            weight.new_empty(weight.shape[1:] if need_bias else 0))


def _setup_context(ctx, inputs, output):
    x, idx, weight, bias, impl = inputs
    ctx.save_for_backward(x, idx, weight)
    ctx.has_bias = bias is not None
    ctx.impl = impl


def _backward(ctx, grad_out):
    x, idx, weight = ctx.saved_tensors
    need_x, _, need_w, need_b = ctx.needs_input_grad[:4]
    need_b = bool(need_b and ctx.has_bias)
    grad_x, grad_w, grad_b = aggregate_backward_op(grad_out, x, idx, weight, bool(need_x),
                                                   bool(need_w), need_b, ctx.impl)
    return (grad_x if need_x else None, None, grad_w if need_w else None,
            grad_b if need_b else None, None)


aggregate_op.register_autograd(_backward, setup_context=_setup_context)
