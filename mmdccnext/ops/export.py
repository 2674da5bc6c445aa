"""The export path of DCConv: clustering and aggregation written in standard ops only.

The fused C++ kernels cannot be traced, and the tiled PyTorch reference loops in Python over
data-dependent tiles and row subsets, so neither can be exported. This path expresses the
same contract (:mod:`mmdccnext.ops.dcconv`: canonical direct-difference distances, patch
itself first, then ascending ``(distance, index)``) with operators that every ONNX runtime
has (MatMul, ReduceSum/ReduceMean, TopK, Gather, element-wise arithmetic, ``If``, ``Scan``),
and returns the *same indices* as the other paths, not approximately the same ones.

Clustering of the (B, N, D) sub-vectors ``s`` with cluster size ``Kc = min(K, N)``,
``m = Kc - 1`` neighbours and ``M = m + 8`` candidates per patch:

1. Screen (MatMul): on the sub-vectors centred on the image mean, ``c = s - mean``,
   ``scr[i, j] = |c_j|^2 - 2 <c_i, c_j>`` with ``scr[i, i] = -inf``; TopK of the ``M + 2``
   smallest per row gives the patch itself, ``M`` candidates and the smallest screened value
   left out. ``scr + |c_i|^2`` approximates the squared distance (any summation order, FMA or
   not: the bound below holds for all of them).
2. Canonical distances of the candidates only (Gather + the fixed chain of separately
   rounded Sub, Mul, Add over the sub-vector channels in increasing order, NaN -> +inf):
   bit-identical to the distances every other path computes. Exported, the chain of
   additions is an ONNX ``Scan`` (a loop, sequential by definition); a reduction (ReduceSum,
   MatMul) would leave the order, and so the rounding, to the runtime.
3. Order the candidates by (canonical distance, index) with a rank: ``rank[a]`` = number of
   candidates ``b`` with ``(e_b, j_b) < (e_a, j_a)``. Ranks are distinct integers, so the
   TopK that sorts them has no ties to break and every runtime returns the same order.
4. Certificate. With ``u`` the unit roundoff of the compute dtype and
   ``E_i = (2D + 12) u (|c_i|^2 + max_j |c_j|^2)``, the screen of every pair is within
   ``E_i + u S`` of the exact squared distance ``S`` and the canonical distance is at least
   ``S (1 - (D + 4) u)`` (the derivation is the one of the float64 screen in
   :mod:`mmdccnext.ops.pytorch_impl`, with u of float32; the extra float32 roundings of the norms
   and of the final additions fit in the slack of the constant 12). Every patch left out has a
   screened value >= the one left out first, so its canonical distance is at least
   ``lower = (left_out + |c_i|^2 - E_i) (1 - (D + 5) u) - 4 (D + 4) denorm_min`` (the last
   term: underflow of the float32 screen and of the canonical sums). If
   ``lower`` exceeds the m-th canonical distance kept, no patch left out can enter the
   cluster, ties included (it would need a distance <= that of m kept candidates). The bound
   is evaluated in float64.
5. If every row of every image is certified (and the inputs are finite and far from
   overflow), the result of 3 is the answer; otherwise (near-ties, e.g. duplicated patches;
   NaN / inf) the canonical distance of every pair is computed (N x N, the same chain of
   element-wise ops) and sorted by (distance, index). Exported, this choice is an ONNX
   ``If`` (``torch.cond``): the runtime evaluates only the branch it takes.

The sort of step 5 and the exact path for N < M + 2 order N values that may tie exactly.
In ONNX this is a TopK, whose specification breaks ties by the lower index (ONNX Runtime
implements exactly that); in PyTorch it is a stable sort (``torch.topk`` promises no tie
order).

The legacy TorchScript-based ONNX exporter (``torch.onnx.export(..., dynamo=False)``) and
``torch.jit.trace`` cannot record ``torch.cond``; under them the clustering always takes the
exact all-pairs route of step 5 (same indices, N x N x D work).

Aggregation: ``out = bias; for k: out = out + x[idx[..., k]] * W[k]``: one Gather of all
taps, one Mul, the sum over the taps in order (a ``Scan`` when exported); the order and
roundings of the other paths (bit-identical outputs in PyTorch).
"""
import math

import torch

try:  # the loop primitive of torch.export (a private module, hence the fallback)
    from torch._higher_order_ops.scan import scan
except ImportError:  # pragma: no cover - other torch versions: unrolled steps
    scan = None

