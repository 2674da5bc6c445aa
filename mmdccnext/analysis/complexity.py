"""Parameters and FLOPs of DCCNeXt models, with DCConv counted explicitly.

Everything except DCConv is counted by :class:`mmengine.analysis.FlopAnalyzer` (one fused
multiply-add = one FLOP; convolutions, Linear layers, LayerNorm at 5 per element, adaptive
pooling; element-wise additions, GELU and layer scale are not counted). DCConv cannot be
traced faithfully (its clustering is data-dependent), so while counting, every
:class:`mmdccnext.ops.DCConv` runs a stand-in that keeps the shapes and reports, per
image with N patches, C channels, cluster size K and sub-vector interval d
(``D = ceil(C / d)`` sub-vector channels):

``'ours'`` (default)
    clustering ``N * N * D`` (one multiply-add per patch pair and sub-vector channel:
    the squared difference accumulated) + aggregation ``N * min(K, N) * C``.
``'paper'``
    clustering ``2 * N * N * D`` + aggregation ``N * min(K, N) * C``; this is how the
    paper's Table 6 appears to count the distances (docs/en/configs.md, "Counting FLOPs").
"""
from collections import Counter
from contextlib import contextmanager

import torch

from mmdccnext.apis.inference import init_model

CONVENTIONS = ('ours', 'paper')
_PROXY_OP = 'prim::PythonOp._DCConvFlopProxy'


class _DCConvFlopProxy(torch.autograd.Function):
    """Shape-preserving stand-in for DCConv; its trace node carries the shapes to count."""

    @staticmethod
    def forward(ctx, tokens, subvectors, weight):
        return tokens.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError('_DCConvFlopProxy is for FLOP counting only')


def _counts(batch, num_patches, channels, sub_channels, kernel_size, convention):
    if convention not in CONVENTIONS:
        raise ValueError(f'convention must be one of {CONVENTIONS}, got {convention!r}')
    factor = 2 if convention == 'paper' else 1
    return Counter(
        dcconv_cluster=factor * batch * num_patches * num_patches * sub_channels,
        dcconv_aggregate=batch * num_patches * min(kernel_size, num_patches) * channels)


