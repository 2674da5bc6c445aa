"""The Conv-FFN's linear layers on the CPU: oneDNN's matmul.

Why. For the Conv-FFN's products ATen's ``addmm`` / ``mm`` (MKL's sgemm in PyTorch's x86
builds) ran slower than oneDNN's matmul, which PyTorch ships for its own compiler
(``torch.ops.mkldnn._linear_pointwise``, what inductor calls for a frozen linear layer). Most
for the narrow products, which reduce over rC values (r = 6) and write only C per row: ``fc2``
and the gradient of ``fc1``'s input, 1.07-1.56x, e.g. (50176, 384) x (384, 64) 39.9 -> 26.0 ms
(DCCNeXt-B2 at 224 x 224 b16). For ``fc1`` (C -> rC), 1.06-1.21x while its output is small;
a large output is another matter (:data:`FRESH_PAGES_BYTES`). AMD EPYC Zen 4, 1 thread;
``tools/analysis/benchmark_ffn_kernels.py``.

What. :class:`OneDNNLinear`, the Conv-FFN's ``fc1`` and ``fc2`` (an ``nn.Linear``: same
parameters, same state dict), and :func:`onednn_linear`, which the paths that do not call the
modules (the inference fast path, the training node, the ops under ``torch.compile``) use for
the same products: every path computes the same bits. oneDNN runs where :func:`applies`
(float32 CPU tensors, PyTorch built with oneDNN and the backend enabled, no autocast, nothing
recording the graph, an output within the layer's limit); everywhere else ``F.linear``, as
``nn.Linear`` does. The gradients of :class:`LinearFunction` are ATen's, as ``nn.Linear``'s.
"""
import functools

import torch
import torch.nn.functional as F
from torch import nn

from .dcconv import is_recording


@functools.lru_cache(maxsize=None)
def _onednn_linear():
    """oneDNN's linear op, or None where this build of PyTorch lacks it or the op fails a
    probe on this machine (checked once: a private op, so a build may register it without
    supporting it here; the layers then stay ``nn.Linear``'s)."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        op = torch.ops.mkldnn._linear_pointwise.default
        # small integers: the product is exact in any summation order
        got = op(torch.ones(2, 3), torch.ones(4, 3), torch.ones(4), 'none', [], '')
    except (AttributeError, RuntimeError):
        return None
    return op if torch.equal(got, torch.full((2, 4), 4.)) else None


#: Output size from which ``fc1`` is left to ATen (:attr:`OneDNNLinear.max_output_bytes`).
#: glibc serves a larger allocation with fresh pages from the kernel every time (its mmap
#: threshold grows to at most 32 MiB on 64-bit Linux; smaller blocks are reused from the heap),
#: and oneDNN allocates its output: the page faults then cost more than its faster product
#: saves, while the inference fast path writes ATen's ``addmm`` into a reused buffer. Measured
#: for B2's fc1: (4000, 320) x (320, 1920), 29 MiB out, oneDNN 45.9 ms against 51.7 ms into a
#: buffer; (6272, 320) x (320, 1920), 46 MiB out, 97.7 against 81.3 ms.
FRESH_PAGES_BYTES = 32 * 2**20


def applies(x, weight, max_output_bytes=None):
    """Whether oneDNN computes ``x @ weight.T``: float32 CPU tensors, ``x`` of two dimensions
    or more, the op built and the oneDNN backend enabled (``torch.backends.mkldnn``), no
    autocast (it would compute in another dtype), not compiling, exporting, tracing or
    scripting (they record ``F.linear``), and an output of ``max_output_bytes`` at most (None:
    any size)."""
    return (x.device.type == 'cpu' and x.dtype == torch.float32 and x.dim() >= 2
            and weight.dtype == torch.float32 and weight.device.type == 'cpu'
            and (max_output_bytes is None
                 or x.numel() // max(x.shape[-1], 1) * weight.shape[0] * 4 <= max_output_bytes)
            and torch.backends.mkldnn.enabled and not torch.is_autocast_enabled('cpu')
            and not is_recording() and _onednn_linear() is not None)


def _matmul(x, weight, bias):
    return _onednn_linear()(x, weight, bias, 'none', [], '')  # no fused activation


def onednn_linear(x, weight, bias=None, max_output_bytes=None):
    """``x @ weight.T + bias`` over the last axis of ``x`` (any leading shape), without
    autograd: oneDNN's matmul where :func:`applies`, else ``F.linear``."""
    if applies(x, weight, max_output_bytes):
        return _matmul(x, weight, bias)
    return F.linear(x, weight, bias)


class LinearFunction(torch.autograd.Function):
    """oneDNN's matmul with ``nn.Linear``'s gradients (ATen's ``mm`` and ``sum``)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _matmul(x, weight, bias)

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
    everywhere else.

    Args:
        in_features, out_features, bias: as ``nn.Linear``'s.
        max_output_bytes (int | None): Outputs larger than this are ``nn.Linear``'s (the
            Conv-FFN's fc1: :data:`FRESH_PAGES_BYTES`); None: any size.
    """

    def __init__(self, in_features, out_features, bias=True, max_output_bytes=None):
        super().__init__(in_features, out_features, bias=bias)
        self.max_output_bytes = max_output_bytes

    def forward(self, x):
        if not applies(x, self.weight, self.max_output_bytes):
            return super().forward(x)
        params = (self.weight, ) if self.bias is None else (self.weight, self.bias)
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
            return LinearFunction.apply(x, self.weight, self.bias)
        return _matmul(x, self.weight, self.bias)
