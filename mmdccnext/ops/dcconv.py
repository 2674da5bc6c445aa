"""Dynamic Clustering Convolution (DCConv, DCCNeXt, AAAI-25): the public functions.

For the tokens ``x`` (B, N, C) of an image, :func:`cluster` gives the ordered cluster ``idx``
(B, N, K) of every patch and :func:`aggregate` the per-channel (depthwise) weighted sum over
it; :func:`dcconv` does both and :class:`DCConv` is the layer::

    y[b, n, c] = sum_k W[k, c] * x[b, idx[b, n, k], c] + bias[c]

Clustering contract (every path meets it; ``tests/test_ops`` holds them to it):

* Sub-vectors ``s = x[..., ::d]`` (channels ``0, d, 2d, ...``; ``ceil(C / d)`` of them).
* Distance between patches ``i`` and ``j`` of the same image: the squared L2 distance computed
  by *direct differences*, summed over the sub-vector channels in increasing order::

      acc = 0;  for t in 0 .. D-1:  acc = acc + (s[i, t] - s[j, t]) * (s[i, t] - s[j, t])

  with every operation rounded separately (no fused multiply-add), in float32 (float64 for
  float64 inputs; float16 / bfloat16 inputs are upcast to float32). This is the *canonical*
  distance. Unlike the ``|a|^2 + |b|^2 - 2ab`` expansion it has no cancellation (distances
  are >= 0, the distance of a patch to an identical one is exactly 0), and because the
  order of operations is fixed, every path sees bit-identical distances and so returns
  identical indices, near-ties included.
* A NaN distance (NaN or opposite infinities in the inputs) counts as ``+inf``.
* Cluster of patch ``n``: ``n`` itself first (always, even if another patch is at distance
  0), then the ``K - 1`` other patches in ascending ``(distance, index)`` order, i.e. ties go
  to the lower patch index. Indices are always in ``[0, N)``.
* ``N < K``: the cluster holds all ``N`` patches, the index has last dimension ``min(K, N)``.
* No gradient flows through the choice (clustering runs under ``torch.no_grad``).


Aggregation contract: the sum over ``k`` runs in increasing ``k``, starting from the bias, one
rounding per multiply and per add, in float32 (float64 for float64 inputs); float16 /
bfloat16 inputs are computed in float32 and the output is cast back. When the cluster is
smaller than the kernel (N < K) only the taps ``W[:N]`` are used and the gradient of
``W[N:]`` is zero. No path materialises the (B, N, K, C) gathered tensor in training, and
each saves only ``x``, ``idx`` and ``W`` for the backward.

Paths (``impl``), one leaf module each, none knowing the others: ``'cpu'`` (fused C++
kernels, :mod:`.cpu_impl`), ``'triton'`` (CUDA, :mod:`.triton_impl`), ``'pytorch'`` (any
device, :mod:`.pytorch_impl`) and ``'export'`` (standard ops for ONNX export and tracing,
:mod:`.export`). The public functions below validate their arguments once
(:mod:`.common`), choose the path once (:func:`resolve_impl`; Triton only once its
self-check, :mod:`.selfcheck`, has passed on the device) and run it through the
``torch.library`` ops of :mod:`.library` (the export path excepted: its standard ops are what
an exporter must record), so ``torch.compile`` sees one node per op.
"""
import functools
import logging
import os
import warnings

import torch
from mmengine.logging import print_log
from torch import nn

from mmdccnext.registry import MODELS
from . import cpu_impl, export, selfcheck
from .common import (IMPLS, check_aggregate_args, check_impl, check_int, check_tokens,
                     compute_dtype, subvectors)
from .library import aggregate_op, cluster_op, leaf

#: Overrides ``impl='auto'`` when set (one of :data:`.common.IMPLS`).
ENV_IMPL = 'MMDCCNEXT_DCCONV_IMPL'
#: ISAs of the C++ kernels that ``impl='auto'`` runs: all of them. Measured on an AMD EPYC
#: (AVX2 + FMA, no AVX-512; the generic kernels forced), 1 thread, B = 1, C = 320, K = 12,
#: ``tools/analysis/benchmark_dcconv.py --threads 1 --isa all-supported``: the generic
#: (baseline SSE2) kernels ran ``dcconv`` 3.7x (forward) / 4.9x (forward + backward) faster
#: than the PyTorch path at N = 4000, 2.9x / 3.4x at N = 16000 (AVX2: 6.5x / 8.6x at 4000),
#: so no ISA needs the PyTorch path instead. This tuple is where an ISA measured slower than
#: the PyTorch path would be left out (tests/test_ops/test_cpu_isa.py holds the rule).
AUTO_CPU_ISAS = ('avx512', 'avx2', 'generic')
#: Device types on which ``impl='auto'`` runs Triton once its self-check passed. The seam of
#: the self-check's tests, which add ``'cpu'`` under ``TRITON_INTERPRET=1`` to treat CPU
#: tensors as the Triton device.
AUTO_TRITON_DEVICES = ('cuda', )


