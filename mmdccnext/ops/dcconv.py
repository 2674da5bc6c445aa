"""Dynamic Clustering Convolution (DCConv, DCCNeXt, AAAI-25).

For the tokens ``x`` (B, N, C) of an image, :func:`~mmdccnext.ops.cluster.cluster` gives the
ordered cluster ``idx`` (B, N, K) of every patch and the convolution over the cluster is a
per-channel (depthwise) weighted sum::

    y[b, n, c] = sum_k W[k, c] * x[b, idx[b, n, k], c] + bias[c]

Two paths implement the aggregation: the fused C++ CPU kernels of ``mmdccnext._ext``
(``impl='cpu'``) and PyTorch (``impl='pytorch'``, any device). Neither materialises the
(B, N, K, C) gathered tensor, both save only ``x``, ``idx`` and ``W`` for the backward, and
both backward passes are deterministic on the CPU (the C++ one also whatever the number of
threads; on CUDA the PyTorch backward uses ``scatter_add_``, deterministic only under
``torch.use_deterministic_algorithms(True)``). The sum over ``k`` runs in increasing
``k``, starting from the bias, one rounding per multiply and per add in float32 (float64 for
float64 inputs), so both paths give bit-identical forward outputs on the CPU. float16 /
bfloat16 inputs are computed in float32 and the output is cast back to the input dtype.
A third path in standard ops (``impl='export'``, :mod:`mmdccnext.ops.export`) is what ONNX
export and tracing record; it follows the same order (the same outputs in PyTorch).

When the cluster is smaller than the kernel (N < K), only the taps ``W[:N]`` are used and the
gradient of ``W[N:]`` is zero.
"""
import torch
from torch import nn
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from mmdccnext.registry import MODELS
from .cluster import _check_int, check_tokens, cluster, compute_dtype
from .export import aggregate_export
from .ext_loader import IMPLS, load_ext, resolve_impl


class AggregatePytorchFunction(Function):
    """Reference aggregation: a loop over the K taps, one (B, N, C) gather at a time."""

    @staticmethod
    def forward(ctx, x, idx, weight, bias=None):
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, idx, weight)
        return _aggregate_forward_pytorch(x, idx, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, idx, weight = ctx.saved_tensors
        B, N, C = x.shape
        Kc = idx.shape[-1]
        grad_out = grad_out.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.zeros_like(x, memory_format=torch.contiguous_format)
        if ctx.needs_input_grad[2]:
            grad_w = torch.zeros_like(weight, memory_format=torch.contiguous_format)
        for k in range(Kc):
            index = idx[..., k:k + 1].expand(B, N, C)
            if grad_w is not None:
                grad_w[k] = (grad_out * torch.gather(x, 1, index)).sum(dim=(0, 1))
            if grad_x is not None:
                grad_x.scatter_add_(1, index, grad_out * weight[k])
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_b = grad_out.sum(dim=(0, 1))
        return grad_x, None, grad_w, grad_b


def _aggregate_forward_pytorch(x, idx, weight, bias):
    B, N, C = x.shape
    Kc = idx.shape[-1]
    if bias is not None:
        out = bias.expand(B, N, C).clone(memory_format=torch.contiguous_format)
    else:
        out = x.new_zeros((B, N, C))
    for k in range(Kc):
        gathered = torch.gather(x, 1, idx[..., k:k + 1].expand(B, N, C))
        out.add_(gathered.mul_(weight[k]))
    return out


class AggregateCPUFunction(Function):
    """Fused C++ aggregation: reads ``x`` through ``idx``; deterministic backward."""

    @staticmethod
    def forward(ctx, x, idx, weight, bias=None):
        ext = load_ext()
        x = x.contiguous()
        idx = idx.contiguous()
        weight = weight.contiguous()
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, idx, weight)
        return ext.aggregate_forward(x, idx, weight,
                                     bias.contiguous() if bias is not None else None)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        ext = load_ext()
        x, idx, weight = ctx.saved_tensors
        need_x, _, need_w, need_b = ctx.needs_input_grad[:4]
        grad_x, grad_w, grad_b = ext.aggregate_backward(grad_out.contiguous(), x, idx, weight,
                                                        bool(need_x), bool(need_w),
                                                        bool(need_b and ctx.has_bias))
        return (grad_x if need_x else None, None, grad_w if need_w else None, grad_b if
                (need_b and ctx.has_bias) else None)


def aggregate_pytorch(x, idx, weight, bias=None):
    """PyTorch convolution over the clusters; (B, N, C) tokens in, (B, N, C) out.

    ``idx`` (B, N, Kc) with Kc <= K uses the taps ``weight[:Kc]``. Computed in float32 for
    float16 / bfloat16 inputs; output in the dtype of ``x``.
    """
    return _aggregate(x, idx, weight, bias, 'pytorch')


