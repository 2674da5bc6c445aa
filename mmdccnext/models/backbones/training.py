"""DCCNeXt's Conv-FFN under autograd on the CPU: one autograd node with fewer fresh maps.

Why. Profiled on the CPU (``tools/analysis/benchmark_train.py --profile``; DCCNeXt-B2,
224 x 224, batch 16, 1 thread, AMD EPYC Zen 4), the training step's largest cost besides the
matrix products was memory: the Conv-FFN's rC-wide maps (r = 6) are the largest tensors of the
network, and plain autograd keeps three of them per block (``fc1``'s output, the depthwise
convolution's output, GELU's output) and allocates three more in the backward pass (the
gradients of GELU's output, of its input and of the convolution's input). A freshly allocated
large tensor costs page faults that take longer than the memory-bound operation that fills it
(stage 1's 77 MB maps are always fresh memory: glibc maps them anew each time), and a step
spent 0.6-1.9 s of its 6-7 s of CPU time in the kernel, faulting pages in.

What. While autograd records on float32 CPU tensors, :class:`ConvFFN`'s forward runs as one
node (:class:`ConvFFNFunction`) that

* keeps two of the three hidden maps (``fc1``'s and the convolution's output) and writes GELU's
  output, which only ``fc2`` reads, into a buffer that all blocks of the pass share;
* recomputes GELU's output in the backward pass (one element-wise pass) into a second shared
  buffer, and then overwrites that buffer with the gradient of GELU's output (``mm(..., out=)``)
  and with the gradient of its input (``gelu_backward`` in place).

The same kernels as plain autograd (ATen's, the depthwise convolution's of
:mod:`mmdccnext.ops.depthwise` and the linear layers' of :mod:`mmdccnext.ops.linear` as the
modules run them), called with the same operands, except that the gradient of fc1's input (a
narrow product like fc2) is oneDNN's too: the gradients equal the plain modules' up to float
rounding (``tests/test_models/test_training_node.py``). The buffers belong to one forward
pass (a :class:`Scratch` made by :meth:`DCCNeXt.forward` and held by that pass's nodes):
models, threads and graphs never share them. Measured: see docs/en/benchmarks.md.
"""
import torch
from torch import nn

from mmdccnext.ops import depthwise
from mmdccnext.ops.dcconv import is_recording
from mmdccnext.ops.linear import FRESH_PAGES_BYTES, onednn_linear
from .inference import hooked

aten = torch.ops.aten


class Scratch:
    """The shared buffers of one forward pass (and its backward) of one backbone."""

    def __init__(self):
        self._buffers = {}

    def buffer(self, key, like):
        """A tensor shaped and typed as ``like``, a view of the buffer ``key`` (grown when too
        small; all blocks of the pass reuse it)."""
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < like.numel():
            buf = self._buffers[key] = like.new_empty(like.numel())
        return buf[:like.numel()].view(like.shape)

    def release(self, key):
        """Drop the buffer ``key`` (the forward's, once the forward pass is over)."""
        self._buffers.pop(key, None)


def node_applies(ffn, x):
    """Whether the ConvFFN ``ffn`` runs as :class:`ConvFFNFunction` on channels-last ``x``:
    autograd recording something of it, float32 CPU tensors without autocast, not compiling,
    exporting or tracing (they record the plain operators), GELU, biases, a same-size
    depthwise convolution, and no forward hook on the FFN's modules (a hook must see them)."""
    return (torch.is_grad_enabled() and x.device.type == 'cpu' and x.dtype == torch.float32
            and (x.requires_grad or any(p.requires_grad for p in ffn.parameters()))
            and not (torch.is_autocast_enabled('cpu') or is_recording())
            and type(ffn.act) is nn.GELU and ffn.fc1.bias is not None
            and ffn.fc2.bias is not None and same_depthwise(ffn.dwconv, ffn.fc1.out_features)
            and all(p.dtype == torch.float32 for p in ffn.parameters())
            and not hooked(ffn, ffn.fc1, ffn.dwconv, ffn.act, ffn.fc2))


def same_depthwise(conv, channels):
    """Whether ``conv`` is the same-size depthwise convolution (:func:`depthwise.same_size`)
    with a bias over ``channels`` that :func:`ffn_forward` computes."""
    return (conv.in_channels == channels and depthwise.same_size(conv)
            and conv.bias is not None)