class SelfCheckWarning(UserWarning):
    """The Triton path failed its self-check on a device: ``impl='auto'`` runs PyTorch there."""


_logged = set()


def is_exporting():
    """Whether the model is being exported or traced (ONNX export, ``torch.export``,
    ``torch.jit.trace``): then only the standard-op path can be recorded."""
    return (torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()
            or torch.jit.is_tracing())


def is_recording():
    """Whether a graph is being recorded: compiling, exporting, tracing or scripting. Then
    the modules with a kernel of their own (the depthwise convolutions, the oneDNN linear
    layer) run their standard forward, which the recorder knows."""
    return torch.compiler.is_compiling() or is_exporting() or torch.jit.is_scripting()


@functools.lru_cache(maxsize=None)
def _triton_status(device_type):
    """(usable, why not) for the Triton leaf on tensors of ``device_type``; asked once per
    process (TRITON_INTERPRET is read when Triton defines its kernels, so it is fixed too)."""
    try:
        triton_impl = leaf('triton')
    except Exception as exc:  # triton missing or broken: the PyTorch path still works
        return False, f'the Triton leaf cannot be imported ({type(exc).__name__}: {exc})'
    ok, why = triton_impl.available()
    if ok and device_type != 'cuda' and os.environ.get('TRITON_INTERPRET') != '1':
        return False, (f'Triton runs CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), '
                       f'got a {device_type} tensor')
    return ok, why


def available_impls(device='cpu'):
    """The paths that can run DCConv on ``device`` (str or ``torch.device``), best first,
    among ``'cpu'``, ``'triton'`` and ``'pytorch'`` (``'export'`` runs anywhere, for export)."""
    device_type = torch.device(device).type
    impls = []
    if device_type == 'cpu' and cpu_impl.ext_available():
        impls.append('cpu')
    if device_type in ('cuda', 'cpu') and _triton_status(device_type)[0]:
        impls.append('triton')
    return tuple(impls) + ('pytorch', )


def _log_once(key, message, level=logging.INFO):
    if key not in _logged:
        _logged.add(key)
        print_log(message, logger='current', level=level)


def _triton_or_pytorch(device_type, device_index, dtypes, explicit):
    """``'triton'`` when the Triton leaf runs on the device and passed its self-check in each
    of ``dtypes`` (compute dtypes, by name); else ``'pytorch'`` with one warning (``'auto'``),
    or a ``RuntimeError`` saying why (``explicit``, i.e. ``impl='triton'``)."""
    ok, why = _triton_status(device_type)
    if not ok:
        if explicit:
            raise RuntimeError(f"impl='triton' cannot run: {why}; use impl='pytorch' or 'auto'.")
        _log_once(('path', device_type),
                  f'mmdccnext: DCConv on {device_type} runs the pytorch path ({why})')
        return 'pytorch'
    device = selfcheck.device_key(torch.device(device_type, device_index))
    if not selfcheck.enabled():
        _log_once('selfcheck off', f'mmdccnext: {selfcheck.ENV_SELFCHECK}=0: the Triton path of '
                  'DCConv runs without its self-check', level=logging.WARNING)
        return 'triton'
    for dtype in dtypes:
        result = selfcheck.check(device, getattr(torch, dtype))
        if not result.passed:
            failed = (f"DCConv's Triton path failed its self-check on {device} ({dtype}): "
                      f'{result.detail}.')
            if explicit:
                raise RuntimeError(f"impl='triton' gives wrong results or fails here. {failed} "
                                   f'{selfcheck.HOW_TO_REPORT}')
            if (device, dtype) not in _logged:
                _logged.add((device, dtype))
                warnings.warn(
                    f"mmdccnext: {failed} impl='auto' runs the PyTorch path for {dtype} "
                    f'inputs on {device} for the rest of this process (the same results, '
                    f'slower). {selfcheck.HOW_TO_REPORT}', SelfCheckWarning, stacklevel=2)
            return 'pytorch'
    if not explicit:
        for dtype in dtypes:
            result = selfcheck.check(device, getattr(torch, dtype))
            _log_once((device, dtype), f'mmdccnext: DCConv on {device} ({dtype}) runs the '
                      f'Triton path; self-check passed in {result.seconds:.2f} s '
                      f'({result.detail})')
    return 'triton'


