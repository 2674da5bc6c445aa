"""DCCNeXt backbone: `Dynamic Clustering Convolutional Neural Network` (AAAI-25).

Layout. Inside the network every feature map is kept channels-last, ``(B, H, W, C)``
(contiguous). LayerNorm and the Linear layers of the FFN act on the last dimension
directly; DCConv reads the same tensor reshaped to tokens ``(B, H*W, C)`` (a view); the
depthwise convolutions see it permuted to ``(B, C, H, W)``, which is a tensor in
``torch.channels_last`` memory format, so the convolution writes channels-last output
and permuting back is again a view. The only layout copies are the image's, made
channels_last for the stem, and the maps returned to a neck (contiguous ``(B, C, H, W)``, as
MMPretrain's ConvNeXt returns them: MMCV's CPU RoIAlign, for one, reads its input as
contiguous NCHW memory and silently returns wrong values for a channels_last map), unless
``out_channels_last`` hands them over as channels-last views (necks and heads without such
operators then run channels-last too, faster on the CPU).

Without autograd on the CPU the backbone takes a fast path by itself: the blocks reuse
buffers across one forward pass and work in place, with bit-identical results
(:mod:`mmdccnext.models.backbones.inference`, which also says when it applies).
"""
from numbers import Number
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule, ModuleList
from torch.nn.modules.batchnorm import _NormBase

from mmdccnext.ops import DCConv
from mmdccnext.ops.dcconv import is_exporting
from mmdccnext.ops.depthwise import DepthwiseConv2d
from mmdccnext.ops.linear import FRESH_PAGES_BYTES, OneDNNLinear
from mmdccnext.registry import MODELS
from . import compile_ops, training
from .inference import (PROFILER_RANGE, Workspace, fast_path_applies, release_workspaces,
                        workspace_of)
from .training import Scratch


