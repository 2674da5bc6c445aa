"""One explicit inference optimisation of DCCNeXt for the CPU: :func:`optimize_for_inference`.

Why. On the CPU a freshly allocated large tensor costs page faults that can take longer than
the memory-bound operation that fills it (a fresh copy of a 154 MB tensor: 89 ms, an
in-place copy: 14 ms, recorded in docs/en/benchmarks.md). The Conv-FFN's rC-wide hidden
maps (r = 6) are the largest tensors of the network, written twice per block (``fc1`` and the
3x3 depthwise convolution), and the residual additions write a C-wide map each.

What. :func:`optimize_for_inference` replaces every :class:`DCCNeXtBlock` of every DCCNeXt in
a model by an :class:`InferenceDCCNeXtBlock`: the same modules and parameters (shared, not
copied; the state dict keeps its keys), whose forward without autograd

* writes ``fc1``'s output and the depthwise convolution's output into two buffers that all
  blocks of one forward pass of the backbone reuse (per thread),
* computes the depthwise convolution with oneDNN's in-place ``out += conv(x)`` on the zeroed
  buffer (``mkldnn::_convolution_pointwise_``, the kernel PyTorch's compiler uses for
  convolution + addition) where this build of PyTorch has it, float32 CPU tensors only,
* applies GELU and the residual additions in place (the first residual only inside a forward
  pass of the backbone, where a block's input is the previous layer's own output).

With autograd enabled, while exporting or tracing, in training mode with stochastic depth,
and wherever the oneDNN kernel does not apply, the blocks run the plain forward of
:class:`DCCNeXtBlock` (or the plain convolution), with the same results: the outputs are
those of the plain model (``tests/test_models/test_inference_optimization.py``).
"""
import threading

import torch
import torch.nn as nn

from mmdccnext.ops.dcconv import is_exporting
from .dccnext import DCCNeXt, DCCNeXtBlock, _dwconv_cl


def _without_autograd():
    return not (torch.is_grad_enabled() or torch.jit.is_scripting() or is_exporting())


def _inplace_conv_add():
    """oneDNN's ``out += conv(x)``, or None where this build lacks it."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._convolution_pointwise_.binary
    except (AttributeError, RuntimeError):
        return None


class _Workspace(threading.local):
    """The buffers shared by the blocks of one forward pass of one backbone, per thread.

    ``buffers`` is a dict from the backbone's forward pre-hook to its forward hook, and None
    outside a pass (a block called on its own then allocates as usual)."""

    def __init__(self):
        self.buffers = None
        self.conv_add = _inplace_conv_add()
        self.conv_add_failed = False

    def __reduce__(self):  # copies (deepcopy, pickle) start with no buffers
        return _Workspace, ()

    def begin(self, *_):
        self.buffers = {}

    def end(self, *_):
        self.buffers = None

    def view(self, key, like, channels):
        """A ``(*like.shape[:-1], channels)`` tensor, a view of the reused buffer ``key``
        inside a pass, else a new one."""
        shape = (*like.shape[:-1], channels)
        if self.buffers is None:
            return like.new_empty(shape)
        rows = like.numel() // like.shape[-1]
        buf = self.buffers.get(key)
        if (buf is None or buf.numel() < rows * channels or buf.dtype != like.dtype
                or buf.device != like.device):
            buf = self.buffers[key] = like.new_empty(rows * channels)
        return buf[:rows * channels].view(shape)


class InferenceDCCNeXtBlock(DCCNeXtBlock):
    """A :class:`DCCNeXtBlock` whose forward without autograd reuses buffers and works in
    place (module docstring). Made by :func:`optimize_for_inference`, not directly."""

    @classmethod
    def from_block(cls, block, workspace):
        new = cls.__new__(cls)
        new.__dict__.update(block.__dict__)  # the same modules, parameters and settings
        new._workspace = workspace
        return new

    def forward(self, x):
        stochastic = self.training and not isinstance(self.drop_path, nn.Identity)
        if stochastic or not _without_autograd():
            return super().forward(x)
        in_pass = self._workspace.buffers is not None
        x = self._add(x, self._mix(self.norm1(x)), self.gamma1, inplace=in_pass)
        return self._add(x, self._ffn(self.norm2(x)), self.gamma2, inplace=True)

    @staticmethod
    def _add(x, y, gamma, inplace):
        if inplace:
            return x.add_(y) if gamma is None else x.addcmul_(y, gamma)
        return x + y if gamma is None else torch.addcmul(x, y, gamma)

    def _ffn(self, x):
        ffn, ws = self.ffn, self._workspace
        hidden = ws.view('ffn_hidden', x, ffn.fc1.out_features)
        torch.addmm(ffn.fc1.bias, x.reshape(-1, x.shape[-1]), ffn.fc1.weight.t(),
                    out=hidden.view(-1, hidden.shape[-1]))
        out = self._dwconv_into(hidden)
        if out is None:  # the plain convolution; its output is a new tensor of ours
            out = _dwconv_cl(ffn.dwconv, hidden)
        return ffn.fc2(torch._C._nn.gelu_(out))

    def _dwconv_into(self, x):
        """The depthwise convolution of ``x`` added by oneDNN to a zeroed reused buffer (the
        result of ``conv2d``), or None where that does not apply."""
        conv, ws = self.ffn.dwconv, self._workspace
        if (ws.conv_add is None or ws.conv_add_failed or x.device.type != 'cpu'
                or x.dtype != torch.float32 or conv.padding_mode != 'zeros'
                or not torch.backends.mkldnn.enabled):
            return None
        out = ws.view('ffn_dwconv', x, conv.out_channels).zero_()
        try:
            ws.conv_add(out.permute(0, 3, 1, 2), x.permute(0, 3, 1, 2), conv.weight, conv.bias,
                        list(conv.padding), list(conv.stride), list(conv.dilation),
                        conv.groups, 'add', 1.0, None, [], None)
        except RuntimeError:  # e.g. an unsupported configuration: the plain path from now
            ws.conv_add_failed = True
            return None
        return out


def optimize_for_inference(model):
    """Swap every block of every DCCNeXt inside ``model`` for an
    :class:`InferenceDCCNeXtBlock` (in place; idempotent). Returns ``model``.

    The parameters stay shared and the state dict keeps its keys, so checkpoints load and
    save as before; only forward passes without autograd change (module docstring).
    """
    backbones = [m for m in model.modules() if isinstance(m, DCCNeXt)]
    for backbone in backbones:
        if getattr(backbone, '_inference_workspace', None) is not None:
            continue
        workspace = _Workspace()
        for stage in backbone.stages:
            for j, block in enumerate(stage):
                stage[j] = InferenceDCCNeXtBlock.from_block(block, workspace)
        backbone._inference_workspace = workspace
        backbone.register_forward_pre_hook(workspace.begin)
        backbone.register_forward_hook(workspace.end)
    return model