from .common import SCREEN_EXTRA


def _can_record_hops():
    """``torch.cond`` and ``scan`` are recorded by ``torch.export`` (the dynamo ONNX
    exporter), not by TorchScript tracing."""
    return torch.compiler.is_exporting() and not torch.jit.is_tracing()


def _add_step(acc, term):
    # (carry, per-step output): the scan primitive needs an output; a scalar costs nothing
    return acc + term, term.new_zeros(())


def _sequential_sum(first, terms, use_scan):
    """``(((first + terms[0]) + terms[1]) + ...)``, left to right, one rounding per add.

    ``use_scan`` (export): one ONNX ``Scan``, sequential by definition, instead of
    ``len(terms)`` unrolled ``Add`` nodes; a reduction op (ReduceSum, MatMul) would leave
    the order, and so the rounding, to the runtime. The unrolled graph is as exact, only
    bigger (the exporter's time grows with it).
    """
    if use_scan:
        # the loop carry must keep the layout of its initial value
        return scan(_add_step, first.contiguous(), terms.contiguous())[0]
    acc = first
    for t in range(terms.shape[0]):
        acc = acc + terms[t]
    return acc


def _smallest_k(values, k, onnx_topk):
    """Positions of the k smallest values along the last axis, ties -> lower position."""
    if onnx_topk:
        # ONNX TopK: "the element with the lower index will appear first"
        return torch.topk(values, k, dim=-1, largest=False, sorted=True).indices
    order = torch.sort(values, dim=-1, stable=True).indices
    # index_select, not a slice: torch.export cannot slice this sort's output inside cond
    return order.index_select(-1, torch.arange(k, device=values.device))


def _canonical_chain(rows, cols, use_scan=False):
    """Canonical squared distances from the (D, ...) tensors ``rows`` and ``cols``
    (broadcast over the trailing axes): separately rounded Sub, Mul, Add over the
    sub-vector channel (the leading axis) in increasing order; NaN -> +inf."""
    diff = rows - cols
    sq = diff * diff
    acc = _sequential_sum(sq[0], sq[1:], use_scan)
    return torch.where(torch.isnan(acc), torch.full_like(acc, math.inf), acc)


def _self_mask(N, device):
    ids = torch.arange(N, device=device)
    return ids[:, None] == ids[None, :]


def _pair_terms_added(acc, s_t):
    """One step of the canonical chain over all pairs: ``acc + (s_t[i] - s_t[j])^2``."""
    diff = s_t[:, :, None] - s_t[:, None, :]
    return acc + diff * diff


def _pair_step(acc, s_t):
    return _pair_terms_added(acc, s_t), s_t.new_zeros(())  # as _add_step


def _exact_all_pairs(s, Kc, onnx_topk, use_scan=False):
    """Canonical distance of every pair, self first, then (distance, index); ``onnx_topk``:
    sort with TopK (ONNX export), else with a stable sort. The chain runs over the channels
    one (B, N, N) step at a time (never a (D, B, N, N) tensor); ``use_scan`` records it as
    one ONNX ``Scan`` (sequential by definition) instead of D unrolled steps."""
    st = s.permute(2, 0, 1).contiguous()  # (D, B, N)
    acc = _pair_terms_added(torch.zeros_like(st[0][:, :, None].expand(-1, -1, st.shape[2])),
                            st[0])
    if use_scan:
        acc = scan(_pair_step, acc, st[1:])[0]
    else:
        for t in range(1, st.shape[0]):
            acc = _pair_terms_added(acc, st[t])
    dist = torch.where(torch.isnan(acc), torch.full_like(acc, math.inf), acc)
    dist = torch.where(_self_mask(s.shape[1], s.device), torch.full_like(dist, -1.0), dist)
    return _smallest_k(dist, Kc, onnx_topk)


