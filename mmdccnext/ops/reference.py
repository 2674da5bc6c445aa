"""The float64 reference of DCConv: brute force from the definition, for tests and checks.

N x N distance matrix and the (B, N, K, C) gathered tensor: small shapes only. Every path
(:mod:`.cpu_impl`, :mod:`.triton_impl`, :mod:`.pytorch_impl`, :mod:`.export`) is held to
these two functions by ``tests/test_ops`` and ``tools/analysis/gpu_check.py``.
"""
import math

import torch


@torch.no_grad()
def cluster_reference(x, kernel_size, subvector_stride=8):
    """(B, N, min(K, N)) cluster indices of (B, N, C) tokens: float64 squared L2 of the
    sub-vectors ``x[..., ::d]``, NaN as +inf, the patch itself first, then ascending
    (distance, index)."""
    s = x[..., ::subvector_stride].double()
    N = s.shape[1]
    dist = ((s[:, :, None, :] - s[:, None, :, :])**2).sum(-1)
    dist = dist.masked_fill(torch.isnan(dist), math.inf)
    dist = dist.masked_fill(torch.eye(N, dtype=torch.bool, device=x.device), -1.0)
    return torch.sort(dist, dim=-1, stable=True).indices[..., :min(kernel_size, N)]


def aggregate_reference(x, idx, weight, bias=None):
    """``bias + sum_k weight[k] * x[idx[..., k]]`` in float64 (differentiable), (B, N, C)."""
    x = x.double()
    B, N, C = x.shape
    Kc = idx.shape[-1]
    gathered = torch.gather(x[:, :, None, :].expand(B, N, Kc, C), 1,
                            idx.long()[..., None].expand(B, N, Kc, C))
    out = (gathered * weight[:Kc].double()).sum(2)
    return out + bias.double() if bias is not None else out