def aggregate_cpu(x, idx, weight, bias=None):
    """Fused C++ convolution over the clusters (CPU tensors, needs ``mmdccnext._ext``)."""
    return _aggregate(x, idx, weight, bias, 'cpu')


def aggregate(x, idx, weight, bias=None, impl='auto'):
    """Convolution over precomputed clusters ``idx``, dispatched like :func:`dcconv`."""
    _check_aggregate_args(x, idx, weight, bias)
    return _aggregate(x, idx, weight, bias, resolve_impl(impl, x))


def _aggregate(x, idx, weight, bias, path):
    if path == 'export':
        return aggregate_export(x, idx, weight, bias)
    out_dtype = x.dtype
    cdtype = compute_dtype(torch.promote_types(x.dtype, weight.dtype))
    Kc = idx.shape[-1]
    xc = x.to(cdtype)
    wc = weight[:Kc].to(cdtype)
    bc = bias.to(cdtype) if bias is not None else None
    idx = idx.to(torch.long)
    if path == 'cpu':
        ext = load_ext()
        if ext is None:
            raise RuntimeError('aggregate_cpu needs the C++ extension mmdccnext._ext')
        if x.device.type != 'cpu':
            raise RuntimeError(f'aggregate_cpu needs a CPU tensor, got one on {x.device}')
        out = AggregateCPUFunction.apply(xc, idx, wc, bc)
    else:
        out = AggregatePytorchFunction.apply(xc, idx, wc, bc)
    return out.to(out_dtype)


def _check_aggregate_args(x, idx, weight, bias, kernel_size=None):
    check_tokens(x)
    B, N, C = x.shape
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight)
        raise ValueError(f'weight must be a (K, C) tensor, got {shape}')
    K = weight.shape[0]
    if K < 1:
        raise ValueError(f'weight must be (K, C) with K >= 1, got shape {tuple(weight.shape)}')
    if weight.shape[1] != C:
        raise ValueError(f'weight must be (K, C) = (K, {C}) to match the {C} channels of x, '
                         f'got shape {tuple(weight.shape)}')
    if not weight.is_floating_point():
        raise ValueError(f'weight must be a floating-point tensor, got {weight.dtype}')
    if weight.device != x.device:
        raise ValueError(f'weight is on {weight.device} but x is on {x.device}')
    if kernel_size is not None and kernel_size != K:
        raise ValueError(f'kernel_size={kernel_size} does not match weight.shape[0]={K}')
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (C, ):
            shape = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias)
            raise ValueError(f'bias must be None or a ({C},) tensor, got {shape}')
        if bias.device != x.device:
            raise ValueError(f'bias is on {bias.device} but x is on {x.device}')
    if idx is not None:
        Kc = min(K, N)
        if not isinstance(idx, torch.Tensor) or tuple(idx.shape) != (B, N, Kc):
            shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx)
            raise ValueError(f'idx must be a (B, N, min(K, N)) = {(B, N, Kc)} integer '
                             f'tensor, got {shape}')
        if idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f'idx must be an int64 (or int32) tensor, got {idx.dtype}')
        if idx.device != x.device:
            raise ValueError(f'idx is on {idx.device} but x is on {x.device}')
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= N:
            raise ValueError(f'idx must hold patch indices in [0, {N}), got values in '
                             f'[{lo}, {hi}]')


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
        impl (str): 'auto' | 'cpu' | 'pytorch' | 'export'; 'auto' can be overridden with
            the environment variable ``MMDCCNEXT_DCCONV_IMPL``. While exporting or tracing,
            every impl runs 'export' (standard ops, :mod:`mmdccnext.ops.export`).
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
        _check_int(kernel_size, 'kernel_size')
    _check_int(subvector_stride, 'subvector_stride')
    _check_aggregate_args(tokens, idx, weight, bias, kernel_size)
    path = resolve_impl(impl, tokens)
    if idx is None:
        idx = cluster(tokens, int(weight.shape[0]), subvector_stride, impl=path)
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
        impl (str): 'auto' | 'cpu' | 'pytorch' | 'export'.

    Init: ``weight`` ~ truncated normal (std 0.02, cut at +-2 std), ``bias`` = 0 — the
    init DCCNeXt inherits from timm / ConvNeXt for its convolution and linear layers; it keeps
    the branch close to zero at the start so the residual path dominates.

    Set ``record_indices = True`` to keep the clusters of the last forward (detached, CPU) in
    ``last_indices`` for visualisation.
    """

    def __init__(self, channels, kernel_size, subvector_stride=8, bias=True, impl='auto'):
        super().__init__()
        self.channels = _check_int(channels, 'channels')
        self.kernel_size = _check_int(kernel_size, 'kernel_size')
        self.subvector_stride = _check_int(subvector_stride, 'subvector_stride')
        if impl not in IMPLS:
            raise ValueError(f'impl must be one of {IMPLS}, got {impl!r}')
        self.impl = impl
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
