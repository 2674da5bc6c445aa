"""The PyTorch path of DCConv (any device): clustering and aggregation in plain PyTorch ops.

Clustering (the contract is in :mod:`mmdccnext.ops.dcconv`): a float64 matmul *screen*
``|a|^2 + |b|^2 - 2ab`` on mean-centred sub-vectors proposes candidates with a rigorous bound
on how far it can be from the canonical distance; only the candidates the bound cannot rule out
get their canonical distance evaluated, and the order is decided on canonical distances alone.
Where the bound cannot decide (near-ties, duplicated patches, non-finite values) the rows or
images affected are redone with the canonical distance of every pair. Memory: tiles of
(images, rows, columns) of at most :data:`TILE_BYTES` with a running top-K merging the column
tiles; the N x N matrix is never built.

Aggregation: a loop over the K taps, one (B, N, C) gather at a time (never the (B, N, K, C)
gathered tensor); the backward is deterministic on every device by construction: ``grad_x``
through the inverse of ``idx`` (no ``scatter_add_``, whose atomics make CUDA runs differ),
see :func:`_grad_x`.
"""
import math

import torch

from .common import SCREEN_EXTRA

#: Upper bound of the bytes the PyTorch path allocates per distance tile (distances, the
#: sort keys and the temporaries of one step); the N x N matrix is never built at once.
TILE_BYTES = 32 * 2**20
# Bytes per tile element in the PyTorch path: fp32 accumulator + difference temporary +
# int64 key + the concatenated candidate keys + topk's copy (rounded up).
_BYTES_PER_ELEM = 32
# On the CPU smaller tiles stay in cache and are faster; on accelerators bigger is better.
_CPU_TILE_BYTES = 2 * 2**20


def _pairwise_sq_dist(rows, cols):
    """Direct-difference squared distances in the canonical order (see module docstring).

    ``rows`` (b, R, D), ``cols`` (b, Ct, D) -> (b, R, Ct); NaN -> +inf.
    """
    b, R, D = rows.shape
    Ct = cols.shape[1]
    cols_t = cols.transpose(1, 2)  # (b, D, Ct)
    acc = rows.new_zeros((b, R, Ct))
    diff = rows.new_empty((b, R, Ct))
    for t in range(D):
        torch.sub(rows[:, :, t:t + 1], cols_t[:, t:t + 1, :], out=diff)
        diff.mul_(diff)
        acc.add_(diff)
    return acc.masked_fill_(torch.isnan(acc), math.inf)


