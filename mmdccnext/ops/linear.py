"""The Conv-FFN's matrix products with a narrow output, on the CPU: oneDNN's matmul.

Why. ``fc2`` of the Conv-FFN (rC -> C, r = 6) and the gradient of ``fc1``'s input (the same
shapes) reduce over rC values and write only C per row. For these products ATen's ``addmm`` /
``mm`` (MKL's sgemm in PyTorch's x86 builds) ran 1.07-1.54x slower than oneDNN's matmul, which
PyTorch ships for its own compiler (``torch.ops.mkldnn._linear_pointwise``, what inductor
calls for a frozen linear layer): (50176, 384) x (384, 64) 39.9 -> 26.0 ms, (12544, 768) x
(768, 128) 31.7 -> 25.6 ms, (3136, 1920) x (1920, 320) 40.8 -> 35.7 ms (DCCNeXt-B2's fc2 at
224 x 224 b16; AMD EPYC Zen 4, 1 thread). The products with a wide output (fc1, the gradient
of fc2's input) stay with ATen: written into a reused buffer, MKL was as fast or faster
(oneDNN allocates its output, and stage 1's is 98 MB of fresh pages at 1280 x 800).

What. :class:`OneDNNLinear`, the Conv-FFN's ``fc2`` (an ``nn.Linear``: same parameters, same
state dict), and :func:`narrow_linear`, which the paths that do not call the module (the
training node, the ops under ``torch.compile``) use for the same products: every path computes
the same bits. oneDNN runs where :func:`applies` (float32 CPU tensors, PyTorch built with
oneDNN and the backend enabled, no autocast, nothing recording the graph); everywhere else
``F.linear``, as ``nn.Linear`` does. The gradients of :class:`LinearFunction` are ATen's, as
for ``nn.Linear``.
"""
import functools

import torch
import torch.nn.functional as F
from torch import nn

from .dcconv import is_recording


@functools.lru_cache(maxsize=None)
def _onednn_linear():
    """oneDNN's linear op, or None where this build of PyTorch lacks it."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):
        return None


def applies(x, weight):
    """Whether oneDNN computes ``x @ weight.T``: float32 CPU tensors, ``x`` of two dimensions
    or more, the op built and the oneDNN backend enabled (``torch.backends.mkldnn``), no
    autocast (it would compute in another dtype), and not compiling, exporting, tracing or
    scripting (they record ``F.linear``)."""
    return (x.device.type == 'cpu' and x.dtype == torch.float32 and x.dim() >= 2
            and weight.dtype == torch.float32 and weight.device.type == 'cpu'
            and torch.backends.mkldnn.enabled and _onednn_linear() is not None
            and not torch.is_autocast_enabled('cpu') and not is_recording())


def narrow_linear(x, weight, bias=None):
    """``x @ weight.T + bias`` over the last axis of ``x`` (any leading shape), without
    autograd: oneDNN's matmul where :func:`applies`, else ``F.linear``."""
    if applies(x, weight):
        return _onednn_linear()(x, weight, bias, 'none', [], '')
    return F.linear(x, weight, bias)


class LinearFunction(torch.autograd.Function):
    """:func:`narrow_linear` with ``nn.Linear``'s gradients (ATen's ``mm`` and ``sum``)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return narrow_linear(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        g = grad.reshape(-1, grad.shape[-1])
        grad_x = g.mm(weight).view(x.shape) if need_x else None
        grad_w = g.t().mm(x.reshape(-1, x.shape[-1])) if need_w else None
        grad_b = g.sum(0) if need_b and ctx.has_bias else None
        return grad_x, grad_w, grad_b


class OneDNNLinear(nn.Linear):
    """An ``nn.Linear`` (same parameters, same state dict) computed by oneDNN's matmul where
    :func:`applies`, differentiably (:class:`LinearFunction`); ``nn.Linear``'s forward
    everywhere else. Meant for a narrow output (see the module's docstring)."""

    def forward(self, x):
        if not applies(x, self.weight):
            return super().forward(x)
        params = (self.weight, ) if self.bias is None else (self.weight, self.bias)
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
            return LinearFunction.apply(x, self.weight, self.bias)
        return narrow_linear(x, self.weight, self.bias)
