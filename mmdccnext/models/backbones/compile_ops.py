"""What DCCNeXt runs under ``torch.compile`` on the CPU: its convolutions, its Conv-FFN and,
without autograd, its inference fast path as ``torch.library`` ops that inductor leaves alone.

Why. Compiled by inductor on the CPU, a DCCNeXt-B2 training step ran at 0.8x the speed of
eager and a forward without autograd at 0.86x the eager fast path (224 x 224, 1 thread, AMD
EPYC; ``tools/analysis/benchmark_train.py --modes eager compiled``,
``tools/analysis/benchmark_inference.py --engines compile``). Per kernel (``torch.profiler``
with inductor's kernel profile):

* inductor's *layout optimisation*, which it turns on for every CPU graph holding an aten
  convolution when oneDNN is available, re-lays the channels-last maps that DCCNeXt already
  keeps: its LayerNorm / residual kernels transposed whole maps (up to 0.2 s per kernel at
  stage 1); compiled with ``options={'layout_optimization': False}`` the same step ran at
  1.0x eager;
* its generated kernels for GELU's gradient fused with the column sums of the linear layers'
  bias gradients ran 10-15x slower than ATen's ``gelu_backward`` and ``sum``;
* it cannot share buffers across the blocks of a pass as the inference fast path does (the
  Conv-FFN ops below take their internal temporaries from per-thread buffers instead).

So, while compiling on the CPU, every convolution runs as ``mmdccnext::conv_cl`` and the whole
Conv-FFN as ``mmdccnext::conv_ffn`` (eager's own ATen calls on eager's layouts, forward and
backward: the aten graph of eager's autograd written out), so that the graph holds no
convolution and inductor fuses only the rest (LayerNorms, residuals, DCConv's glue); without
autograd the backbone's fast path runs as one op, ``mmdccnext::dccnext_fast_path``. A
compiled backbone computes eager's results bit for bit under ``aot_eager``
(``tests/test_models/test_compile_ops.py``). A model's own setting, nothing global: other
models in the process compile as before.

Where. Only while compiling (``torch.compiler.is_compiling()``, not exporting) CPU tensors
without autocast, for DCCNeXt's own modules with no forward hooks on them
(:func:`conv_ffn_applies`, :func:`conv_applies`; the fast path decides for itself). Eager
runs the modules themselves, and so does every other device, where nothing was measured.
"""
import threading
import weakref

import torch
from torch import nn
from torch.library import custom_op

from mmdccnext.ops import depthwise
from mmdccnext.ops.dcconv import is_exporting
from .inference import PROFILER_RANGE, hooked
from .training import Scratch, ffn_backward, ffn_forward, same_depthwise

aten = torch.ops.aten


def _compiling_cpu(x):
    # torch.export (and so ONNX export) traces with is_compiling() true too: exports must
    # record the standard operators
    return (torch.compiler.is_compiling() and not is_exporting() and x.device.type == 'cpu'
            and not torch.is_autocast_enabled('cpu'))


def conv_ffn_applies(ffn, x):
    """Whether ``ffn`` (a ConvFFN) runs as ``mmdccnext::conv_ffn`` on channels-last ``x``."""
    return (_compiling_cpu(x) and isinstance(ffn.act, nn.GELU)
            and ffn.fc1.bias is not None and ffn.fc2.bias is not None
            and same_depthwise(ffn.dwconv, ffn.fc1.out_features)
            and not hooked(ffn, ffn.fc1, ffn.dwconv, ffn.act, ffn.fc2))


# ---------------------------------------------------------------------------------------
# Conv-FFN: fc1 -> depthwise conv -> GELU -> fc2 on channels-last (B, H, W, C)
# ---------------------------------------------------------------------------------------
_thread = threading.local()


def _buffers():
    """The calling thread's buffers for the Conv-FFN ops' rC-wide temporaries (GELU's output
    in the forward op; two gradients in the backward op), which only the op itself reads:
    eager's node takes them from a pass's :class:`.training.Scratch`, an op cannot hold one
    across the blocks of a pass. Without them a compiled B2 training step spent 0.4 s more
    in GELU and the depthwise backward (page faults of fresh 77 MB maps; 224 x 224 b16, AMD
    EPYC Zen 4, 1 thread). Ops run to completion on their thread, so a thread's buffers
    serve one op at a time; they stay allocated (the largest maps seen: three 77 MB buffers
    for B2 at 224 x 224 b16) until the thread ends."""
    scratch = getattr(_thread, 'scratch', None)
    if scratch is None:
        scratch = _thread.scratch = Scratch()
    return scratch


