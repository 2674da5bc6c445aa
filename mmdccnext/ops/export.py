"""The export path of DCConv: clustering and aggregation written in standard ops only.

The fused C++ kernels cannot be traced, and the tiled PyTorch reference loops in Python over
data-dependent tiles and row subsets, so neither can be exported. This path expresses the
same contract (:mod:`mmdccnext.ops.dcconv`: canonical direct-difference distances, patch
itself first, then ascending ``(distance, index)``) with operators that every ONNX runtime
has (MatMul, ReduceMin/ReduceSum, TopK, Gather, element-wise arithmetic, ``If``, ``Scan``),
and returns the *same indices* as the other paths, not approximately the same ones.

**Bounded memory.** The N x N matrix is never built. The rows are processed in blocks of at
most :data:`ROW_BLOCK` (fixed when the graph is recorded: of equal length for a fixed size,
of ROW_BLOCK with padding rows for a symbolic one, :func:`_row_blocks`), one at a time: a
(B, ROW_BLOCK, N) screen and its top-k live at once, so memory grows with N * ROW_BLOCK.
Exported (``torch.export``, the dynamo ONNX exporter) the loop over the blocks is one ONNX
``Scan``, so the graph has the same size for any N and the input size can stay symbolic;
in eager mode and under ``torch.jit.trace`` it is a Python loop (traced: unrolled for the
traced size).

Clustering of the (B, N, D) sub-vectors ``s`` with cluster size ``Kc = min(K, N)``,
``m = Kc - 1`` neighbours, ``M = m + SCREEN_EXTRA`` and ``T = M + 2``:

1. Screen, per row block (MatMul): with the sub-vectors centred on the image mean,
   ``c = s - mean``, and ``n_j = |c_j|^2``, one MatMul of ``[c_i, 1]`` with
   ``[-2 c_j, n_j]`` gives ``scr[i, j] = n_j - 2 <c_i, c_j>`` (``scr + n_i`` approximates the
   squared distance, in any summation order, FMA or not: the bound of step 4 holds for all).
   Two-level top-k: the columns, padded with ``+inf``, form groups of :data:`COL_GROUP`; a
   ReduceMin gives each group's minimum, a TopK the ``T`` groups with the smallest minima, a
   second TopK the ``T`` smallest values among their elements. Those are ``T`` smallest
   screened values of the row (the ``T`` group minima are ``T`` distinct elements of the
   chosen groups, so no element of another group is below the ``T``-th value found), at a
   cost of ``N / COL_GROUP + T * COL_GROUP`` per row instead of a TopK over ``N`` (ONNX
   Runtime's TopK costs microseconds per row). They are the candidates (the patch itself
   usually among them), and every other patch has a screened value ``>= beta``, the
   largest of theirs. A group's members lie side by side in the MatMul's output, so that
   the ReduceMin runs over its last axis and a chosen group is read as one row: ONNX
   Runtime clustered N = 4000, D = 40, K = 12 in 41 ms, against 48 ms with the members
   strided over the columns and reduced over a middle axis (AMD EPYC Zen 4, 1 thread).
2. Canonical distances of the candidates only, for all rows at once ((B, N, T) values,
   linear in N): Gathers + the fixed chain of separately rounded Sub, Mul, Add over the
   sub-vector channels in increasing order, NaN -> +inf; the patch itself gets +inf (it is
   put first anyway). Exported, the chain is an ONNX ``Scan`` over the channels (sequential
   by definition); a reduction (ReduceSum, MatMul) would leave the order, and so the
   rounding, to the runtime.
3. Order the candidates by (canonical distance, index): sort by index, then a sort of the
   distances that keeps the lower position first on ties (ONNX TopK by its specification,
   a stable sort in PyTorch).
4. Certificate. With ``u`` the unit roundoff of the compute dtype and
   ``E_i = (3D + 12) u (n_i + max_j n_j)``, the screen of every pair (plus ``n_i``) is within
   ``E_i + u S`` of the exact squared distance ``S``: the centring costs
   ``2u (n_i + n_j) + u S``, the norms ``D u`` each and the augmented dot product of
   ``D + 1`` terms ``(D + 1) u (n_i + 2 n_j)`` to first order; the constant leaves ``8 u``
   for the higher-order terms. The canonical distance is at least ``S (1 - (D + 4) u)``.
   Every patch that is not a candidate has a screened value ``>= beta``, so its canonical
   distance is at least
   ``lower = (beta + n_i - E_i) (1 - (D + 5) u) - 4 (D + 4) denorm_min`` (the last term:
   underflow of the screen and of the canonical sums). If ``lower`` exceeds the m-th
   canonical distance kept, no patch left out can enter the cluster, ties included. The
   bound is evaluated in float64, per row; an image with non-finite values or norms near
   overflow certifies none of its rows.
5. Rows that are not certified (near-ties, e.g. duplicated patches; NaN / inf) are redone
   exactly, per row block: the canonical distance of the block's rows to every patch (a
   (B, ROW_BLOCK, N) chain) sorted by (distance, index). Exported, a block with nothing to
   redo costs an ``If`` (``torch.cond``) that the runtime does not enter, and the whole
   second loop sits in an ``If`` that is skipped when every row is certified.

The sort of step 5 and the exact path for N < T order N values that may tie exactly. In
ONNX this is a TopK, whose specification breaks ties by the lower index (ONNX Runtime
implements exactly that); in PyTorch it is a stable sort (``torch.topk`` promises no tie
order).

The legacy TorchScript-based ONNX exporter (``torch.onnx.export(..., dynamo=False)``) and
``torch.jit.trace`` cannot record ``torch.cond`` or ``Scan``; under them the clustering
takes the exact route of step 5 for every block, unrolled for the traced size (same
indices, N x N x D work, memory still N * ROW_BLOCK).

Aggregation: ``out = bias; for k: out = out + x[idx[..., k]] * W[k]``, one Gather, Mul and
Add per tap, unrolled (``Kc`` is fixed); the order and roundings of the other paths
(bit-identical outputs in PyTorch). Exported, it runs over blocks of
:data:`AGGREGATE_ROW_BLOCK` rows in a second ``Scan``, so that a runtime's running sums and
gathered taps are a block's; the stacked blocks and their reordering into rows are the
(B, N, C)-sized tensors it adds. One DCConv layer (C = 160, K = 12, N = 10000) in ONNX
Runtime: 37 -> 31 MiB extra peak memory (1.66x -> 1.37x the eager layer's), AMD EPYC Zen 4,
1 thread.
"""
import math