def _screened(s, Kc, M, use_scan=False):
    """Steps 1-4 of the module docstring: (B, N, Kc) indices and whether they are certified
    for every row (a 0-d bool tensor)."""
    B, N, D = s.shape
    m = Kc - 1
    c = s - s.mean(dim=1, keepdim=True)
    nrm = (c * c).sum(-1)  # (B, N)
    scr = nrm[:, None, :] - 2 * torch.matmul(c, c.transpose(1, 2))
    scr = torch.where(_self_mask(N, s.device), torch.full_like(scr, -math.inf), scr)
    best, pos = torch.topk(scr, M + 2, dim=-1, largest=False, sorted=True)
    cand = pos[..., 1:M + 1]  # (B, N, M)
    # canonical distances of the candidates
    offsets = (torch.arange(B, device=s.device) * N)[:, None, None]
    gathered = s.reshape(B * N, D).index_select(0, (cand + offsets).reshape(-1))
    gathered = gathered.reshape(B, N, M, D).permute(3, 0, 1, 2)  # (D, B, N, M)
    dist = _canonical_chain(s.permute(2, 0, 1)[..., None], gathered, use_scan)  # (B, N, M)
    # order by (distance, index): distinct ranks, so the sort has no ties
    d_a, d_b = dist[..., :, None], dist[..., None, :]
    j_a, j_b = cand[..., :, None], cand[..., None, :]
    before = (d_b < d_a) | ((d_b == d_a) & (j_b < j_a))
    rank = before.sum(-1).to(s.dtype)
    order = torch.topk(rank, m, dim=-1, largest=False, sorted=True).indices
    kept = torch.gather(cand, -1, order)
    worst_kept = torch.gather(dist, -1, order[..., m - 1:m])[..., 0]
    self_ids = torch.arange(N, device=s.device).expand(B, N)
    idx = torch.cat([self_ids[..., None], kept], dim=-1)
    # certificate, in float64
    u = torch.finfo(s.dtype).eps / 2
    tiny = torch.finfo(s.dtype).smallest_normal * torch.finfo(s.dtype).eps
    n64 = nrm.double()
    n_max = n64.amax(dim=1, keepdim=True)
    eps = (2 * D + 12) * u * (n64 + n_max) * (1 + 1e-6)
    left_out = best[..., M + 1].double() + n64
    lower = (left_out - eps) * (1 - (D + 5) * u * 1.01) - 4 * (D + 4) * tiny
    certified = (lower > worst_kept.double()).all()
    certified = certified & torch.isfinite(s).all() & (n_max < torch.finfo(s.dtype).max / 16).all()
    certified = certified & (pos[..., 0] == self_ids).all()
    return idx, certified


def cluster(s, kernel_size):
    """Clustering of the (B, N, D) sub-vectors ``s`` in standard ops (exportable to ONNX);
    same indices as every other path: (B, N, min(K, N)), ``[..., 0]`` the patch itself.
    ``s`` comes detached (:func:`.common.subvectors`): a grad-mode switch here would become a
    node of the exported graph."""
    K = kernel_size
    B, N, _ = s.shape
    # a comparison, not min(): under symbolic shapes it becomes a guard and Kc stays an int
    Kc = K if N >= K else N
    if Kc == 1:
        return torch.arange(N, device=s.device).expand(B, N)[..., None].clone()
    # decided here, not inside the branch: torch.cond traces its branches with dynamo, to
    # which is_in_onnx_export() is always False
    onnx_topk = torch.onnx.is_in_onnx_export()
    use_scan = _can_record_hops() and scan is not None
    M = Kc - 1 + SCREEN_EXTRA
    if N < M + 2 or (torch.jit.is_tracing() and not _can_record_hops()):
        return _exact_all_pairs(s, Kc, onnx_topk, use_scan)
    idx, certified = _screened(s, Kc, M, use_scan)
    if _can_record_hops():
        return torch.cond(certified, lambda idx, s: idx.clone(),
                          lambda idx, s: _exact_all_pairs(s, Kc, onnx_topk, use_scan), (idx, s))
    return idx if bool(certified) else _exact_all_pairs(s, Kc, onnx_topk)


def aggregate(x, idx, weight, bias=None):
    """Convolution over the clusters in standard ops (Gather, Mul, Add); (B, N, C) out.

    Inputs in the compute dtype, ``weight`` (Kc, C); summation order as in every other path
    (bit-identical outputs in PyTorch); differentiable. Materialises the (Kc, B, N, C)
    gathered taps: one Gather and one Mul for all taps keep the exported graph small.
    """
    B, N, C = x.shape
    Kc = idx.shape[-1]
    offsets = (torch.arange(B, device=x.device) * N)[:, None, None]
    flat_idx = (idx + offsets).permute(2, 0, 1).reshape(-1)  # tap-major
    taps = x.reshape(B * N, C).index_select(0, flat_idx).reshape(Kc, B, N, C)
    taps = taps * weight[:, None, None, :]
    first = bias + taps[0] if bias is not None else taps[0]
    return _sequential_sum(first, taps[1:], _can_record_hops() and scan is not None)