@custom_op('mmdccnext::conv_ffn', mutates_args=())
def conv_ffn_op(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, wd: torch.Tensor,
                bd: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, approximate: str
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, h1, pre): the output and what the backward needs (fc1's output, the
    convolution's output), each channels-last (B, H, W, .). GELU's output is recomputed in
    the backward pass, as eager's autograd node does (:mod:`.training`); here it goes into
    the thread's buffer (:func:`_buffers`)."""
    return ffn_forward(x, w1, b1, wd, bd, w2, b2, approximate,
                       lambda pre: _buffers().buffer('forward', pre))


@conv_ffn_op.register_fake
def _(x, w1, b1, wd, bd, w2, b2, approximate):
    hidden = x.new_empty((*x.shape[:-1], w1.shape[0]))
    return torch.empty_like(x), hidden, torch.empty_like(hidden)


@custom_op('mmdccnext::conv_ffn_backward', mutates_args=())
def conv_ffn_backward_op(grad: torch.Tensor, x: torch.Tensor, w1: torch.Tensor,
                         h1: torch.Tensor, wd: torch.Tensor, pre: torch.Tensor,
                         w2: torch.Tensor, approximate: str
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                    torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad x, w1, b1, wd, bd, w2, b2), in the order and with the strides of eager's
    autograd graph. One rC-wide buffer holds GELU's output, then the gradients of GELU's
    output and input, another the gradient of fc1's output (as in
    :class:`.training.ConvFFNFunction`; here the thread's buffers, :func:`_buffers`)."""
    buffers = _buffers()
    return ffn_backward(grad, x, w1, h1, wd, pre, w2, approximate,
                        buffers.buffer('backward', pre),
                        grad_hidden=buffers.buffer('grad_hidden', pre))


@conv_ffn_backward_op.register_fake
def _(grad, x, w1, h1, wd, pre, w2, approximate):
    return (torch.empty_like(x), torch.empty_like(w1), w1.new_empty(w1.shape[0]),
            torch.empty_like(wd), wd.new_empty(wd.shape[0]), torch.empty_like(w2),
            w2.new_empty(w2.shape[0]))


def _ffn_setup_context(ctx, inputs, output):
    x, w1, b1, wd, bd, w2, b2, approximate = inputs
    _, h1, pre = output
    ctx.save_for_backward(x, w1, h1, wd, pre, w2)
    ctx.approximate = approximate


def _ffn_backward(ctx, grad, *unused):  # h1 and pre are internal: nothing flows into them
    grads = conv_ffn_backward_op(grad.contiguous(), *ctx.saved_tensors, ctx.approximate)
    return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad)) + (None, )


conv_ffn_op.register_autograd(_ffn_backward, setup_context=_ffn_setup_context)


def conv_ffn(ffn, x):
    """``ffn(x)`` (a ConvFFN, where :func:`conv_ffn_applies`) through the op."""
    return conv_ffn_op(x.contiguous(), ffn.fc1.weight, ffn.fc1.bias, ffn.dwconv.weight,
                       ffn.dwconv.bias, ffn.fc2.weight, ffn.fc2.bias, ffn.act.approximate)[0]


# ---------------------------------------------------------------------------------------
# Any other convolution (stem, downsampling, depthwise mixer) on channels-last maps
# ---------------------------------------------------------------------------------------
@custom_op('mmdccnext::conv_cl', mutates_args=())
def conv_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            stride: list[int], padding: list[int], groups: int) -> torch.Tensor:
    """``conv`` of channels-last ``(B, H, W, C)`` ``x`` (read as the channels_last NCHW
    tensor it is), channels-last ``(B, H', W', C')`` out."""
    out = aten.convolution(x.permute(0, 3, 1, 2), weight, bias, stride, padding, [1, 1], False,
                           [0, 0], groups)
    return out.permute(0, 2, 3, 1).contiguous()  # a view already: oneDNN keeps the layout