import torch

try:  # the loop primitive of torch.export (a private module, hence the fallback)
    from torch._higher_order_ops.scan import scan
except ImportError:  # pragma: no cover - other torch versions: unrolled steps
    scan = None

#: Rows per block of the exported clustering, fixed when the graph is recorded: the largest
#: temporaries are (B, ROW_BLOCK, N) screens and distances.
ROW_BLOCK = 128
#: Rows per block of the exported aggregation (a ``Scan`` over row blocks): its temporaries are
#: (B, AGGREGATE_ROW_BLOCK, C) taps and sums, and the (B, N, C) output is written once.
AGGREGATE_ROW_BLOCK = 512
#: Columns per group of the screen's two-level top-k.
COL_GROUP = 16
#: Candidates the screen keeps beyond the K - 1 neighbours and the patch itself: fewer than
#: the PyTorch path's (:data:`.common.SCREEN_EXTRA`), as ONNX Runtime's TopK costs grow
#: with k; a row whose candidates cannot be certified is redone exactly all the same.
SCREEN_EXTRA = 2


def _can_record_hops():
    """``torch.cond`` and ``scan`` are recorded by ``torch.export`` (the dynamo ONNX
    exporter), not by TorchScript tracing."""
    return torch.compiler.is_exporting() and not torch.jit.is_tracing() and scan is not None


def _loop(step, first, xs, use_scan):
    """``acc = first; for t: acc = step(acc, *(x[t] for x in xs))`` over the leading axis of
    the tensors ``xs``, in order. ``use_scan``: one ONNX ``Scan`` (sequential by
    definition), else a Python loop (unrolled when traced)."""
    if use_scan:

        def body(acc, x):
            # the scan primitive needs a per-step output; a scalar costs nothing
            return step(acc, *x), acc.new_zeros(())

        # the loop carry must keep the layout of its initial value
        return scan(body, first.contiguous(), tuple(x.contiguous() for x in xs))[0]
    acc = first
    for t in range(xs[0].shape[0]):
        acc = step(acc, *(x[t] for x in xs))
    return acc