def ffn_forward(x, w1, b1, wd, bd, w2, b2, approximate, gelu_buffer=None):
    """The Conv-FFN on channels-last contiguous ``x`` with eager's kernels and layouts:
    ``(out, h1, pre)``, the output and what :func:`ffn_backward` needs (fc1's output, the
    convolution's output, both channels-last ``(B, H, W, rC)``). GELU's output, which only
    fc2 reads, is written into ``gelu_buffer(pre)`` (a tensor shaped and strided as ``pre``)
    when given, else into a new tensor."""
    B, H, W, C = x.shape
    h1 = onednn_linear(x, w1, b1, FRESH_PAGES_BYTES)  # fc1 as the module computes it
    # the module's kernel where DepthwiseConv2d would run it (same_depthwise holds): the same bits
    if depthwise.applies(h1, wd):
        pre = depthwise.forward(h1, wd, bd)
    else:
        pre = aten.convolution(h1.permute(0, 3, 1, 2), wd, bd, *depthwise.conv_args(wd))
        pre = pre.permute(0, 2, 3, 1)  # a view: oneDNN keeps the channels-last layout
    h3 = torch._C._nn.gelu(pre, approximate=approximate,
                           out=None if gelu_buffer is None else gelu_buffer(pre))
    out = onednn_linear(h3, w2, b2)  # fc2 as the module computes it
    return out, h1, pre


def ffn_backward(grad, x, w1, h1, wd, pre, w2, approximate, hidden, need_grad_x=True,
                 grad_hidden=None):
    """The gradients ``(x, w1, b1, wd, bd, w2, b2)`` of :func:`ffn_forward` for the
    contiguous ``grad`` of its output, in the order and with the strides of eager's autograd
    graph (``grad x`` None unless ``need_grad_x``). ``hidden`` (a tensor shaped and strided as
    ``pre``) holds GELU's output, recomputed, then the gradients of GELU's output and input;
    ``grad_hidden`` (the same, or None: a new tensor) the gradient of fc1's output, where the
    convolution runs the extension's kernel."""
    B, H, W, C = x.shape
    g = grad.view(-1, C)
    h3 = torch._C._nn.gelu(pre, approximate=approximate, out=hidden)
    grad_w2 = aten.mm(g.t(), h3.view(B * H * W, -1))
    grad_b2 = aten.sum(g, [0], True).view(C)
    torch.mm(g, w2, out=hidden.view(B * H * W, -1))  # d out / d h3
    aten.gelu_backward.grad_input(
        hidden, pre, approximate=approximate, grad_input=hidden)  # d out / d pre
    if depthwise.applies(h1, wd):
        grad_h1, grad_wd, grad_bd = depthwise.backward(hidden, h1, wd, grad_x_out=grad_hidden)
        grad_h1 = grad_h1.view(B * H * W, -1)
    else:
        grad_h1, grad_wd, grad_bd = aten.convolution_backward(
            hidden.permute(0, 3, 1, 2), h1.permute(0, 3, 1, 2), wd, [wd.shape[0]],
            *depthwise.conv_args(wd), [True, True, True])
        grad_h1 = grad_h1.permute(0, 2, 3, 1).reshape(B * H * W, -1)
    # a narrow product like fc2's: oneDNN where it applies (mmdccnext.ops.linear)
    grad_x = onednn_linear(grad_h1, w1.t()).view(B, H, W, C) if need_grad_x else None
    grad_w1 = aten.mm(grad_h1.t(), x.view(-1, C))
    grad_b1 = aten.sum(grad_h1, [0], True).view(-1)
    # grad_wd.contiguous(): a view for a depthwise kernel, the parameter's layout as eager's
    return grad_x, grad_w1, grad_b1, grad_wd.contiguous(), grad_bd, grad_w2, grad_b2


class ConvFFNFunction(torch.autograd.Function):
    """fc1 -> depthwise conv -> GELU -> fc2 on channels-last ``(B, H, W, C)`` as one node."""

    @staticmethod
    def forward(ctx, x, w1, b1, wd, bd, w2, b2, approximate, scratch):
        out, h1, pre = ffn_forward(x, w1, b1, wd, bd, w2, b2, approximate,
                                   lambda pre: scratch.buffer('forward', pre))
        ctx.save_for_backward(x, w1, h1, wd, pre, w2)
        ctx.approximate, ctx.scratch = approximate, scratch
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, w1, h1, wd, pre, w2 = ctx.saved_tensors
        hidden = ctx.scratch.buffer('backward', pre)
        grads = ffn_backward(grad.contiguous(), x, w1, h1, wd, pre, w2, ctx.approximate,
                             hidden, need_grad_x=ctx.needs_input_grad[0],
                             grad_hidden=ctx.scratch.buffer('grad_hidden', pre))
        return tuple(g if need else None
                     for g, need in zip(grads, ctx.needs_input_grad)) + (None, None)


def conv_ffn(ffn, x, scratch):
    """``ffn(x)`` (where :func:`node_applies`) as one autograd node; ``scratch``: the pass's
    :class:`Scratch` (None: a scratch of this call alone)."""
    return ConvFFNFunction.apply(x.contiguous(), ffn.fc1.weight, ffn.fc1.bias,
                                 ffn.dwconv.weight, ffn.dwconv.bias, ffn.fc2.weight,
                                 ffn.fc2.bias, ffn.act.approximate, scratch or Scratch())
