"""What every DCConv path shares: the argument checks (run once, by the public functions of
:mod:`mmdccnext.ops.dcconv`), the compute dtype and the sub-vectors the clustering reads.

The leaves (``pytorch_impl``, ``cpu_impl``, ``triton_impl``, ``export``) receive arguments
already checked and converted: (B, N, D) contiguous sub-vectors for the clustering, and
contiguous tokens, int64 indices and weights in the compute dtype for the aggregation.
"""
import numbers

import torch

#: The ``impl`` names of :func:`mmdccnext.ops.dcconv` (see :func:`~.dcconv.resolve_impl`).
IMPLS = ('auto', 'cpu', 'triton', 'pytorch', 'export')

#: Candidates the screened clustering paths (PyTorch, export) verify beyond the K - 1 they
#: need: a wider margin certifies more rows and costs a few more canonical distances per patch.
SCREEN_EXTRA = 8


def check_int(value, name, minimum=1):
    """``value`` as an int >= ``minimum``; ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f'{name} must be an int >= {minimum}, got {value!r}')
    if value < minimum:
        raise ValueError(f'{name} must be an int >= {minimum}, got {value}')
    return int(value)


def check_impl(impl):
    if impl not in IMPLS:
        raise ValueError(f'impl must be one of {IMPLS}, got {impl!r}')
    return impl


def check_tokens(x, name='x', shape=None):
    """Validate a (B, N, C) floating-point token tensor. ``shape``: the shape the user passed
    (a (B, C, H, W) map), named in the errors instead of the tokens'."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f'{name} must be a torch.Tensor, got {type(x).__name__}')
    shown = tuple(x.shape) if shape is None else tuple(shape)
    if x.dim() != 3:
        raise ValueError(f'{name} must be (B, N, C) tokens (3-D), got shape {shown}')
    B, N, C = x.shape
    if B == 0:
        raise ValueError(f'{name} has an empty batch (B = 0), shape {shown}')
    if N == 0:
        raise ValueError(f'{name} has no patches (N = 0), shape {shown}')
    if C == 0:
        raise ValueError(f'{name} has no channels (C = 0), shape {shown}')
    if not x.is_floating_point():
        raise ValueError(f'{name} must be a floating-point tensor, got {x.dtype}')


def _check_param(t, name, shape_text, x):
    if not isinstance(t, torch.Tensor):
        raise ValueError(f'{name} must be a {shape_text} tensor, got {type(t).__name__}')
    if not t.is_floating_point():
        # int / bool would be promoted silently, complex would lose its imaginary part
        raise ValueError(f'{name} must be a floating-point tensor, got {t.dtype}')
    if t.device != x.device:
        raise ValueError(f'{name} is on {t.device} but x is on {x.device}')


def check_aggregate_args(x, idx, weight, bias, kernel_size=None, shape=None):
    """Validate the arguments of the aggregation: (B, N, C) tokens ``x``, (K, C) ``weight``,
    ``bias`` None or (C,), ``idx`` None or (B, N, min(K, N)) int64/int32 in [0, N)."""
    check_tokens(x, shape=shape)
    B, N, C = x.shape
    _check_param(weight, 'weight', '(K, C)', x)
    if weight.dim() != 2 or weight.shape[0] < 1 or weight.shape[1] != C:
        raise ValueError(f'weight must be (K, C) = (K, {C}) with K >= 1 to match the {C} '
                         f'channels of x, got shape {tuple(weight.shape)}')
    K = weight.shape[0]
    if kernel_size is not None and kernel_size != K:
        raise ValueError(f'kernel_size={kernel_size} does not match weight.shape[0]={K}')
    if bias is not None:
        _check_param(bias, 'bias', f'({C},)', x)
        if tuple(bias.shape) != (C, ):
            raise ValueError(f'bias must be None or a ({C},) tensor, got shape '
                             f'{tuple(bias.shape)}')
    if idx is not None:
        Kc = min(K, N)
        if not isinstance(idx, torch.Tensor) or tuple(idx.shape) != (B, N, Kc):
            got = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise ValueError(f'idx must be a (B, N, min(K, N)) = {(B, N, Kc)} integer '
                             f'tensor, got {got}')
        if idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f'idx must be an int64 (or int32) tensor, got {idx.dtype}')
        if idx.device != x.device:
            raise ValueError(f'idx is on {idx.device} but x is on {x.device}')
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= N:
            raise ValueError(f'idx must hold patch indices in [0, {N}), got values in '
                             f'[{lo}, {hi}]')


def compute_dtype(dtype):
    """float64 stays float64; every other floating type is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def subvectors(x, subvector_stride=8):
    """Sub-vectors ``x[..., ::d]`` of (B, N, C) tokens in the compute dtype, contiguous and
    detached (no gradient flows through the choice of the clusters)."""
    return x.detach()[..., ::subvector_stride].to(compute_dtype(x.dtype)).contiguous()
