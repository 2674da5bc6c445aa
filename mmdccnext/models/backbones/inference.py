"""DCCNeXt's inference fast path on the CPU: what the backbone runs by itself without autograd.

Why. On the CPU a freshly allocated large tensor costs page faults that can take longer than
the memory-bound operation that fills it (a fresh copy of a 154 MB tensor: 89 ms, an in-place
copy: 14 ms, recorded in docs/en/benchmarks.md). The Conv-FFN's rC-wide hidden maps (r = 6)
are the largest tensors of the network, written twice per block (``fc1`` and the 3x3
depthwise convolution), and the residual additions write a C-wide map each.

What. When :func:`fast_path_applies`, :meth:`DCCNeXt.forward` takes a :class:`Workspace`
(:func:`workspace_of`: kept between passes or new, below) and hands it to every block. The
blocks then

* write ``fc1``'s output into a buffer of the workspace, which all blocks of the pass reuse
  (where the module leaves it to ATen, an output over 32 MiB; a smaller one is oneDNN's new
  tensor, as the module computes it: :class:`~mmdccnext.ops.linear.OneDNNLinear`),
* write the depthwise convolution over ``fc1``'s output with the kernel the module runs
  (:class:`~mmdccnext.ops.depthwise.DepthwiseConv2d`: the C++ extension's, which computes
  in place with a ring of two rows; no second rC-wide map), or, where the module runs
  ``nn.Conv2d``'s forward, into a second buffer with oneDNN's in-place ``out += conv(x)`` on
  the zeroed buffer (``mkldnn::_convolution_pointwise_``, the kernel PyTorch's compiler uses
  for convolution + addition) where this build of PyTorch has it, and GELU in place,
* add both residuals in place (a block's input is then the previous layer's own output,
  never the caller's tensor).

The results are bit-identical to the plain forward (the same kernels, written elsewhere:
``tests/test_models/test_inference_fast_path.py``).

The workspace of a classification backbone (``gap_before_final_norm``: the outputs are pooled
vectors) is kept from one pass to the next, one per backbone and thread (:func:`workspace_of`),
while the model stays in eval mode: glibc returns a freed tensor over 32 MiB to the system,
and a fresh one faults its pages in again on every pass. Kept, DCCNeXt-B2 ran 1.061x the
images/s at 224^2 b32 (same process, alternating passes, AMD EPYC Zen 4, AVX-512, 1 thread),
and the peak memory stays the same: after such a backbone only a small head runs. A backbone
that hands maps to a neck gets a new workspace per pass: kept buffers would stack on the
neck's and heads' own peak (Mask R-CNN-B2 at 1280x800: 519 -> 745 MiB for inference, for
1.027x the backbone's speed). Models and threads never share a workspace; ``model.train()``
drops the kept ones (so do deleting the model and the thread's end), so a model evaluated
and then trained trains exactly as one that never was, with the same memory.
"""
import functools
import threading
import weakref

import torch
from torch import nn

from mmdccnext.ops import depthwise
from mmdccnext.ops import linear as linear_ops
from mmdccnext.ops.dcconv import is_exporting
from mmdccnext.ops.depthwise import DepthwiseConv2d
from mmdccnext.ops.linear import OneDNNLinear

#: The ``torch.profiler`` range :meth:`DCCNeXt.forward` records around a fast-path pass.
PROFILER_RANGE = 'mmdccnext::DCCNeXt.inference_fast_path'


def hooked(*modules):
    """Whether a forward hook (global, or on one of ``modules``) would see these modules'
    calls: then a path that skips their calls or overwrites their outputs must not run."""
    hooks = torch.nn.modules.module
    return bool(hooks._global_forward_hooks or hooks._global_forward_pre_hooks
                or any(m._forward_hooks or m._forward_pre_hooks for m in modules))


def fast_path_applies(backbone, x):
    """Whether ``backbone`` (a :class:`DCCNeXt`) runs the fast path on the images ``x``.

    It does when it is safe and known to pay: autograd off (``torch.no_grad`` or
    ``torch.inference_mode``); not exporting or tracing (they must record the plain
    operators); float32 CPU tensors without autocast (where it was validated and measured); no
    stochastic depth active (training mode with ``drop_path_rate > 0``); and no forward hook
    on any module inside the backbone (a hook must see the tensors of the plain forward).
    Under ``torch.compile`` the backbone runs it as one op
    (:func:`mmdccnext.models.backbones.compile_ops.fast_path`).
    """
    return not (torch.is_grad_enabled() or is_exporting()
                or torch.jit.is_scripting() or x.device.type != 'cpu'
                or x.dtype != torch.float32 or torch.is_autocast_enabled('cpu')
                or (backbone.training and backbone.drop_path_rate > 0)
                or hooked(*(m for m in backbone.modules() if m is not backbone)))


