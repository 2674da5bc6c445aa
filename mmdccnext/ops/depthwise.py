"""The 3x3 depthwise convolution of DCCNeXt's Conv-FFN on channels-last CPU maps.

Why. The Conv-FFN's hidden maps are rC wide (r = 6) and channels-last ``(B, H, W, rC)``; on
them oneDNN's depthwise convolution ran slower than the memory traffic it needs, and its
backward allocated the input gradient anew each time (page faults on the largest maps of the
network). The extension's kernels (``csrc/cpu/depthwise.cpp``; compiled per ISA like
DCConv's) read and write the maps in memory order, write into a caller's buffer when given
one, and sum every output and gradient in a fixed order: deterministic, and bit-identical
on every ISA (no FMA). Measured in docs/en/benchmarks.md.

What runs them: :class:`DepthwiseConv2d`, the Conv-FFN's convolution module, where
:meth:`DepthwiseConv2d.runs_kernel`, and with it every path of the Conv-FFN that does not
call the module (the inference fast path's workspace, the training node, the op under
``torch.compile``): all compute the same bits. Everywhere else (no extension, other devices
or dtypes, exporting, tracing, compiling the module itself) ``nn.Conv2d``'s own forward runs.

The 7x7 depthwise mixers of stages 1-2 are :class:`DepthwiseConv2d` too, for their weight
gradient only: oneDNN computes their forward and input gradient fast, but their weight
gradient takes about 5x as long as both together (a B2 training step at 224^2 b16: 58 of the
70 ms of a stage-1 mixer's backward, the forward 5 ms; the extension's takes 8 ms; AMD EPYC
Zen 4, 1 thread). Under autograd the module runs oneDNN's forward and input gradient and the
extension's weight gradient (:func:`conv_backward`, deterministic like the 3x3 one); the op
under ``torch.compile`` (``compile_ops.conv_backward_op``) calls the same function.
"""
import contextlib

import torch
from torch import nn

from . import cpu_impl
from .dcconv import is_recording

#: Profiler ranges around the kernels (pybind calls are invisible to torch.profiler).
FORWARD_RANGE = 'mmdccnext::depthwise3x3_forward'
BACKWARD_RANGE = 'mmdccnext::depthwise3x3_backward'
WEIGHT_GRAD_RANGE = 'mmdccnext::depthwise_weight_grad'
#: Kernel sizes whose weight gradient alone the extension computes (:func:`conv_backward`).
WEIGHT_GRAD_SIZES = (7, )

aten = torch.ops.aten


def _range(name):
    return (torch.autograd.profiler.record_function(name)
            if torch.autograd._profiler_enabled() else contextlib.nullcontext())


def _extension_takes(x, weight, k):
    """The extension is built and computes on the channels-last ``(B, H, W, C)`` map ``x``
    with ``weight`` ``(C, 1, k, k)``: float32 or float64 CPU tensors of one dtype, no autocast
    (it would run the convolution in another dtype)."""
    return (x.device.type == 'cpu' and x.dim() == 4 and x.dtype in (torch.float32, torch.float64)
            and weight.dtype == x.dtype and weight.shape == (x.shape[-1], 1, k, k)
            and not torch.is_autocast_enabled('cpu') and cpu_impl.ext_available())


def applies(x, weight):
    """Whether the kernels compute the 3x3 depthwise convolution of the channels-last
    ``(B, H, W, C)`` map ``x`` with ``weight`` ``(C, 1, 3, 3)`` (stride 1, zero padding 1;
    the caller checks the module's configuration): :func:`_extension_takes`."""
    return _extension_takes(x, weight, 3)