def _tile_shape(B, N, device, tile_bytes):
    if tile_bytes is None:
        tile_bytes = _CPU_TILE_BYTES if device.type == 'cpu' else TILE_BYTES
    elems = max(1, min(tile_bytes, TILE_BYTES) // _BYTES_PER_ELEM)
    col_tile = min(N, elems)
    row_tile = min(N, max(1, elems // col_tile))
    batch_tile = min(B, max(1, elems // (row_tile * col_tile)))
    return batch_tile, row_tile, col_tile


def _exact_topk(s, Kc, row_ids, tile_bytes):
    """Canonical top-Kc of the rows ``row_ids`` of every image of ``s`` (B, N, D).

    Distances in tiles of (batch, rows, columns) with a running top-K; never more than one
    tile of the N x N matrix. Returns (B, len(row_ids), Kc).
    """
    B, N, _ = s.shape
    R = row_ids.numel()
    device = s.device
    out = torch.empty((B, R, Kc), dtype=torch.long, device=device)
    bt, rt, ct = _tile_shape(B, N, device, tile_bytes)
    use_keys = s.dtype == torch.float32
    for b0 in range(0, B, bt):
        b1 = min(B, b0 + bt)
        for r0 in range(0, R, rt):
            r1 = min(R, r0 + rt)
            rid = row_ids[r0:r1]
            rows = s[b0:b1].index_select(1, rid)
            best_key = best_d = best_i = None
            for c0 in range(0, N, ct):
                c1 = min(N, c0 + ct)
                dist = _pairwise_sq_dist(rows, s[b0:b1, c0:c1])
                col_ids = torch.arange(c0, c1, device=device)
                is_self = (rid[:, None] == col_ids[None, :]).expand_as(dist)
                if use_keys:
                    # distance >= 0 (or +inf), so its float32 bit pattern orders like the
                    # value; (bits << 32) | index is a unique key ordered by (dist, index).
                    key = dist.view(torch.int32).to(torch.long).bitwise_left_shift_(32)
                    key.bitwise_or_(col_ids)
                    key.masked_fill_(is_self, -1)  # self: the unique minimum
                    if best_key is not None:
                        key = torch.cat([best_key, key], dim=-1)
                    best_key = key.topk(
                        min(Kc, key.shape[-1]), dim=-1, largest=False, sorted=True).values
                else:
                    # float64: stable sort; earlier candidates (lower indices) win ties.
                    dist.masked_fill_(is_self, -1.0)
                    ids = col_ids.expand_as(dist)
                    if best_d is not None:
                        dist = torch.cat([best_d, dist], dim=-1)
                        ids = torch.cat([best_i, ids], dim=-1)
                    order = torch.sort(dist, dim=-1, stable=True).indices[..., :Kc]
                    best_d = dist.gather(-1, order)
                    best_i = ids.gather(-1, order)
            idx = best_key.bitwise_and_(0xFFFFFFFF) if use_keys else best_i
            idx[..., 0] = rid  # the self key (-1) is always first
            out[b0:b1, r0:r1] = idx
    return out


def _canonical_sorted(s, r0, cand, tile_bytes):
    """Canonical distances from rows r0.. of ``s`` (b, N, D) to their candidates ``cand``
    (b, R, M), computed exactly as in :func:`_pairwise_sq_dist`; returns both sorted by
    (distance, index). Row chunks keep the gathered (b, rows, M, D) values within budget."""
    b, R, M = cand.shape
    D = s.shape[-1]
    budget = (TILE_BYTES if tile_bytes is None else tile_bytes) // (3 * s.element_size())
    chunk = max(1, min(R, budget // max(1, b * M * D)))
    cands, accs = [], []
    for q0 in range(0, R, chunk):
        q1 = min(R, q0 + chunk)
        cq = cand[:, q0:q1]
        vals = torch.gather(s[:, None].expand(-1, q1 - q0, -1, -1), 2,
                            cq[..., None].expand(-1, -1, -1, D))  # (b, rows, M, D)
        rows = s[:, r0 + q0:r0 + q1]
        acc = torch.zeros(cq.shape, dtype=s.dtype, device=s.device)
        diff = torch.empty_like(acc)
        for t in range(D):
            torch.sub(rows[:, :, t:t + 1], vals[..., t], out=diff)
            diff.mul_(diff)
            acc.add_(diff)
        acc.masked_fill_(torch.isnan(acc), math.inf)
        # sort by (canonical distance, index): stable sorts, index first
        o1 = torch.sort(cq, dim=-1, stable=True).indices
        cq, acc = cq.gather(-1, o1), acc.gather(-1, o1)
        o2 = torch.sort(acc, dim=-1, stable=True).indices
        cands.append(cq.gather(-1, o2))
        accs.append(acc.gather(-1, o2))
    return torch.cat(cands, dim=1), torch.cat(accs, dim=1)


def _screened_topk(s, Kc, tile_bytes):
    """Screened top-Kc of every row of ``s`` (B, N, D), all values finite.

    A float64 screen |c_i|^2 + |c_j|^2 - 2 <c_i, c_j> on the sub-vectors centred on the image
    mean (batched matmuls, tiled, running top-(M + 1) with M = Kc - 1 + extra) proposes M
    candidates per row; their canonical distances are computed exactly as in
    :func:`_pairwise_sq_dist` and sorted by (distance, index). The result is certified when
    the smallest screened distance left out is provably larger than the (Kc - 1)-th canonical
    distance kept: with E_i = (2D + 12) u64 (|c_i|^2 + max_j |c_j|^2) the screen is within E_i
    (+ u64 S) of the exact squared distance S, and the canonical distance is at least
    S (1 - (D + 4) u) (u of the compute dtype). Returns (idx, certified) with ``certified``
    a (B, N) bool tensor; rows that are not certified must be redone exactly.
    """
    B, N, D = s.shape
    m = Kc - 1
    M = min(N - 1, m + SCREEN_EXTRA)
    device = s.device
    c = s.double()
    c = c - c.mean(dim=1, keepdim=True)
    nrm = (c * c).sum(-1)  # (B, N)
    u64 = torch.finfo(torch.float64).eps / 2
    u = torch.finfo(s.dtype).eps / 2
    eps = (2 * D + 12) * u64 * (nrm + nrm.amax(dim=1, keepdim=True)) * (1 + 1e-6)
    # few large tiles (the work is in matmuls and top-k, not in cache-bound element-wise ops)
    bt, rt, ct = _tile_shape(B, N, device, TILE_BYTES if tile_bytes is None else tile_bytes)
    keep = min(N, M + 2)  # self (forced first) + M candidates + the first one left out
    idx = torch.empty((B, N, Kc), dtype=torch.long, device=device)
    certified = torch.empty((B, N), dtype=torch.bool, device=device)
    for b0 in range(0, B, bt):
        b1 = min(B, b0 + bt)
        for r0 in range(0, N, rt):
            r1 = min(N, r0 + rt)
            rows = c[b0:b1, r0:r1]
            row_ids = torch.arange(r0, r1, device=device)
            best_v = best_i = None
            for c0 in range(0, N, ct):
                c1 = min(N, c0 + ct)
                # |c_j|^2 - 2 <c_i, c_j>: the row's own |c_i|^2 does not change its ranking
                # and is added to the kept values only
                scr = torch.baddbmm(
                    nrm[b0:b1, None, c0:c1], rows, c[b0:b1, c0:c1].transpose(1, 2), alpha=-2)
                col_ids = torch.arange(c0, c1, device=device)
                lo, hi = max(r0, c0), min(r1, c1)  # self: column == row
                if lo < hi:
                    diag = torch.arange(lo, hi, device=device)
                    scr[:, diag - r0, diag - c0] = -math.inf
                ids = col_ids.expand_as(scr)
                if best_v is not None:
                    scr = torch.cat([best_v, scr], dim=-1)
                    ids = torch.cat([best_i, ids], dim=-1)
                k = min(keep, scr.shape[-1])
                best_v, pos = scr.topk(k, dim=-1, largest=False, sorted=True)
                best_i = ids.gather(-1, pos)
            cand = best_i[..., 1:M + 1]  # drop self
            cand, acc = _canonical_sorted(s[b0:b1], r0, cand, tile_bytes)
            idx[b0:b1, r0:r1, 0] = row_ids
            idx[b0:b1, r0:r1, 1:] = cand[..., :m]
            if best_v.shape[-1] <= M + 1:  # every other patch is a candidate
                certified[b0:b1, r0:r1] = True
                continue
            left_out = best_v[..., M + 1] + nrm[b0:b1, r0:r1]
            lower = (left_out - eps[b0:b1, r0:r1]) * (1 - (D + 5) * u * 1.01)
            tiny = torch.finfo(s.dtype).smallest_normal * torch.finfo(s.dtype).eps
            lower = lower - 4 * (D + 4) * tiny  # subnormal canonical distances
            worst_kept = acc[..., m - 1].double()
            certified[b0:b1, r0:r1] = lower > worst_kept
    return idx, certified


@torch.no_grad()
def cluster(s, kernel_size, tile_bytes=None, method='screened'):
    """Cluster indices of the (B, N, D) sub-vectors ``s`` (float32 or float64, contiguous).

    Args:
        s (Tensor): sub-vectors in the compute dtype (:func:`.common.subvectors`).
        kernel_size (int): K, the cluster size (patch itself + K - 1 neighbours).
        tile_bytes (int, optional): bytes budget of one tile (capped at :data:`TILE_BYTES`);
            default: :data:`TILE_BYTES` for the screen, and for the exact evaluation 2 MiB
            on the CPU (cache-sized) and :data:`TILE_BYTES` elsewhere.
        method (str): ``'exact'`` evaluates the canonical distance of every pair (the
            reference); ``'screened'`` (default) screens, certifies and redoes what it cannot
            certify (see the module docstring). Both return the same indices.

    Returns:
        LongTensor: (B, N, min(K, N)) indices into the N patches of the same image.
    """
    if method not in ('exact', 'screened'):
        raise ValueError(f"method must be 'exact' or 'screened', got {method!r}")
    B, N, _ = s.shape
    Kc = min(kernel_size, N)
    device = s.device
    all_rows = torch.arange(N, device=device)
    if Kc == 1:
        return all_rows.expand(B, N)[..., None].clone()
    if method == 'exact':
        return _exact_topk(s, Kc, all_rows, tile_bytes)
    regular = torch.isfinite(s).flatten(1).all(dim=1)
    if s.dtype == torch.float64:  # keep the float64 screen far from overflow
        regular &= s.abs().flatten(1).amax(dim=1) < 1e100
    out = torch.empty((B, N, Kc), dtype=torch.long, device=device)
    reg = regular.nonzero().flatten().tolist()
    irr = (~regular).nonzero().flatten().tolist()
    for b in irr:
        out[b:b + 1] = _exact_topk(s[b:b + 1], Kc, all_rows, tile_bytes)
    if reg:
        sel = torch.tensor(reg, device=device)
        idx, certified = _screened_topk(s.index_select(0, sel), Kc, tile_bytes)
        out.index_copy_(0, sel, idx)
        if not bool(certified.all()):
            for q, b in enumerate(reg):
                redo = (~certified[q]).nonzero().flatten()
                if redo.numel():
                    out[b, redo] = _exact_topk(s[b:b + 1], Kc, redo, tile_bytes)[0]
    return out


def aggregate_forward(x, idx, weight, bias):
    """``bias + sum_k weight[k] * x[idx[..., k]]``, over k in increasing order, from the bias.

    ``x`` (B, N, C), ``idx`` (B, N, Kc) int64, ``weight`` (Kc, C), ``bias`` (C,) or None, all
    in the compute dtype; returns a new contiguous (B, N, C) tensor.
    """
    B, N, C = x.shape
    if bias is not None:
        out = bias.expand(B, N, C).clone(memory_format=torch.contiguous_format)
    else:
        out = x.new_zeros((B, N, C))
    for k in range(idx.shape[-1]):
        gathered = torch.gather(x, 1, idx[..., k:k + 1].expand(B, N, C))
        out.add_(gathered.mul_(weight[k]))
    return out


def _grad_x(grad_out, idx, weight, entries_per_chunk=None):
    """``grad_x[b, j] = sum of W[k] * grad_out[b, n]`` over the ``(n, k)`` with
    ``idx[b, n, k] = j``, deterministic by construction on every device.

    ``scatter_add_`` accumulates with atomics on CUDA: the adds into one element come in an
    order that changes from run to run, and so does their rounding (a segment sum that
    accumulates into each segment's target with ``index_add_`` has the same problem). Here no
    call ever adds twice into one element: the flat positions ``(b, n, k)`` are sorted stably
    by the patch they read (the inverse of ``idx``, as the Triton leaf builds it), so each
    patch's readers form one segment, in increasing ``(n, k)``. Each segment is summed by
    pairwise halving: at step ``s`` the entry of rank ``r`` with ``r % 2s == 0`` takes in the
    entry of rank ``r + s``, with ``index_add_`` over indices that are distinct (and none of
    them read in that step), so every element gets exactly one correctly rounded add, whichever
    thread does it; the head of each segment then holds the segment's sum. Every other op is
    a stable sort, a search, a gather or element-wise, so the result is bit-identical from run
    to run (under ``torch.use_deterministic_algorithms(True)`` too); it equals
    ``scatter_add_``'s up to float rounding (another summation order, a pairwise one).

    Memory: the sorted entries are taken in chunks of ``entries_per_chunk`` (default: what
    fits a tile of 2 MiB on the CPU, where it stays in cache, 32 MiB elsewhere, but beyond
    2 MiB no more than ``B * N / 2``, so that a chunk's two (entries, C) temporaries take no
    more than the (B, N, C) one ``scatter_add_`` needed per tap); a segment cut by a chunk
    boundary is summed per chunk and the parts added to ``grad_x`` in chunk order. The sort
    keeps two int64 per entry (``B * N * Kc``: twice the size of ``idx``).
    """
    B, N, C = grad_out.shape
    Kc = idx.shape[-1]
    device = grad_out.device
    total = B * N * Kc
    if entries_per_chunk is None:
        row = C * grad_out.element_size()
        tile = _CPU_TILE_BYTES if device.type == 'cpu' else TILE_BYTES
        entries_per_chunk = max(1, min(tile // row, max(B * N // 2, _CPU_TILE_BYTES // row)))
    target = (idx + torch.arange(B, device=device).view(B, 1, 1) * N).view(-1)
    keys, order = torch.sort(target, stable=True)
    starts = torch.searchsorted(keys, torch.arange(B * N + 1, device=device))
    go = grad_out.view(B * N, C)
    grad_x = torch.zeros_like(go)
    for e0 in range(0, total, entries_per_chunk):
        e1 = min(total, e0 + entries_per_chunk)
        pos, tgt = order[e0:e1], keys[e0:e1]
        vals = go.index_select(0, pos.div(Kc, rounding_mode='floor'))
        vals.mul_(weight.index_select(0, pos.remainder(Kc)))
        head = starts[tgt].clamp_(min=e0)  # where the entry's segment starts in this chunk
        rank = torch.arange(e0, e1, device=device) - head
        length = starts[tgt + 1].clamp_(max=e1) - head  # its length in this chunk
        live = torch.arange(e1 - e0, device=device)  # the ranks that are multiples of 2 * step
        step, longest = 1, int(length.max())
        while step < longest:
            live = live[rank[live].remainder(2 * step) == 0]
            adding = live[rank[live] + step < length[live]]
            vals.index_add_(0, adding, vals.index_select(0, adding + step))
            step *= 2
        heads = rank.eq(0).nonzero().flatten()  # one per segment (part) of this chunk
        grad_x.index_add_(0, tgt[heads], vals.index_select(0, heads))
    return grad_x.view(B, N, C)


def aggregate_backward(grad_out, x, idx, weight, need_x, need_w, need_b):
    """Gradients (grad_x, grad_weight, grad_bias) of :func:`aggregate_forward`; ``None`` for
    those not needed. Deterministic on every device (:func:`_grad_x`; the weight and bias
    gradients are reductions, which PyTorch computes in a fixed order)."""
    B, N, C = x.shape
    grad_out = grad_out.contiguous()
    grad_x = _grad_x(grad_out, idx, weight) if need_x else None
    grad_w = torch.zeros_like(weight, memory_format=torch.contiguous_format) if need_w else None
    if grad_w is not None:
        for k in range(idx.shape[-1]):
            index = idx[..., k:k + 1].expand(B, N, C)
            grad_w[k] = (grad_out * torch.gather(x, 1, index)).sum(dim=(0, 1))
    grad_b = grad_out.sum(dim=(0, 1)) if need_b else None
    return grad_x, grad_w, grad_b