@functools.lru_cache(maxsize=None)
def _inplace_conv_add():
    """oneDNN's ``out += conv(x)``, or None where this build of PyTorch lacks it."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._convolution_pointwise_.binary
    except (AttributeError, RuntimeError):
        return None


class Workspace:
    """The buffers of the forward passes of one backbone in one thread, and the in-place
    kernels the blocks use with them (:func:`workspace_of`)."""

    def __init__(self):
        self._buffers = {}

    def buffer(self, key, like, channels):
        """A ``(*like.shape[:-1], channels)`` tensor of ``like``'s dtype, a view of the buffer
        ``key`` (grown when too small)."""
        rows = like.numel() // like.shape[-1]
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < rows * channels:
            buf = self._buffers[key] = like.new_empty(rows * channels)
        return buf[:rows * channels].view(*like.shape[:-1], channels)

    def linear(self, linear, x, key):
        """``linear(x)`` of channels-last ``x``: oneDNN's where the module computes it so
        (:class:`~mmdccnext.ops.linear.OneDNNLinear`, a small output), else ATen's written
        into the buffer ``key``."""
        if isinstance(linear, OneDNNLinear) and linear_ops.applies(x, linear.weight,
                                                                   linear.max_output_bytes):
            return linear_ops.onednn_linear(x, linear.weight, linear.bias)
        out = self.buffer(key, x, linear.out_features)
        torch.addmm(linear.bias, x.reshape(-1, x.shape[-1]), linear.weight.t(),
                    out=out.view(-1, out.shape[-1]))
        return out

    def dwconv_gelu(self, conv, act, x, key):
        """``act(conv(x))`` of channels-last ``(B, H, W, C)`` ``x`` (``conv`` depthwise; ``x``
        is the pass's own: fc1's output), channels-last out: over ``x`` (the module's kernel),
        else in the buffer ``key`` (oneDNN's in-place convolution on the zeroed buffer), then
        GELU in place."""
        out = self._depthwise_conv(conv, x, key)
        if isinstance(act, nn.GELU):
            return torch._C._nn.gelu_(out, approximate=act.approximate)
        return act(out)

    def _depthwise_conv(self, conv, x, key):
        if isinstance(conv, DepthwiseConv2d) and conv.runs_kernel(x):  # the module's kernel
            # over its input: fc1's output, which nothing else reads
            return depthwise.forward(x, conv.weight, conv.bias, out=x)
        conv_add = _inplace_conv_add()
        if (conv_add is not None and torch.backends.mkldnn.enabled
                and conv.padding_mode == 'zeros'):
            out = self.buffer(key, x, conv.out_channels).zero_()
            try:
                conv_add(out.permute(0, 3, 1, 2), x.permute(0, 3, 1, 2), conv.weight, conv.bias,
                         list(conv.padding), list(conv.stride), list(conv.dilation),
                         conv.groups, 'add', 1.0, None, [], None)
                return out
            except RuntimeError:  # a configuration oneDNN refuses: the plain convolution
                pass
        return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    @staticmethod
    def residual_(x, y, gamma):
        """``x + gamma * y`` written into ``x``."""
        return x.add_(y) if gamma is None else x.addcmul_(y, gamma)


#: backbone -> threading.local whose ``workspace`` is that thread's :class:`Workspace`: the
#: entry goes with the backbone (a weak key), a thread's workspace with the thread.
_WORKSPACES = weakref.WeakKeyDictionary()


def workspace_of(backbone):
    """The :class:`Workspace` of a pass of ``backbone`` in the calling thread: for a
    classification backbone (``gap_before_final_norm``) the thread's, made on first use and
    kept between passes until :func:`release_workspaces`; else a new one (module docstring)."""
    if not backbone.gap_before_final_norm:
        return Workspace()
    local = _WORKSPACES.get(backbone)
    if local is None:
        local = _WORKSPACES.setdefault(backbone, threading.local())
    workspace = getattr(local, 'workspace', None)
    if workspace is None:
        workspace = local.workspace = Workspace()
    return workspace


def release_workspaces(backbone):
    """Drop the workspaces of ``backbone`` in every thread (their buffers are freed once no
    pass uses them)."""
    _WORKSPACES.pop(backbone, None)


def optimize_for_inference(model):
    """Deprecated no-op, kept so that scripts written for mmdccnext 0.1 keep running: DCCNeXt
    now takes its inference fast path by itself (:func:`fast_path_applies`). Returns ``model``
    unchanged."""
    import warnings
    warnings.warn(
        'mmdccnext.models.optimize_for_inference is no longer needed and does nothing: '
        'DCCNeXt runs its inference fast path by itself whenever autograd is off.',
        DeprecationWarning, stacklevel=2)
    return model
