"""The float64 reference of DCConv: brute force from the definition, for tests and checks.

Distances in row chunks; the aggregation materialises the (B, N, K, C) gathered tensor.
Every path (:mod:`.cpu_impl`, :mod:`.triton_impl`, :mod:`.pytorch_impl`, :mod:`.export`) is
held to these two functions by ``tests/test_ops`` and ``tools/analysis/gpu_check.py``.
"""
import math

import torch


@torch.no_grad()
def cluster_reference(x, kernel_size, subvector_stride=8, max_bytes=64 * 2**20):
    """(B, N, min(K, N)) cluster indices of (B, N, C) tokens: float64 squared L2 of the
    sub-vectors ``x[..., ::d]`` summed over increasing channels, NaN as +inf, the patch itself
    first, then ascending (distance, index) (a stable sort keeps the lower index first).
    Rows in chunks of at most ``max_bytes`` of distances, so B2's shapes fit."""
    s = x.detach()[..., ::subvector_stride].double()
    B, N, D = s.shape
    Kc = min(kernel_size, N)
    out = torch.empty((B, N, Kc), dtype=torch.long, device=x.device)
    rows = max(1, min(N, max_bytes // (8 * N)))
    for b in range(B):
        for r0 in range(0, N, rows):
            r1 = min(N, r0 + rows)
            acc = torch.zeros((r1 - r0, N), dtype=torch.float64, device=x.device)
            for t in range(D):
                diff = s[b, r0:r1, t, None] - s[b, None, :, t]
                acc += diff * diff
            acc.masked_fill_(torch.isnan(acc), math.inf)
            ar = torch.arange(r1 - r0, device=x.device)
            acc[ar, ar + r0] = -math.inf  # the centre goes first, whatever its distance
            out[b, r0:r1] = torch.sort(acc, dim=1, stable=True).indices[:, :Kc]
    return out


def aggregate_reference(x, idx, weight, bias=None):
    """``bias + sum_k weight[k] * x[idx[..., k]]`` in float64 (differentiable), (B, N, C)."""
    x = x.double()
    B, N, C = x.shape
    Kc = idx.shape[-1]
    gathered = torch.gather(x[:, :, None, :].expand(B, N, Kc, C), 1,
                            idx.long()[..., None].expand(B, N, Kc, C))
    out = (gathered * weight[:Kc].double()).sum(2)
    return out + bias.double() if bias is not None else out
