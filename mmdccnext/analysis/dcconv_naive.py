"""The naive DCConv composite, the baseline of the DCConv benchmarks
(``tools/analysis/benchmark_dcconv.py`` on the CPU, ``tools/analysis/gpu_check.py`` on a GPU).

It is what one writes straight from the paper::

    s = x[..., ::d];  dist = torch.cdist(s, s)            # (B, N, N)
    idx = dist.topk(K, largest=False).indices              # (B, N, K)
    y = (x[batch, idx] * W).sum(2) + b                     # gathers (B, N, K, C)

Its clustering runs under ``torch.no_grad()``, so autograd does not keep the N x N matrix.
It does not meet the clustering contract of :mod:`mmdccnext.ops` (``cdist``'s rounding, no
centre-first rule, ties in ``topk``'s order): it is a cost baseline, not a reference.
"""
import torch


def naive_dcconv(x, weight, bias, kernel_size, subvector_stride=8):
    """cdist -> topk -> (B, N, K, C) gather -> weighted sum, on (B, N, C) tokens."""
    B = x.shape[0]
    with torch.no_grad():
        s = x[..., ::subvector_stride]
        dist = torch.cdist(s, s)
        idx = dist.topk(kernel_size, dim=-1, largest=False).indices
    gathered = x[torch.arange(B, device=x.device)[:, None, None], idx]
    return (gathered * weight).sum(2) + bias