def _map_blocks(fn, xs, use_scan):
    """``fn(*block)`` (a tuple of tensors) for every block along the leading axis of the
    tensors ``xs``; each output stacked along a new leading axis. ``use_scan``: one ONNX
    ``Scan``, else a Python loop."""
    if use_scan:

        def body(carry, block):
            return carry.clone(), tuple(fn(*block))

        return tuple(scan(body, xs[0].new_zeros(()), tuple(x.contiguous() for x in xs))[1])
    outs = [fn(*(x[i] for x in xs)) for i in range(xs[0].shape[0])]
    return tuple(torch.stack(o) for o in zip(*outs))


def _row_blocks(N, device, static, block=ROW_BLOCK):
    """(nb, R) row ids covering 0 .. N - 1 in order, R <= ``block``, the rest padded with
    N - 1 (results dropped). ``static`` (N is a plain int where :func:`cluster` starts:
    eager, tracing, an export with a fixed size): blocks of equal length without padding.
    Otherwise nb = N // block + 2 blocks of ``block``: one more than needed at most, but
    provably more than one for every N, as ``torch.export`` would otherwise guard against
    one block (size-1 broadcasting) and so fix the input size's range. (Decided once, in
    :func:`cluster`: inside a traced loop or branch the size may show as an int.)"""
    if static:
        nb = -(-N // block)
        R = -(-N // nb)
    else:
        nb, R = N // block + 2, block
    ids = torch.arange(nb, device=device)[:, None] * R
    return (ids + torch.arange(R, device=device)).clamp(max=N - 1)


def _unblocked(t, N):
    """(nb, B, R, ...) block results back to (B, N, ...) (the padding rows dropped)."""
    t = t.transpose(0, 1).flatten(1, 2)
    return t.index_select(1, torch.arange(N, device=t.device))


def _smallest_k(values, k, onnx_topk):
    """Positions of the k smallest values along the last axis, ties -> lower position."""
    if onnx_topk:
        # ONNX TopK: "the element with the lower index will appear first"
        return torch.topk(values, k, dim=-1, largest=False, sorted=True).indices
    order = torch.sort(values, dim=-1, stable=True).indices
    # index_select, not a slice: torch.export cannot slice this sort's output inside cond
    return order.index_select(-1, torch.arange(k, device=values.device))


def _dense_copy(t):
    """A copy with contiguous strides: both branches of ``torch.cond`` must return dense
    tensors (a size-1 dimension can carry any stride)."""
    return t.clone(memory_format=torch.contiguous_format)


def _nan_to_inf(acc):
    # scalar fill values, never full_like: with static shapes ONNX Runtime folds a full_like
    # into a constant of the block's size, held by the session (34 MiB for B2 at 1280x800)
    return torch.where(torch.isnan(acc), math.inf, acc)


def _add_square(acc, a, b):
    """One step of the canonical chain: ``acc + (a - b) * (a - b)``, each op rounded."""
    diff = a - b
    return acc + diff * diff


def _exact_rows(s, rid, Kc, onnx_topk, use_scan):
    """Canonical top-Kc of the rows ``rid`` (R,) of every image of ``s`` (B, N, D): the
    canonical distance to every patch (a (B, R, N) chain over the channels), the patch
    itself first, then (distance, index). Returns (B, R, Kc)."""
    st = s.permute(2, 0, 1)  # (D, B, N)
    rows = st.index_select(2, rid)  # (D, B, R)

    def step(acc, r_t, c_t):
        return _add_square(acc, r_t[:, :, None], c_t[:, None, :])

    diff = rows[0][:, :, None] - st[0][:, None, :]
    acc = diff * diff  # (B, R, N): acc = 0 + first term, exactly
    if st.shape[0] > 1:
        acc = _loop(step, acc, (rows[1:], st[1:]), use_scan)
    dist = _nan_to_inf(acc)
    is_self = rid[:, None] == torch.arange(s.shape[1], device=s.device)
    dist = torch.where(is_self, -1.0, dist)
    return _smallest_k(dist, Kc, onnx_topk)


def _exact_blocked(s, Kc, onnx_topk, use_scan, static):
    """Step 5 for every row, one row block at a time: (B, N, Kc)."""
    N = s.shape[1]
    out, = _map_blocks(lambda rid: (_exact_rows(s, rid, Kc, onnx_topk, use_scan), ),
                       (_row_blocks(N, s.device, static), ), use_scan)
    return _unblocked(out, N)


def _groups(N):
    """Column groups of the screen for N patches: N // COL_GROUP + 2, so that the last group
    is padding only and there are two groups or more for every N (torch.export would
    otherwise guard against a single group and so fix the input size's range)."""
    return N // COL_GROUP + 2


def _screen_block(rid, rows, cols, T, pad):
    """Step 1 for the rows ``rid`` (R,): ``rows`` (B, N, D + 1) = ``[c_i, 1]``, ``cols``
    (B, ng, D + 1, COL_GROUP) = ``[-2 c_j; n_j]`` of column ``g * COL_GROUP + j`` at
    ``[:, g, :, j]``, the last group padding only (``+inf``, :func:`_screen_operands`).
    ``pad``: add padding groups, so that T groups exist for any N >= T. Returns the T
    candidates (B, R, T), as column ids, and ``beta`` (B, R), the largest of their screened
    values: no other column's is smaller."""
    B, ng, _, G = cols.shape
    R = rid.shape[0]
    # (B, ng, R, G): a group's members side by side, so that its minimum is a ReduceMin over
    # the last axis (ONNX Runtime reduces a middle axis at half the speed). A batched MatMul,
    # not a view of a (B, R, ng * G) one: inside the loop torch.export cannot prove the view
    scr = torch.matmul(rows.index_select(1, rid)[:, None], cols)
    group_min = scr.amin(-1).transpose(1, 2)  # (B, R, ng)
    if pad:  # padding groups, resolved to the last group below
        group_min = torch.cat([group_min, group_min.new_full((B, R, T), math.inf)], dim=-1)
    groups = torch.topk(group_min, T, dim=-1, largest=False, sorted=False).indices
    # a padding group reads the last group: padding only, its values +inf like its own
    groups = groups.clamp(max=ng - 1)  # (B, R, T)
    # the chosen groups' members: whole groups as rows of the (B * ng * R, G) matrix (one
    # Gather of G values per group; GatherElements would need a (B, R, T, G) index)
    first = (torch.arange(B, device=scr.device) * (ng * R)).view(B, 1, 1)
    first = first + torch.arange(R, device=scr.device).view(1, R, 1)
    rows_of = (groups * R + first).reshape(-1)
    vals = scr.flatten(0, 2).index_select(0, rows_of).view(B, R, T * G)
    # the T smallest, in any order (sorting them would cost more per row than it saves)
    vals, pos = torch.topk(vals, T, dim=-1, largest=False, sorted=False)
    # back to column ids: member pos % G of chosen group pos // G
    slot = torch.div(pos, G, rounding_mode='floor')
    return torch.gather(groups, 2, slot) * G + (pos - slot * G), vals.amax(-1)


def _screen_operands(s):
    """The screen's MatMul operands from the centred sub-vectors: rows (B, N, D + 1) and
    columns (B, ng, D + 1, COL_GROUP) (:func:`_screen_block`; column ids from N on hold a
    padding column), and the squared norms n (B, N)."""
    B, N, D = s.shape
    c = s - s.mean(dim=1, keepdim=True)
    nrm = (c * c).sum(-1)  # (B, N)
    rows = torch.cat([c, torch.ones_like(nrm)[..., None]], dim=-1)
    cols = torch.cat([-2 * c, nrm[..., None]], dim=-1)
    # one padding column (zeros, infinite norm) for every column id >= N
    padding = torch.cat([s.new_zeros(B, 1, D), s.new_full((B, 1, 1), math.inf)], dim=-1)
    cols = torch.cat([cols, padding], dim=1)
    # (ng, COL_GROUP) column ids from aranges: a reshape of a symbolic size would need a
    # divisibility proof from torch.export
    col_src = torch.arange(_groups(N), device=s.device)[:, None] * COL_GROUP
    col_src = (col_src + torch.arange(COL_GROUP, device=s.device)).clamp(max=N)
    return rows, cols[:, col_src].transpose(2, 3), nrm


def _candidate_distances(s, cand, use_scan):
    """Step 2: canonical distances (B, N, Mc) from every patch of ``s`` (B, N, D) to its
    candidates ``cand`` (B, N, Mc): per channel, two flat gathers of B * N * Mc values."""
    B, N, Mc = cand.shape
    st = s.permute(2, 0, 1).reshape(s.shape[2], B * N)  # (D, B * N)
    offsets = (torch.arange(B, device=s.device) * N)[:, None, None]
    cols = (cand + offsets).reshape(-1)
    rows = (torch.arange(B * N, device=s.device)[:, None].expand(B * N, Mc)).reshape(-1)

    def step(acc, s_t):
        # gather, not index_select: ONNX GatherElements; ONNX Runtime's Gather copies one
        # value per index like a block (several times slower here)
        return _add_square(acc, torch.gather(s_t, 0, rows), torch.gather(s_t, 0, cols))

    acc = step(torch.zeros(cols.shape, dtype=s.dtype, device=s.device), st[0])
    if st.shape[0] > 1:
        acc = _loop(step, acc, (st[1:], ), use_scan)
    return _nan_to_inf(acc).reshape(B, N, Mc)


def _screened(s, Kc, onnx_topk, use_scan, static=True):
    """Steps 1-4: (B, N, Kc) indices and which rows are certified (B, N)."""
    B, N, D = s.shape
    m = Kc - 1
    T = m + SCREEN_EXTRA + 2
    rows, cols, nrm = _screen_operands(s)
    # decided here: inside the loop a symbolic size may show as an int
    pad = not static or _groups(N) < T
    cand, beta = _map_blocks(lambda rid: _screen_block(rid, rows, cols, T, pad),
                             (_row_blocks(N, s.device, static), ), use_scan)
    cand = _unblocked(cand, N).clamp(max=N - 1)  # (B, N, T); clamp: non-finite inputs
    beta = _unblocked(beta, N)
    dist = _candidate_distances(s, cand, use_scan)
    self_ids = torch.arange(N, device=s.device)
    dist = torch.where(cand == self_ids[:, None], math.inf, dist)
    # order by (distance, index): by index first, then a sort that keeps ties in place
    by_index = _smallest_k(cand, T, onnx_topk)
    cand, dist = torch.gather(cand, 2, by_index), torch.gather(dist, 2, by_index)
    order = _smallest_k(dist, m, onnx_topk)
    kept = torch.gather(cand, 2, order)
    worst_kept = torch.gather(dist, 2, order.narrow(2, m - 1, 1))[..., 0]
    idx = torch.cat([self_ids.expand(B, N)[..., None], kept], dim=-1)
    # certificate, in float64
    info = torch.finfo(s.dtype)
    u = info.eps / 2
    tiny = info.smallest_normal * info.eps
    n64 = nrm.double()
    n_max = n64.amax(dim=1, keepdim=True)
    eps = (3 * D + 12) * u * (n64 + n_max) * (1 + 1e-6)
    lower = (beta.double() + n64 - eps) * (1 - (D + 5) * u * 1.01) - 4 * (D + 4) * tiny
    regular = torch.isfinite(s).flatten(1).all(dim=1) & (n_max[:, 0] < info.max / 16)
    certified = (lower > worst_kept.double()) & regular[:, None]
    return idx, certified


def _redo_uncertified(s, idx, certified, Kc, onnx_topk, use_scan, static):
    """Step 5: the rows of ``idx`` (B, N, Kc) that are not ``certified`` (B, N), redone
    exactly, block by block (blocks without such a row are kept as they are)."""
    N = s.shape[1]

    def exact(idx_b, cert_b, rid, s):
        return torch.where(cert_b[..., None], idx_b, _exact_rows(s, rid, Kc, onnx_topk, use_scan))

    def redo(rid):
        # the block's rows read inside the loop (index_select): no (nb, B, R, ...) copies
        idx_b, cert_b = idx.index_select(1, rid), certified.index_select(1, rid)
        if use_scan:
            return (torch.cond(cert_b.all(), lambda i, c, r, s: _dense_copy(i), exact,
                               (idx_b, cert_b, rid, s)), )
        return (idx_b if bool(cert_b.all()) else exact(idx_b, cert_b, rid, s), )

    out, = _map_blocks(redo, (_row_blocks(N, s.device, static), ), use_scan)
    return _unblocked(out, N)


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
    # decided here, not inside the branches: torch.cond traces its branches with dynamo, to
    # which is_in_onnx_export() is always False
    onnx_topk = torch.onnx.is_in_onnx_export()
    use_scan = _can_record_hops()
    static = isinstance(N, int)  # the row blocks' layout (:func:`_row_blocks`)
    if N < Kc + SCREEN_EXTRA + 1 or (torch.jit.is_tracing() and not use_scan):
        return _exact_blocked(s, Kc, onnx_topk, use_scan, static)
    idx, certified = _screened(s, Kc, onnx_topk, use_scan, static)
    if use_scan:
        return torch.cond(
            certified.all(), lambda idx, c, s: _dense_copy(idx),
            lambda idx, c, s: _redo_uncertified(s, idx, c, Kc, onnx_topk, use_scan, static),
            (idx, certified, s))
    if bool(certified.all()):
        return idx
    return _redo_uncertified(s, idx, certified, Kc, onnx_topk, use_scan, static)


def _weighted_taps(flat, taps, weight, bias):
    """``bias + flat[taps[0]] * weight[0] + ... + flat[taps[Kc - 1]] * weight[Kc - 1]``,
    summed from the bias in this order, each product and sum rounded once: (M, C) for the
    (Kc, M) row ids ``taps`` into the (rows, C) matrix ``flat``. One Gather, Mul and Add per
    tap, unrolled."""
    out = flat.index_select(0, taps[0]) * weight[0]
    if bias is not None:
        out = bias + out
    for k in range(1, taps.shape[0]):
        # ``+ out[:0].sum()`` (an exact 0) makes tap k's Gather wait for the sum of the taps
        # before it: without it, ONNX Runtime's graph optimiser runs all Gathers first and
        # holds Kc gathered taps at once (measured: 170 instead of 42 MB for unblocked rows at
        # N = 10000, C = 160, K = 12)
        tap = taps[k] + out[:0].sum().to(taps.dtype)
        out = out + flat.index_select(0, tap) * weight[k]
    return out


def aggregate(x, idx, weight, bias=None):
    """Convolution over the clusters in standard ops (Gather, Mul, Add); (B, N, C) out.

    Inputs in the compute dtype, ``weight`` (Kc, C); summation order as in every other path
    (bit-identical outputs in PyTorch): :func:`_weighted_taps`. Exported (``torch.export``,
    the dynamo ONNX exporter) the rows are taken in blocks of :data:`AGGREGATE_ROW_BLOCK`,
    one ONNX ``Scan``: a runtime then holds a block's running sum and gathered tap, and writes
    the (B, N, C) output once (unblocked, ONNX Runtime held the running sum, a gathered tap,
    their product and the next sum, four (B, N, C) tensors, with the same arithmetic). The
    exported blocks are detached (ONNX has no gradient; ``torch.export`` with gradients
    enabled and anything else - eager, tracing - computes all rows at once, differentiably).
    """
    B, N, C = x.shape
    Kc = idx.shape[-1]
    rows = idx + (torch.arange(B, device=x.device) * N)[:, None, None]  # (B, N, Kc) in flat
    flat = x.reshape(B * N, C)
    exported = _can_record_hops() and (torch.onnx.is_in_onnx_export()
                                       or not torch.is_grad_enabled())
    if not exported:
        taps = rows.permute(2, 0, 1).reshape(Kc, B * N)  # tap-major
        return _weighted_taps(flat, taps, weight, bias).reshape(B, N, C)
    # the scan primitive cannot record tensors that require gradients
    flat, weight = flat.detach(), weight.detach()
    bias = bias.detach() if bias is not None else None

    def block(rid):
        # the block's row ids read inside the loop (index_select): no (nb, ...) copies
        # -1, not B * R: inside the scan a symbolic size cannot be passed to reshape
        taps = rows.index_select(1, rid).permute(2, 0, 1).reshape(Kc, -1)
        return (_weighted_taps(flat, taps, weight, bias).reshape(B, -1, C), )

    blocks = _row_blocks(N, x.device, isinstance(N, int), AGGREGATE_ROW_BLOCK)
    out, = _map_blocks(block, (blocks, ), True)
    return _unblocked(out, N)