@torch.compiler.assume_constant_result
def _resolve(impl, device_type, device_index=None, dtypes=('float32', )):
    # Depends only on the arguments, the environment, the extension and the self-check
    # (computed once per device and dtype), never on tensor data: torch.compile runs it once
    # while tracing and keeps its answer as a constant.
    if impl == 'auto':
        env = os.environ.get(ENV_IMPL, '').strip().lower()
        if env:
            if env not in IMPLS:
                raise ValueError(
                    f'environment variable {ENV_IMPL} must be one of {IMPLS}, got {env!r}')
            impl = env
    if impl in ('pytorch', 'export'):
        return impl
    if impl == 'cpu':
        why = cpu_impl.unavailable_reason(device_type)
        if why:
            raise RuntimeError(why)
        return 'cpu'
    if impl == 'triton':
        return _triton_or_pytorch(device_type, device_index, dtypes, explicit=True)
    # auto
    if device_type in AUTO_TRITON_DEVICES:
        return _triton_or_pytorch(device_type, device_index, dtypes, explicit=False)
    if device_type == 'cpu':
        if not cpu_impl.ext_available():
            cpu_impl.warn_unavailable_once()
            return 'pytorch'
        return 'cpu' if cpu_impl.cpu_isa() in AUTO_CPU_ISAS else 'pytorch'
    return 'pytorch'


def resolve_impl(impl, tensor, weight=None):
    """Map ``impl`` ('auto' | 'cpu' | 'triton' | 'pytorch' | 'export') to the path that runs
    for ``tensor`` (and ``weight``, whose dtype joins the compute dtype).

    While exporting or tracing (:func:`is_exporting`) every ``impl`` runs ``'export'``.
    ``'auto'`` is first replaced by the environment variable ``MMDCCNEXT_DCCONV_IMPL`` when
    set, then means: on CPU tensors the fused C++ kernels when the extension imports and runs
    one of :data:`AUTO_CPU_ISAS` (:func:`.cpu_impl.cpu_isa`), else the PyTorch path with one
    warning; on CUDA tensors Triton when it imports, runs and passed its self-check on that
    device in the compute dtype (:mod:`.selfcheck`: one log line), else the PyTorch path (one
    log line, or one warning naming what failed); on other devices the PyTorch path. An
    explicit ``'cpu'`` or ``'triton'`` that cannot run raises a ``RuntimeError`` saying why,
    ``'triton'`` also when its self-check failed. Under ``torch.compile`` the answer is fixed
    when the model is traced (the self-check runs then, outside the graph).
    """
    check_impl(impl)
    if impl == 'export' or is_exporting():
        return 'export'
    # the compute dtypes: the clustering's (of x) and the aggregation's (of x and weight)
    x64 = tensor.dtype == torch.float64
    w64 = weight is not None and weight.dtype == torch.float64
    dtypes = ('float64', ) if x64 else ('float32', 'float64') if w64 else ('float32', )
    return _resolve(impl, tensor.device.type, tensor.device.index, dtypes)


def _cluster(tokens, kernel_size, subvector_stride, path):
    s = subvectors(tokens, subvector_stride)
    if path == 'export':
        return export.cluster(s, kernel_size)
    return cluster_op(s, kernel_size, path)


def _aggregate(tokens, idx, weight, bias, path):
    cdtype = compute_dtype(torch.promote_types(tokens.dtype, weight.dtype))
    Kc = idx.shape[-1]
    args = (tokens.to(cdtype).contiguous(), idx.to(torch.long).contiguous(),
            weight[:Kc].to(cdtype).contiguous(),
            bias.to(cdtype).contiguous() if bias is not None else None)
    out = export.aggregate(*args) if path == 'export' else aggregate_op(*args, path)
    return out.to(tokens.dtype)


def cluster(x, kernel_size, subvector_stride=8, impl='auto'):
    """Indices of the dynamic clusters of (B, N, C) tokens.

    Args:
        x (Tensor): (B, N, C) tokens.
        kernel_size (int): K, the cluster size.
        subvector_stride (int): d, the sub-vector sampling interval (1: full vectors).
        impl (str): 'auto' | 'cpu' | 'triton' | 'pytorch' | 'export' (:func:`resolve_impl`).

    Returns:
        LongTensor: (B, N, min(K, N)); ``[..., 0]`` is the patch itself.
    """
    check_tokens(x)
    K = check_int(kernel_size, 'kernel_size')
    d = check_int(subvector_stride, 'subvector_stride')
    return _cluster(x, K, d, resolve_impl(impl, x))


def aggregate(x, idx, weight, bias=None, impl='auto'):
    """Convolution over precomputed clusters ``idx`` (B, N, min(K, N)) of (B, N, C) tokens
    with the (K, C) ``weight``; (B, N, C) out, in the dtype of ``x``. Dispatched like
    :func:`dcconv`."""
    if idx is None:
        raise ValueError('idx must be a (B, N, min(K, N)) integer tensor (the clusters, see '
                         'cluster()), got None')
    check_aggregate_args(x, idx, weight, bias)
    return _aggregate(x, idx, weight, bias, resolve_impl(impl, x, weight))