def conv_args(weight):
    """``aten.convolution``'s arguments after (input, weight, bias) for the same-size
    depthwise convolution with ``weight`` ``(C, 1, K, K)``: stride 1, zero padding K // 2,
    no dilation, C groups."""
    k = weight.shape[-1]
    return [1, 1], [k // 2, k // 2], [1, 1], False, [0, 0], weight.shape[0]


def same_size(conv):
    """Whether the ``nn.Conv2d`` ``conv`` is a same-size depthwise convolution: one filter
    per channel, odd square kernel, stride 1, zero padding k // 2, no dilation."""
    k = conv.kernel_size[0]
    return (conv.groups == conv.in_channels == conv.out_channels and conv.kernel_size == (k, k)
            and k % 2 == 1 and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and conv.padding == (k // 2, k // 2) and conv.padding_mode == 'zeros')


def forward(x, weight, bias=None, out=None):
    """The convolution of the contiguous ``(B, H, W, C)`` ``x``, into ``out`` when given (a
    contiguous tensor shaped as ``x``, not overlapping it, or ``x`` itself: in place, the
    same bits). No autograd."""
    with _range(FORWARD_RANGE):
        return cpu_impl.load_ext().depthwise3x3_forward(x, weight, bias, out)


def backward(grad, x, weight, need_x=True, need_w=True, need_b=True, grad_x_out=None):
    """``(grad_x, grad_weight, grad_bias)`` for the contiguous output gradient ``grad``;
    ``None`` for those not needed; ``grad_x`` into ``grad_x_out`` when given."""
    with _range(BACKWARD_RANGE):
        grads = cpu_impl.load_ext().depthwise3x3_backward(grad, x, weight, grad_x_out, need_x,
                                                          need_w, need_b)
    return tuple(g if need else None for g, need in zip(grads, (need_x, need_w, need_b)))


def weight_grad_applies(x, weight):
    """Whether :func:`conv_backward` computes the gradients of the same-size depthwise
    convolution of the channels-last ``(B, H, W, C)`` map ``x`` with ``weight``
    ``(C, 1, K, K)``, K in :data:`WEIGHT_GRAD_SIZES` (as :func:`applies` for 3x3)."""
    k = weight.shape[-1]
    return k in WEIGHT_GRAD_SIZES and _extension_takes(x, weight, k)


def conv_backward(grad, x, weight, need_x=True, need_w=True, need_b=True):
    """``(grad_x, grad_weight, grad_bias)`` (``None`` where not needed) of the same-size
    depthwise convolution (stride 1, zero padding K // 2) of the contiguous channels-last
    ``x`` for the contiguous output gradient ``grad``, both ``(B, H, W, C)``: the input's
    by oneDNN, as ``nn.Conv2d``'s backward computes it, the weight's and bias's by the
    extension (:func:`weight_grad_applies`). ``grad_x`` is channels-last ``(B, H, W, C)``."""
    grad_x = grad_w = grad_b = None
    if need_x:
        grad_x = aten.convolution_backward(grad.permute(0, 3, 1, 2), x.permute(0, 3, 1, 2),
                                           weight, None, *conv_args(weight),
                                           [True, False, False])[0]
        grad_x = grad_x.permute(0, 2, 3, 1)
    if need_w or need_b:
        with _range(WEIGHT_GRAD_RANGE):
            grad_w, grad_b = cpu_impl.load_ext().depthwise_weight_grad(grad, x, weight.shape[-1],
                                                                       need_b)
    return grad_x, grad_w if need_w else None, grad_b if need_b else None


class WeightGradFunction(torch.autograd.Function):
    """oneDNN's convolution (as ``nn.Conv2d``) of channels-last ``x`` with
    :func:`conv_backward` as its gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        out = aten.convolution(x.permute(0, 3, 1, 2), weight, bias, *conv_args(weight))
        return out.permute(0, 2, 3, 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        return conv_backward(grad.contiguous(), x, weight, need_x, need_w,
                             need_b and ctx.has_bias)


class Conv3x3Function(torch.autograd.Function):
    """:func:`forward` with :func:`backward` as its gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return forward(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        return backward(grad.contiguous(), x, weight, need_x, need_w, need_b and ctx.has_bias)


def conv3x3(x, weight, bias=None):
    """The convolution of channels-last ``x`` (any strides), differentiable."""
    x = x.contiguous()
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or
                                    (bias is not None and bias.requires_grad)):
        return Conv3x3Function.apply(x, weight, bias)
    return forward(x, weight, bias)


class DepthwiseConv2d(nn.Conv2d):
    """A same-size depthwise ``nn.Conv2d`` (same parameters, same state dict) that runs the
    extension's 3x3 kernels on channels-last CPU maps (:meth:`runs_kernel`), the extension's
    weight gradient of a 7x7 one under autograd (:meth:`runs_weight_grad`), and
    ``nn.Conv2d``'s forward everywhere else.

    Args:
        channels (int): Input and output channels (one filter per channel).
        kernel_size (int): Odd kernel size; the padding keeps the map's size.
    """

    def __init__(self, channels, kernel_size=3):
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)

    def runs_kernel(self, x):
        """Whether the kernels compute this convolution of the channels-last ``(B, H, W, C)``
        map ``x``: :func:`same_size`, :func:`applies` (which takes only 3x3 weights), and
        neither compiling, exporting, tracing nor scripting (they record the standard
        convolution)."""
        return (same_size(self) and applies(x, self.weight) and not is_recording())

    def runs_weight_grad(self, x):
        """Whether this convolution of the channels-last ``x`` runs as
        :class:`WeightGradFunction`: its weight needs a gradient, :func:`same_size`,
        :func:`weight_grad_applies`, and nothing records the graph (as :meth:`runs_kernel`).
        Its output is ``nn.Conv2d``'s, bit for bit."""
        return (torch.is_grad_enabled() and self.weight.requires_grad and same_size(self)
                and weight_grad_applies(x, self.weight) and not is_recording())

    def forward(self, x):
        x_cl = x.permute(0, 2, 3, 1) if x.dim() == 4 else None
        if x_cl is not None and x_cl.is_contiguous():
            if self.runs_kernel(x_cl):
                return conv3x3(x_cl, self.weight, self.bias).permute(0, 3, 1, 2)
            if self.runs_weight_grad(x_cl):
                return WeightGradFunction.apply(x_cl, self.weight, self.bias).permute(0, 3, 1, 2)
        return super().forward(x)