def _layer_norm(channels, norm_cfg):
    norm_cfg = dict(norm_cfg or {})
    norm_type = norm_cfg.pop('type', 'LN')
    if norm_type not in ('LN', 'LayerNorm'):
        raise ValueError('DCCNeXt works on channels-last maps and supports only '
                         f"LayerNorm (norm_cfg type 'LN'), got {norm_type!r}")
    return nn.LayerNorm(channels, **norm_cfg)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _conv_cl(conv, x):
    """Apply an NCHW convolution to a channels-last ``(B, H, W, C)`` tensor.

    ``x.permute(0, 3, 1, 2)`` is a ``channels_last``-strided NCHW tensor, for which the
    convolution returns channels-last memory again, so both permutes are views. Under
    ``torch.compile`` on the CPU the same convolution runs as an op inductor leaves alone
    (:mod:`.compile_ops`).
    """
    if compile_ops.conv_applies(conv, x):
        return compile_ops.conv(conv, x)
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class ConvFFN(BaseModule):
    """Conv-FFN: Linear(C, rC) -> 3x3 depthwise conv -> GELU -> Linear(rC, C).

    Eq. (7)-(8) of the paper; works on channels-last ``(B, H, W, C)`` maps. Under
    ``torch.compile`` on the CPU it runs as one op with eager's kernels, which inductor
    leaves alone (:mod:`mmdccnext.models.backbones.compile_ops` says why); under eager
    autograd on the CPU as one autograd node that keeps fewer of the rC-wide maps
    (:mod:`mmdccnext.models.backbones.training`).
    """

    def __init__(self, channels, ffn_ratio=6., dw_kernel_size=3, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        hidden = int(round(channels * ffn_ratio))
        # oneDNN's matmul, fc1 up to an output size (mmdccnext.ops.linear says why)
        self.fc1 = OneDNNLinear(channels, hidden, max_output_bytes=FRESH_PAGES_BYTES)
        self.dwconv = DepthwiseConv2d(hidden, dw_kernel_size)
        self.act = nn.GELU()
        self.fc2 = OneDNNLinear(hidden, channels)

    def forward(self, x, workspace=None):
        """``x``: (B, H, W, C); ``workspace``: the backbone's inference fast path
        (:class:`~mmdccnext.models.backbones.inference.Workspace`), the buffers of a pass
        under autograd (:class:`~mmdccnext.models.backbones.training.Scratch`), or None."""
        if isinstance(workspace, Workspace):  # the hidden maps in reused buffers
            x = workspace.linear(self.fc1, x, 'ffn_hidden')
            return self.fc2(workspace.dwconv_gelu(self.dwconv, self.act, x, 'ffn_dwconv'))
        if compile_ops.conv_ffn_applies(self, x):  # compiling on the CPU: one op
            return compile_ops.conv_ffn(self, x)
        if is_exporting():
            return self._forward_nchw(x)
        if training.node_applies(self, x):  # autograd on the CPU: one node, fewer maps
            return training.conv_ffn(self, x, workspace)
        x = self.fc1(x)
        x = _conv_cl(self.dwconv, x)
        x = self.act(x)
        return self.fc2(x)

    def _forward_nchw(self, x):
        """The same arithmetic as exported graphs record it: on NCHW maps, the Linear layers
        as 1x1 convolutions. A runtime lays a graph's tensors out as its operators state them,
        so the channels-last form became a MatMul on (B*H*W, C) rows and a Transpose of the
        6C-wide map on each side of the depthwise convolution; this form runs as three
        convolutions. Measured in ONNX Runtime (DCCNeXt-B2 at 1280x800 b1, AMD EPYC Zen 4,
        1 thread, same process): 1.24x the images/s, 608 -> 287 MiB for inference
        (docs/en/deployment.md)."""
        x = x.permute(0, 3, 1, 2)
        x = F.conv2d(x, self.fc1.weight[:, :, None, None], self.fc1.bias)
        x = self.act(self.dwconv(x))
        x = F.conv2d(x, self.fc2.weight[:, :, None, None], self.fc2.bias)
        return x.permute(0, 2, 3, 1)


class DCCNeXtBlock(BaseModule):
    """One DCCNeXt block on channels-last maps ``(B, H, W, C)``::

        x = x + drop_path(gamma1 * mixer(norm1(x)))
        x = x + drop_path(gamma2 * ffn(norm2(x)))

    Args:
        channels (int): Feature channels C.
        kernel_size (int | None): ``None`` for the 7x7 depthwise-conv token mixer
            (stages 1-2); an int K for a DCConv mixer with clusters of K patches.
        subvector_stride (int): DCConv sub-vector sampling interval d.
        dcconv_impl (str): ``impl`` argument of :class:`mmdccnext.ops.DCConv`.
        dw_kernel_size (int): Kernel of the depthwise-conv mixer. Defaults to 7.
        ffn_ratio (float): Hidden expansion r of the Conv-FFN. Defaults to 6.
        norm_cfg (dict): LayerNorm config. Defaults to ``dict(type='LN', eps=1e-6)``.
        drop_path_rate (float): Stochastic depth rate of this block.
        layer_scale_init_value (float): Initial layer-scale value; 0 disables layer scale.
        with_cp (bool): Gradient checkpointing of the block.
    """

    def __init__(self,
                 channels,
                 kernel_size=None,
                 subvector_stride=8,
                 dcconv_impl='auto',
                 dw_kernel_size=7,
                 ffn_ratio=6.,
                 norm_cfg=dict(type='LN', eps=1e-6),
                 drop_path_rate=0.,
                 layer_scale_init_value=1e-6,
                 with_cp=False,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.with_cp = with_cp
        self.use_dcconv = kernel_size is not None
        self.norm1 = _layer_norm(channels, norm_cfg)
        if self.use_dcconv:
            self.mixer = DCConv(
                channels,
                kernel_size,
                subvector_stride=subvector_stride,
                bias=True,
                impl=dcconv_impl)
        else:  # an nn.Conv2d whose weight gradient the extension computes (7x7)
            self.mixer = DepthwiseConv2d(channels, dw_kernel_size)
        self.norm2 = _layer_norm(channels, norm_cfg)
        self.ffn = ConvFFN(channels, ffn_ratio)
        if layer_scale_init_value > 0:
            self.gamma1 = nn.Parameter(torch.full((channels, ), float(layer_scale_init_value)))
            self.gamma2 = nn.Parameter(torch.full((channels, ), float(layer_scale_init_value)))
        else:
            self.gamma1 = self.gamma2 = None
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0. else nn.Identity()

    def _mix(self, x):
        if self.use_dcconv:
            B, H, W, C = x.shape
            return self.mixer(x.reshape(B, H * W, C)).reshape(B, H, W, C)
        return _conv_cl(self.mixer, x)

    def _residual(self, x, y, gamma):
        if isinstance(self.drop_path, nn.Identity) or not self.training:
            # no stochastic depth: one fused pass x + y * gamma
            return x + y if gamma is None else torch.addcmul(x, y, gamma)
        if gamma is not None:
            y = y * gamma
        return x + self.drop_path(y)

    def _forward(self, x, scratch=None):
        x = self._residual(x, self._mix(self.norm1(x)), self.gamma1)
        return self._residual(x, self.ffn(self.norm2(x), scratch), self.gamma2)

    def forward(self, x, workspace=None):
        """``x``: (B, H, W, C). With a ``workspace`` (the backbone's inference fast path) the
        residuals are added in place: ``x`` must be the previous layer's output. A
        :class:`~mmdccnext.models.backbones.training.Scratch` goes to the Conv-FFN."""
        if isinstance(workspace, Workspace):
            x = workspace.residual_(x, self._mix(self.norm1(x)), self.gamma1)
            return workspace.residual_(x, self.ffn(self.norm2(x), workspace), self.gamma2)
        if self.with_cp and self.training and torch.is_grad_enabled():
            return cp.checkpoint(self._forward, x, workspace, use_reentrant=False)
        return self._forward(x, workspace)


class Stem(BaseModule):
    """7x7 stride-4 convolution (padding 2) + LayerNorm: NCHW image -> (B, H, W, C)."""

    def __init__(self,
                 in_channels,
                 channels,
                 norm_cfg,
                 kernel_size=7,
                 stride=4,
                 padding=2,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.conv = nn.Conv2d(in_channels, channels, kernel_size, stride=stride, padding=padding)
        self.norm = _layer_norm(channels, norm_cfg)

    def forward(self, x):
        # The image made channels-last makes the convolution write channels-last output,
        # which the LayerNorm reads as is: cheaper than the LayerNorm's copy of an NCHW
        # output (the image has 3 channels, the output 64), with identical results.
        return self.norm(_conv_cl(self.conv, x.permute(0, 2, 3, 1).contiguous()))


class Downsample(BaseModule):
    """LayerNorm + 3x3 stride-2 convolution (padding 1), channels-last in and out."""

    def __init__(self, in_channels, out_channels, norm_cfg, kernel_size=3, stride=2, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.norm = _layer_norm(in_channels, norm_cfg)
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)

    def forward(self, x):
        return _conv_cl(self.conv, self.norm(x))


@MODELS.register_module()
class DCCNeXt(BaseModule):
    """DCCNeXt backbone (`Dynamic Clustering Convolutional Neural Network`, AAAI-25).

    A 4-stage pyramid (strides 4, 8, 16, 32). Stages 1-2 mix tokens with a 7x7
    depthwise convolution, stages 3-4 with dynamic clustering convolution (DCConv,
    clusters of 12 and 18 patches, sub-vector interval 8). Every block is
    LayerNorm -> mixer -> residual, LayerNorm -> Conv-FFN -> residual, with layer scale.

    Args:
        arch (str | dict): ``'b0'`` ... ``'b4'`` or a dict with ``channels`` and
            ``depths`` (4 entries each); the dict may also set ``kernel_sizes`` and
            ``ffn_ratio``, which then override the arguments of the same name.
        in_channels (int): Input image channels. Defaults to 3.
        out_indices (int | Sequence[int]): Stages whose outputs are returned;
            negative indices count from the end. Defaults to -1.
        frozen_stages (int): Freeze the stem/downsampling layer and the blocks of the
            first ``frozen_stages`` stages (no gradients, kept in eval mode).
        norm_eval (bool): Keep batch-statistics norm layers in eval mode while
            training. DCCNeXt itself has only LayerNorms (no running statistics), so
            this changes nothing for the default model; kept for config compatibility.
        drop_path_rate (float): Stochastic depth rate, rising linearly over the blocks.
        layer_scale_init_value (float): Initial layer scale; 0 disables it.
        with_cp (bool): Gradient checkpointing of every block (saves memory).
        gap_before_final_norm (bool): ``True`` (classification): each output is the
            global average pool of the stage, then its LayerNorm, shape ``(B, C)``.
            ``False`` (detection/segmentation): each output is the normed map
            ``(B, C, H, W)``.
        out_channels_last (bool): Hand the maps ``(B, C, H, W)`` to the neck in
            ``torch.channels_last`` memory (a view of the backbone's own layout) instead of
            contiguous NCHW memory (a copy each). The neck's and heads' convolutions then run
            channels-last too, which oneDNN computes faster on the CPU (measured in
            docs/en/benchmarks.md). Only for heads whose operators honour memory formats:
            MMCV's RoIAlign reads its input as contiguous NCHW memory and silently returns
            wrong values for channels-last maps, so keep ``False`` (the default) for
            two-stage detectors such as Mask R-CNN. Our RetinaNet and Semantic FPN configs
            set it.
        kernel_sizes (Sequence[int | None]): Per stage, ``None`` for the 7x7 depthwise
            conv mixer or the DCConv cluster size K. Defaults to ``(None, None, 12, 18)``.
        subvector_stride (int): DCConv sub-vector sampling interval d. Defaults to 8.
        dcconv_impl (str): DCConv implementation (``'auto'``, ``'pytorch'``, ...).
        ffn_ratio (float | Sequence[float]): Conv-FFN expansion ratio. Defaults to 6.
        dw_kernel_size (int): Kernel of the depthwise-conv mixer. Defaults to 7.
        norm_cfg (dict): LayerNorm config. Defaults to ``dict(type='LN', eps=1e-6)``.
        init_cfg (dict | list[dict], optional): Initialisation; e.g.
            ``dict(type='Pretrained', checkpoint=..., prefix='backbone.')`` to load the
            backbone of a classifier checkpoint.
    """
    arch_settings = {
        'b0': dict(channels=[32, 64, 160, 256], depths=[3, 3, 5, 2]),
        'b1': dict(channels=[48, 96, 240, 384], depths=[2, 2, 6, 2]),
        'b2': dict(channels=[64, 128, 320, 512], depths=[3, 3, 9, 3]),
        'b3': dict(channels=[96, 192, 384, 576], depths=[3, 12, 18, 3]),
        'b4': dict(channels=[96, 192, 384, 768], depths=[5, 12, 20, 5]),
    }

    def __init__(self,
                 arch='b2',
                 in_channels=3,
                 out_indices=-1,
                 frozen_stages=0,
                 norm_eval=False,
                 drop_path_rate=0.,
                 layer_scale_init_value=1e-6,
                 with_cp=False,
                 gap_before_final_norm=True,
                 out_channels_last=False,
                 kernel_sizes=(None, None, 12, 18),
                 subvector_stride=8,
                 dcconv_impl='auto',
                 ffn_ratio=6.,
                 dw_kernel_size=7,
                 norm_cfg=dict(type='LN', eps=1e-6),
                 init_cfg=[
                     dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=.02, bias=0.),
                     dict(type='Constant', layer=['LayerNorm'], val=1., bias=0.),
                 ]):
        super().__init__(init_cfg=init_cfg)

        if isinstance(arch, str):
            arch = arch.lower()
            if arch not in self.arch_settings:
                raise KeyError(f'Unknown DCCNeXt arch {arch!r}; choose from '
                               f'{sorted(self.arch_settings)} or pass a dict.')
            arch = self.arch_settings[arch]
        elif isinstance(arch, dict):
            missing = {'channels', 'depths'} - set(arch)
            if missing:
                raise KeyError(f'The arch dict needs "channels" and "depths"; '
                               f'missing {sorted(missing)}.')
            kernel_sizes = arch.get('kernel_sizes', kernel_sizes)
            ffn_ratio = arch.get('ffn_ratio', ffn_ratio)
        else:
            raise TypeError(f'arch must be a str or dict, got {type(arch)}')

        self.channels = list(arch['channels'])
        self.depths = list(arch['depths'])
        self.num_stages = len(self.depths)
        if len(self.channels) != self.num_stages:
            raise ValueError(f'channels {self.channels} and depths {self.depths} '
                             'must have the same length.')
        self.kernel_sizes = list(kernel_sizes)
        if len(self.kernel_sizes) != self.num_stages:
            raise ValueError(f'kernel_sizes {self.kernel_sizes} needs one entry per stage.')
        if isinstance(ffn_ratio, Number):
            ffn_ratio = [ffn_ratio] * self.num_stages
        self.ffn_ratios = list(ffn_ratio)
        if len(self.ffn_ratios) != self.num_stages:
            raise ValueError(f'ffn_ratio {self.ffn_ratios} needs one entry per stage.')

        if not _is_int(in_channels) or in_channels < 1:
            raise ValueError(f'in_channels must be an int >= 1, got {in_channels!r}')
        self.in_channels = in_channels
        if _is_int(out_indices):
            out_indices = [out_indices]
        # a str is a Sequence too: "0" would be read as the index list ["0"]
        if (isinstance(out_indices, str) or not isinstance(out_indices, Sequence)
                or not all(_is_int(i) for i in out_indices)):
            raise TypeError(f'out_indices must be an int or a sequence of ints, got '
                            f'{out_indices!r}')
        out_indices = list(out_indices)
        for i, index in enumerate(out_indices):
            if index < 0:
                out_indices[i] = index + self.num_stages
            if not 0 <= out_indices[i] < self.num_stages:
                raise IndexError(f'Invalid out_indices {index} for {self.num_stages} stages.')
        self.out_indices = out_indices
        if not _is_int(frozen_stages) or not 0 <= frozen_stages <= self.num_stages:
            raise ValueError(f'frozen_stages must be an int in [0, {self.num_stages}], '
                             f'got {frozen_stages!r}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.gap_before_final_norm = gap_before_final_norm
        self.out_channels_last = bool(out_channels_last)
        self.subvector_stride = subvector_stride
        self.drop_path_rate = drop_path_rate

        dpr = torch.linspace(0, drop_path_rate, sum(self.depths)).tolist()

        self.downsample_layers = ModuleList()
        self.stages = ModuleList()
        block_idx = 0
        for i in range(self.num_stages):
            if i == 0:
                self.downsample_layers.append(Stem(in_channels, self.channels[0], norm_cfg))
            else:
                self.downsample_layers.append(
                    Downsample(self.channels[i - 1], self.channels[i], norm_cfg))
            self.stages.append(
                ModuleList([
                    DCCNeXtBlock(
                        self.channels[i],
                        kernel_size=self.kernel_sizes[i],
                        subvector_stride=subvector_stride,
                        dcconv_impl=dcconv_impl,
                        dw_kernel_size=dw_kernel_size,
                        ffn_ratio=self.ffn_ratios[i],
                        norm_cfg=norm_cfg,
                        drop_path_rate=dpr[block_idx + j],
                        layer_scale_init_value=layer_scale_init_value,
                        with_cp=with_cp) for j in range(self.depths[i])
                ]))
            block_idx += self.depths[i]
            if i in self.out_indices:
                self.add_module(f'norm{i}', _layer_norm(self.channels[i], norm_cfg))

        self._freeze_stages()

    def forward(self, x):
        """``x``: images (B, in_channels, H, W)."""
        # int() only for the message: on the normal path the (possibly symbolic, when
        # exporting) batch size is not turned into a constant
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'DCCNeXt expects images of shape (B, {self.in_channels}, H, W), '
                             f'got a tensor of shape {tuple(int(n) for n in x.shape)}')
        if x.shape[0] == 0:
            raise ValueError(f'DCCNeXt got an empty batch (B = 0): images of shape '
                             f'{tuple(int(n) for n in x.shape)}')
        if fast_path_applies(self, x):
            if torch.compiler.is_compiling():  # inductor cannot share buffers across blocks
                return compile_ops.fast_path(self, x)
            with torch.profiler.record_function(PROFILER_RANGE):
                return self._forward(x, workspace_of(self))
        if not torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self._forward(x, None)
        scratch = Scratch()  # the Conv-FFN nodes' shared buffers (eager autograd)
        outs = self._forward(x, scratch)
        scratch.release('forward')  # the backward pass allocates its own
        return outs

    def _empty_outputs(self, x):
        """Uninitialised tensors shaped and laid out as :meth:`_forward`'s outputs for the
        images ``x`` (what the compiled fast path declares)."""
        B, _, H, W = x.shape
        layout = torch.channels_last if self.out_channels_last else torch.contiguous_format
        outs = []
        for i, layer in enumerate(self.downsample_layers):
            conv = layer.conv
            H, W = ((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in zip(
                (H, W), conv.padding, conv.dilation, conv.kernel_size, conv.stride))
            if i in self.out_indices:
                outs.append(x.new_empty((B, self.channels[i])) if self.gap_before_final_norm
                            else x.new_empty((B, self.channels[i], H, W)).contiguous(
                                memory_format=layout))
        return outs

    def _forward(self, x, workspace):
        outs = []
        for i in range(self.num_stages):
            x = self.downsample_layers[i](x)
            for block in self.stages[i]:
                x = block(x, workspace)
            if i in self.out_indices:
                norm = getattr(self, f'norm{i}')
                if self.gap_before_final_norm:
                    outs.append(norm(x.mean((1, 2))))
                else:  # (B, C, H, W) as a view of the channels-last map, or copied to NCHW
                    out = norm(x).permute(0, 3, 1, 2)
                    outs.append(out if self.out_channels_last else out.contiguous())
        return tuple(outs)

    def _freeze_stages(self):
        for i in range(self.frozen_stages):
            for module in (self.downsample_layers[i], self.stages[i]):
                module.eval()
                for param in module.parameters():
                    param.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        if mode:  # the inference fast path's buffers are not kept for training
            release_workspaces(self)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _NormBase):
                    m.eval()
        return self

    def get_layer_depth(self, param_name, prefix='', decay_type='layer_wise'):
        """Depth of a parameter for layer-wise learning-rate decay.

        Compatible with MMPretrain's ``LearningRateDecayOptimWrapperConstructor`` (and
        ``ImageClassifier.get_layer_depth``) and with
        :class:`mmdccnext.engine.LearningRateDecayOptimizerConstructor`.

        ``decay_type='layer_wise'``: every block is a layer. The stem has depth 0,
        block ``j`` (counted over all stages) has depth ``j + 1``, a downsampling layer
        takes the depth of the first block after it, and everything else (output
        norms, neck, heads) has the last depth ``sum(depths) + 1``.
        ``decay_type='stage_wise'``: stem 0, downsampling layer and blocks of stage
        ``i`` get ``i + 1``, everything else ``num_stages + 1``.

        Args:
            param_name (str): Parameter name, e.g. ``'backbone.stages.2.3.ffn.fc1.weight'``.
            prefix (str): Prefix of the backbone's parameters in ``param_name``.
            decay_type (str): ``'layer_wise'`` or ``'stage_wise'``.

        Returns:
            tuple[int, int]: ``(layer_depth, num_layers)``; the last depth is
            ``num_layers - 1``.
        """
        if decay_type == 'layer_wise':
            num_layers = sum(self.depths) + 2
        elif decay_type == 'stage_wise':
            num_layers = self.num_stages + 2
        else:
            raise ValueError(f"decay_type must be 'layer_wise' or 'stage_wise', "
                             f'got {decay_type!r}')
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        parts = param_name[len(prefix):].split('.')
        if parts[0] not in ('downsample_layers', 'stages'):
            return num_layers - 1, num_layers
        stage = int(parts[1])
        if decay_type == 'stage_wise':
            return (0 if parts[0] == 'downsample_layers' and stage == 0 else stage + 1, num_layers)
        first_block = sum(self.depths[:stage])
        if parts[0] == 'downsample_layers':
            depth = 0 if stage == 0 else first_block + 1
        else:
            depth = first_block + int(parts[2]) + 1
        return depth, num_layers