@conv_op.register_fake
def _(x, weight, bias, stride, padding, groups):
    B, H, W, _ = x.shape
    k = weight.shape[-2:]
    size = [(n + 2 * p - kk) // s + 1 for n, p, kk, s in zip((H, W), padding, k, stride)]
    return x.new_empty((B, *size, weight.shape[0]))


@custom_op('mmdccnext::conv_cl_backward', mutates_args=())
def conv_backward_op(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                     stride: list[int], padding: list[int], groups: int, need_bias: bool
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    k = weight.shape[-1]
    if (groups == x.shape[-1] and stride == [1, 1] and padding == [k // 2, k // 2]
            and depthwise.weight_grad_applies(x, weight)):
        # eager's DepthwiseConv2d (the 7x7 mixers): the extension's weight gradient
        grad_x, grad_w, grad_b = depthwise.conv_backward(grad, x, weight, need_b=need_bias)
        return (grad_x.contiguous(), grad_w,
                grad_b if need_bias else weight.new_empty(0))
    grad_x, grad_w, grad_b = aten.convolution_backward(
        grad.permute(0, 3, 1, 2), x.permute(0, 3, 1, 2), weight,
        [weight.shape[0]] if need_bias else None, stride, padding, [1, 1], False, [0, 0],
        groups, [True, True, need_bias])
    # grad_w comes back channels_last for a channels_last input; the contiguous copy is what
    # the registration declares (the values are eager's)
    return (grad_x.permute(0, 2, 3, 1).contiguous(), grad_w.contiguous(),
            grad_b if need_bias else weight.new_empty(0))


@conv_backward_op.register_fake
def _(grad, x, weight, stride, padding, groups, need_bias):
    return (torch.empty_like(x), torch.empty_like(weight),
            weight.new_empty(weight.shape[0] if need_bias else 0))


def _conv_setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, groups = inputs
    ctx.save_for_backward(x, weight)
    ctx.args = (stride, padding, groups, bias is not None)


def _conv_backward(ctx, grad):
    grads = conv_backward_op(grad.contiguous(), *ctx.saved_tensors, *ctx.args)
    need = ctx.needs_input_grad[:3]
    return tuple(g if n else None for g, n in zip(grads, need)) + (None, None, None)


conv_op.register_autograd(_conv_backward, setup_context=_conv_setup_context)


def conv_applies(conv, x):
    """Whether ``conv`` runs as ``mmdccnext::conv_cl`` on the channels-last ``x``."""
    return (_compiling_cpu(x) and isinstance(conv, nn.Conv2d) and conv.dilation == (1, 1)
            and conv.padding_mode == 'zeros' and not isinstance(conv.padding, str)
            and not hooked(conv))


def conv(conv, x):
    """``conv`` (where :func:`conv_applies`) of channels-last ``x`` through the op."""
    return conv_op(x.contiguous(), conv.weight, conv.bias, list(conv.stride), list(conv.padding),
                   conv.groups)


# ---------------------------------------------------------------------------------------
# Inference: the backbone's eager fast path as one op
# ---------------------------------------------------------------------------------------
#: the backbones whose fast path a compiled graph calls, by id (a graph holds the id, an int)
_BACKBONES = weakref.WeakValueDictionary()


@custom_op('mmdccnext::dccnext_fast_path', mutates_args=())
def fast_path_op(x: torch.Tensor, params: list[torch.Tensor], key: int) -> list[torch.Tensor]:
    """The outputs of the backbone ``key`` for the images ``x``, by its eager inference fast
    path. ``params`` (its parameters) are inputs so that the graph depends on them."""
    from .inference import workspace_of
    backbone = _BACKBONES[key]
    with torch.no_grad(), torch.profiler.record_function(PROFILER_RANGE):
        return list(backbone._forward(x, workspace_of(backbone)))


@fast_path_op.register_fake
def _(x, params, key):
    return _BACKBONES[key]._empty_outputs(x)


def fast_path(backbone, x):
    """``backbone(x)`` without autograd while compiling (the backbone decided that its fast
    path applies): inductor cannot reuse buffers across the blocks of a pass and works in
    place less than the fast path does, which made a compiled B2 forward without autograd
    0.86x the speed of the eager fast path (224 x 224, batch 32, 1 thread, AMD EPYC)."""
    return tuple(fast_path_op(x, list(backbone.parameters()), _register(backbone)))


@torch.compiler.assume_constant_result
def _register(backbone):
    # run while tracing (not traced): the graph keeps the returned id as a constant
    _BACKBONES[id(backbone)] = backbone
    return id(backbone)