def dcconv(x,
           weight,
           bias=None,
           kernel_size=None,
           subvector_stride=8,
           impl='auto',
           idx=None,
           return_indices=False):
    """Dynamic clustering convolution.

    Args:
        x (Tensor): (B, N, C) tokens or (B, C, H, W) feature maps (decided by ``x.dim()``).
        weight (Tensor): (K, C) per-channel kernel; ``weight[k]`` weighs the k-th member of
            the cluster (k = 0 is the patch itself, then nearest first).
        bias (Tensor, optional): (C,).
        kernel_size (int, optional): K; checked against ``weight.shape[0]`` if given.
        subvector_stride (int): d, clustering uses channels ``0, d, 2d, ...``.
        impl (str): 'auto' | 'cpu' | 'triton' | 'pytorch' | 'export' (:func:`resolve_impl`).
        idx (LongTensor, optional): (B, N, min(K, N)) precomputed clusters; skips clustering.
        return_indices (bool): also return ``idx``.

    Returns:
        Tensor in the layout and dtype of ``x`` (and ``idx`` if ``return_indices``).
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f'x must be a torch.Tensor, got {type(x).__name__}')
    if x.dim() == 4:
        B, C, H, W = x.shape
        if H * W == 0:
            raise ValueError(f'x has an empty spatial size, shape {tuple(x.shape)}')
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C); a free view if channels_last
    elif x.dim() == 3:
        tokens = x
    else:
        raise ValueError('x must be (B, N, C) tokens or (B, C, H, W) feature maps, got shape '
                         f'{tuple(x.shape)}')
    if kernel_size is not None:
        check_int(kernel_size, 'kernel_size')
    d = check_int(subvector_stride, 'subvector_stride')
    check_aggregate_args(tokens, idx, weight, bias, kernel_size, shape=x.shape)
    path = resolve_impl(impl, tokens, weight)
    if idx is None:
        idx = _cluster(tokens, weight.shape[0], d, path)
    out = _aggregate(tokens, idx, weight, bias, path)
    if x.dim() == 4:
        out = out.transpose(1, 2).reshape(B, C, H, W)
        if not x.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous()
    if return_indices:
        return out, idx
    return out


@MODELS.register_module()
class DCConv(nn.Module):
    """Dynamic Clustering Convolution layer.

    Every patch is the centre of a cluster made of itself and its ``kernel_size - 1`` nearest
    patches of the same image (squared L2 distance of the sub-vectors
    ``x[..., ::subvector_stride]``), and a per-channel kernel of ``kernel_size`` taps is
    applied to the ordered cluster.

    Args:
        channels (int): C.
        kernel_size (int): K, the cluster size.
        subvector_stride (int): d, sub-vector sampling interval for the clustering. Default 8.
        bias (bool): learn a per-channel bias. Default True.
        impl (str): 'auto' | 'cpu' | 'triton' | 'pytorch' | 'export' (:func:`resolve_impl`).

    Init: ``weight`` ~ truncated normal (std 0.02, cut at +-2 std), ``bias`` = 0 — the
    init DCCNeXt inherits from timm / ConvNeXt for its convolution and linear layers; it keeps
    the branch close to zero at the start so the residual path dominates.

    Set ``record_indices = True`` to keep the clusters of the last forward (detached, CPU) in
    ``last_indices`` for visualisation.
    """

    def __init__(self, channels, kernel_size, subvector_stride=8, bias=True, impl='auto'):
        super().__init__()
        self.channels = check_int(channels, 'channels')
        self.kernel_size = check_int(kernel_size, 'kernel_size')
        self.subvector_stride = check_int(subvector_stride, 'subvector_stride')
        self.impl = check_impl(impl)
        self.weight = nn.Parameter(torch.empty(self.kernel_size, self.channels))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.channels))
        else:
            self.register_parameter('bias', None)
        self.record_indices = False
        self.last_indices = None
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.trunc_normal_(self.weight, std=.02, a=-.04, b=.04)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x, idx=None):
        out, idx = dcconv(
            x,
            self.weight,
            self.bias,
            kernel_size=self.kernel_size,
            subvector_stride=self.subvector_stride,
            impl=self.impl,
            idx=idx,
            return_indices=True)
        if self.record_indices:
            self.last_indices = idx.detach().cpu()
        return out

    def extra_repr(self):
        s = (f'{self.channels}, kernel_size={self.kernel_size}, '
             f'subvector_stride={self.subvector_stride}')
        if self.bias is None:
            s += ', bias=False'
        if self.impl != 'auto':
            s += f', impl={self.impl!r}'
        return s