def dcconv_flops(batch, num_patches, channels, kernel_size, subvector_stride=8, convention='ours'):
    """DCConv FLOPs (multiply-adds) as a Counter with keys ``dcconv_cluster`` and
    ``dcconv_aggregate``; see the module docstring for the conventions."""
    sub_channels = -(-channels // subvector_stride)
    return _counts(batch, num_patches, channels, sub_channels, kernel_size, convention)


def dcconv_flop_handle(convention='ours'):
    """A :class:`mmengine.analysis.FlopAnalyzer` op handle for the DCConv stand-in."""
    from mmengine.analysis.jit_handles import get_shape

    def handle(inputs, outputs):
        B, N, C = get_shape(inputs[0])
        D = get_shape(inputs[1])[-1]  # the sub-vectors, already sliced
        K = get_shape(inputs[2])[0]
        return _counts(B, N, C, D, K, convention)

    return handle


def _proxy_forward(module):
    stride = module.subvector_stride

    def forward(x, idx=None):
        tokens = x if x.dim() == 3 else x.flatten(2).transpose(1, 2)
        out = _DCConvFlopProxy.apply(tokens, tokens[..., ::stride], module.weight)
        if x.dim() == 4:
            out = out.transpose(1, 2).reshape(x.shape)
        return out

    return forward


@contextmanager
def dcconv_flop_proxies(model):
    """Within the context, every DCConv of ``model`` runs the FLOP-counting stand-in."""
    from mmdccnext.ops import DCConv
    patched = [m for m in model.modules() if isinstance(m, DCConv)]
    for m in patched:
        m.forward = _proxy_forward(m)
    try:
        yield patched
    finally:
        for m in patched:
            del m.forward


def get_complexity(model, input_shape=(3, 224, 224), dcconv_convention='ours', batch_size=1):
    """Parameters and FLOPs of ``model`` for one input of ``input_shape`` (C, H, W).

    Args:
        model (nn.Module): A DCCNeXt backbone or a model containing one, whose
            ``forward(inputs)`` takes an image batch (classifiers, single-stage
            detectors and encoder-decoder segmentors do in ``'tensor'`` mode), or an
            MMDetection two-stage detector (traced through ``_forward`` with dummy
            image metas; its RoI heads count the proposals the RPN keeps at test time).
        input_shape (tuple): ``(C, H, W)``.
        dcconv_convention (str): ``'ours'`` or ``'paper'``.
        batch_size (int): Images in the traced batch (FLOPs are for the whole batch).

    Returns:
        dict: ``params`` (int), ``flops`` (int, total multiply-adds), ``dcconv_cluster``
        and ``dcconv_aggregate`` (the DCConv part of ``flops``), ``by_operator``
        (Counter), ``unsupported_ops`` (Counter), and ``analyzer`` (the FlopAnalyzer).
    """
    from mmengine.analysis import FlopAnalyzer

    if dcconv_convention not in CONVENTIONS:
        raise ValueError(
            f'dcconv_convention must be one of {CONVENTIONS}, got {dcconv_convention!r}')
    params = sum(p.numel() for p in model.parameters())
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device('cpu')
    inputs = torch.randn((batch_size, *input_shape), device=device)
    traced = _TwoStageDetector(model, inputs) if hasattr(model, 'roi_head') else model
    try:
        with dcconv_flop_proxies(model), torch.no_grad():
            analyzer = FlopAnalyzer(traced, (inputs, ))
            analyzer.set_op_handle(**{_PROXY_OP: dcconv_flop_handle(dcconv_convention)})
            analyzer.unsupported_ops_warnings(False)
            analyzer.uncalled_modules_warnings(False)
            analyzer.tracer_warnings('none')
            flops = analyzer.total()
            by_operator = analyzer.by_operator()
            unsupported = analyzer.unsupported_ops()
    finally:
        model.train(was_training)
    return dict(
        params=params,
        flops=flops,
        dcconv_cluster=by_operator.get('dcconv_cluster', 0),
        dcconv_aggregate=by_operator.get('dcconv_aggregate', 0),
        by_operator=by_operator,
        unsupported_ops=unsupported,
        analyzer=analyzer)


class _TwoStageDetector(torch.nn.Module):
    """Traceable wrapper of an MMDetection two-stage detector (e.g. Mask R-CNN), whose
    ``'tensor'`` mode needs image meta information: ``_forward`` with dummy samples."""

    def __init__(self, detector, inputs):
        super().__init__()
        from mmdet.structures import DetDataSample
        self.detector = detector
        h, w = inputs.shape[-2:]
        meta = dict(
            img_shape=(h, w),
            ori_shape=(h, w),
            pad_shape=(h, w),
            batch_input_shape=(h, w),
            scale_factor=(1., 1.))
        self.samples = [DetDataSample(metainfo=meta) for _ in range(inputs.shape[0])]

    def forward(self, inputs):
        return self.detector._forward(inputs, self.samples)


def build_model_from_cfg(cfg, backbone_only=False):
    """The model of ``cfg`` (or only its backbone) for counting: built by
    :func:`mmdccnext.apis.init_model` without weights and with PyTorch's default
    initialisation (counting needs neither, and a two-stage detector's RoI-head FLOPs, which
    depend on the proposals the random model keeps, stay those of the metafiles)."""
    model = init_model(cfg, init_weights=False)
    return model.backbone if backbone_only else model


def format_count(n, unit=''):
    """``26730000 -> '26.73 M'``."""
    for scale, suffix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'K')):
        if abs(n) >= scale:
            return f'{n / scale:.2f} {suffix}{unit}'
    return f'{n}{unit}'


__all__ = [
    'CONVENTIONS', 'build_model_from_cfg', 'dcconv_flop_handle', 'dcconv_flop_proxies',
    'dcconv_flops', 'format_count', 'get_complexity'
]
