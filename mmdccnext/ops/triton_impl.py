"""Triton kernels of DCConv: clustering, aggregation forward and a deterministic backward.

A leaf: it imports only ``torch`` and ``triton`` and knows nothing of the other paths. The
caller (the op seam) validates the arguments and passes:

* tensors on one CUDA device (CPU tensors only under the interpreter), floating ones in the
  compute dtype - float32, or float64 for float64 inputs; float16 / bfloat16 are upcast to
  float32 by the caller, and the results (in the compute dtype) cast back by it. Contiguous
  is best (the leaf calls ``.contiguous()``, a copy otherwise);
* ``idx`` int64 with values in ``[0, N)`` - not checked here (a device-wide check would
  synchronise); an index out of range reads out of bounds;
* ``weight`` (K, C) with K >= ``Kc = idx.shape[-1]``; the taps past Kc are unused and their
  gradient is zero (as in the C++ leaf).

The functions raise ValueError on a wrong dtype or shape rather than converting.

Contract (the same as every other path; the op package :mod:`mmdccnext.ops` states it):

* canonical squared distance by direct differences summed over the D sub-vector channels in
  increasing order, each operation rounded separately: every launch passes
  ``enable_fp_fusion=False`` so the compiler cannot contract ``acc + d * d`` into an FMA;
* NaN distance counts as ``+inf``; the cluster of ``n`` is ``n`` first, then the ``Kc - 1``
  other patches in ascending ``(distance, index)``; ``Kc = min(K, N)``;
* aggregation ``y = bias + sum_k W[k] * x[idx[..., k]]`` in increasing ``k``, from the bias
  (0 without one), one rounding per multiply and per add;
* the backward uses no atomics: ``grad_x`` is gathered per patch through the inverse of
  ``idx`` (contributions in increasing ``(n, k)``), ``grad_w`` / ``grad_b`` are per-block
  partial sums reduced in increasing block order. Bit-identical from run to run.

Clustering design: one program per (image, block of ``_CLUSTER_BLOCK_M`` rows) walks the
columns in tiles of ``_CLUSTER_BLOCK_N``; the distance tile is built in registers (D loop
inside, sub-vectors transposed to (B, D, N) so both loads are contiguous) and merged into a
running top-(Kc - 1) of the row, so there is no N x N buffer. float32: each candidate is one
int64 key ``(distance bits << 32) | index`` (distance >= 0 or +inf, so its bits order like the
value; keys are unique, so ordering needs no tie rule). The patch itself never enters the
merge (it is written first), so no key has to be forced to the minimum. The kept set is
unsorted; a tile element replaces the kept maximum when it is smaller, the tile's elements
being taken in ascending order and only as many times as the most populated row of the block
has elements below its current maximum (few, once the kept set has settled), and the kept
set is sorted once at the end (no ``tl.sort`` / ``tl.topk``: ``tl.topk`` returns values only
and needs a power-of-two k; here the kept set has ``KP`` = next power of two slots, the ones
past ``Kc - 1`` inert). float64: the distance needs its 64 bits, so the same merge
runs on two keys (distance bits, index) compared lexicographically - the float64 case is
handled here (exact), not routed elsewhere; it is slower and mainly for tests.

Without CUDA the kernels run only under Triton's interpreter, which must be switched on
(``TRITON_INTERPRET=1``) before this module is imported: ``triton.jit`` decides at
decoration time. :func:`available` says whether they can run here.
"""
import os

import torch

try:
    import triton
    import triton.language as tl
except Exception as exc:  # noqa: BLE001 - any failure means "no Triton here"
    triton = tl = None
    _IMPORT_ERROR = f'{type(exc).__name__}: {exc}'
else:
    _IMPORT_ERROR = None

__all__ = ['available', 'cluster', 'aggregate_forward', 'aggregate_backward']

# Block sizes (module constants, not arguments, so the interface matches the C++ leaf; the
# tests shrink them to get several tiles out of small inputs). Not tuned: no GPU measured
# them; 32 x 64 distance tiles and 32 x 64 aggregation blocks are ordinary choices.
_CLUSTER_BLOCK_M = 32
_CLUSTER_BLOCK_N = 64
_AGG_BLOCK_N = 32
_AGG_BLOCK_C = 64
_REDUCE_BLOCK = 256
_NUM_WARPS = 4

_INT64_MAX = 2**63 - 1
_INT64_MIN = -2**63

if triton is not None:
    _KEY_MAX = tl.constexpr(_INT64_MAX)
    _KEY_MIN = tl.constexpr(_INT64_MIN)
    _LOW32 = tl.constexpr(0xFFFFFFFF)

    @triton.jit
    def _cluster_kernel(st_ptr, out_ptr, N, D, Kc, M: tl.constexpr, KP: tl.constexpr,
                        PACKED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """Rows ``pid_m`` block of image ``b``: the M = Kc - 1 nearest other patches.

        ``st`` (B, D, N) sub-vectors, ``out`` (B, N, Kc). ``KP`` = next power of two >= M
        slots; slots >= M are fillers that are never the maximum and are dropped at the end.
        """
        pid_m = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < N
        s_base = st_ptr + b * D * N
        slot = tl.arange(0, KP).to(tl.int64)
        is_slot = (slot < M)[None, :]
        # kept keys: real slots start at distinct sentinels above every real key (so the
        # kept maximum is unique), fillers at distinct values below everything
        zk = tl.zeros((BLOCK_M, KP), dtype=tl.int64)
        start = tl.where(is_slot, _KEY_MAX - 1 - slot[None, :], _KEY_MIN + slot[None, :]) + zk
        if PACKED:
            kept_h = start
        else:  # the same order on the second key, the first one at its extremes
            kept_h = tl.where(is_slot, _KEY_MAX + zk, _KEY_MIN + zk)
            kept_l = start
        for c0 in range(0, N, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N)
            cmask = cols < N
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=st_ptr.dtype.element_ty)
            for t in range(0, D):
                a = tl.load(s_base + t * N + rows, mask=rmask, other=0.)
                c = tl.load(s_base + t * N + cols, mask=cmask, other=0.)
                diff = a[:, None] - c[None, :]
                acc = acc + diff * diff
            acc = tl.where(acc != acc, float('inf'), acc)  # NaN -> +inf
            # the patch itself and the columns past N never enter the kept set
            out_of_play = (rows[:, None] == cols[None, :]) | (cols >= N)[None, :]
            colk = cols.to(tl.int64)[None, :] + tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int64)
            if PACKED:
                bits = acc.to(tl.int32, bitcast=True).to(tl.int64)
                tile_h = tl.where(out_of_play, _KEY_MAX, (bits << 32) | colk)
                thr = tl.max(kept_h, axis=1)
                below = tile_h < thr[:, None]
            else:
                bits = acc.to(tl.int64, bitcast=True)
                tile_h = tl.where(out_of_play, _KEY_MAX, bits)
                tile_l = tl.where(out_of_play, _KEY_MAX, colk)
                th = tl.max(kept_h, axis=1)
                tlo = tl.max(tl.where(kept_h == th[:, None], kept_l, _KEY_MIN), axis=1)
                below = (tile_h < th[:, None]) | ((tile_h == th[:, None]) & (tile_l < tlo[:, None]))
            # Insertions needed: at most M per row, and no more than the row has elements
            # below its current maximum (taken in ascending order, the thresholds only fall).
            n_iter = tl.minimum(tl.max(tl.sum(below.to(tl.int32), axis=1), axis=0), M)
            for _ in range(0, n_iter):
                if PACKED:
                    m = tl.min(tile_h, axis=1)
                    thr = tl.max(kept_h, axis=1)
                    put = (kept_h == thr[:, None]) & (m < thr)[:, None]
                    kept_h = tl.where(put, m[:, None], kept_h)
                    tile_h = tl.where(tile_h == m[:, None], _KEY_MAX, tile_h)
                else:
                    mh = tl.min(tile_h, axis=1)
                    ml = tl.min(tl.where(tile_h == mh[:, None], tile_l, _KEY_MAX), axis=1)
                    th = tl.max(kept_h, axis=1)
                    tlo = tl.max(tl.where(kept_h == th[:, None], kept_l, _KEY_MIN), axis=1)
                    smaller = (mh < th) | ((mh == th) & (ml < tlo))
                    put = (kept_h == th[:, None]) & (kept_l == tlo[:, None]) & smaller[:, None]
                    kept_h = tl.where(put, mh[:, None], kept_h)
                    kept_l = tl.where(put, ml[:, None], kept_l)
                    taken = (tile_h == mh[:, None]) & (tile_l == ml[:, None])
                    tile_h = tl.where(taken, _KEY_MAX, tile_h)
                    tile_l = tl.where(taken, _KEY_MAX, tile_l)
        # write: the patch itself, then the kept keys in ascending order (fillers dropped)
        o_base = out_ptr + (b * N + rows.to(tl.int64)) * Kc
        tl.store(o_base, rows.to(tl.int64), mask=rmask)
        kept_h = tl.where(is_slot, kept_h, _KEY_MAX)
        if not PACKED:
            kept_l = tl.where(is_slot, kept_l, _KEY_MAX)
        for j in tl.static_range(M):
            if PACKED:
                m = tl.min(kept_h, axis=1)
                tl.store(o_base + 1 + j, m & _LOW32, mask=rmask)
                kept_h = tl.where(kept_h == m[:, None], _KEY_MAX, kept_h)
            else:
                mh = tl.min(kept_h, axis=1)
                ml = tl.min(tl.where(kept_h == mh[:, None], kept_l, _KEY_MAX), axis=1)
                tl.store(o_base + 1 + j, ml, mask=rmask)
                taken = (kept_h == mh[:, None]) & (kept_l == ml[:, None])
                kept_h = tl.where(taken, _KEY_MAX, kept_h)
                kept_l = tl.where(taken, _KEY_MAX, kept_l)

    @triton.jit
    def _agg_fwd_kernel(x_ptr, idx_ptr, w_ptr, b_ptr, y_ptr, N, C, Kc, HAS_BIAS: tl.constexpr,
                        KP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
        pid_n = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        grow = b * N + rows.to(tl.int64)  # row in the flattened (B * N) tokens
        ks = tl.arange(0, KP)
        # the block's indices, loaded once and reused for every channel block
        idx_tile = tl.load(
            idx_ptr + grow[:, None] * Kc + ks[None, :],
            mask=rmask[:, None] & (ks < Kc)[None, :],
            other=0)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            cmask = cols < C
            m2 = rmask[:, None] & cmask[None, :]
            if HAS_BIAS:
                # broadcast, not 0 + bias: keeps a -0.0 bias bit-exact
                acc = tl.broadcast_to(
                    tl.load(b_ptr + cols, mask=cmask, other=0.)[None, :], (BLOCK_N, BLOCK_C))
            else:
                acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=y_ptr.dtype.element_ty)
            for k in range(0, Kc):
                src = b * N + tl.sum(tl.where(ks[None, :] == k, idx_tile, 0), axis=1)
                w = tl.load(w_ptr + k * C + cols, mask=cmask, other=0.)
                xv = tl.load(x_ptr + src[:, None] * C + cols[None, :], mask=m2, other=0.)
                acc = acc + w[None, :] * xv
            tl.store(y_ptr + grow[:, None] * C + cols[None, :], acc, mask=m2)

    @triton.jit
    def _agg_partials_kernel(go_ptr, x_ptr, idx_ptr, pw_ptr, pb_ptr, N, C, Kc, NEED_W: tl.constexpr,
                             NEED_B: tl.constexpr, KP: tl.constexpr, BLOCK_N: tl.constexpr,
                             BLOCK_C: tl.constexpr):
        """Per row block p: pw[p, k, c] = sum_n go[n, c] x[idx[n, k], c], pb[p, c] = sum_n go."""
        pid_n = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        p = b * tl.num_programs(0) + pid_n
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        grow = b * N + rows.to(tl.int64)
        ks = tl.arange(0, KP)
        idx_tile = tl.load(
            idx_ptr + grow[:, None] * Kc + ks[None, :],
            mask=rmask[:, None] & (ks < Kc)[None, :],
            other=0)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            cmask = cols < C
            m2 = rmask[:, None] & cmask[None, :]
            go = tl.load(go_ptr + grow[:, None] * C + cols[None, :], mask=m2, other=0.)
            if NEED_B:
                tl.store(pb_ptr + p * C + cols, tl.sum(go, axis=0), mask=cmask)
            if NEED_W:
                for k in range(0, Kc):
                    src = b * N + tl.sum(tl.where(ks[None, :] == k, idx_tile, 0), axis=1)
                    xv = tl.load(x_ptr + src[:, None] * C + cols[None, :], mask=m2, other=0.)
                    tl.store(pw_ptr + (p * Kc + k) * C + cols, tl.sum(go * xv, axis=0), mask=cmask)

    @triton.jit
    def _sum_partials_kernel(p_ptr, out_ptr, P, R, BLOCK: tl.constexpr):
        """out[r] = sum over p = 0, 1, ..., P - 1 of part[p, r], in that order."""
        r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        rmask = r < R
        acc = tl.zeros((BLOCK, ), dtype=out_ptr.dtype.element_ty)
        ptr = p_ptr + r  # pointer arithmetic is 64-bit: no overflow of p * R
        for _ in range(0, P):
            acc = acc + tl.load(ptr, mask=rmask, other=0.)
            ptr += R
        tl.store(out_ptr + r, acc, mask=rmask)

    @triton.jit
    def _grad_x_kernel(go_ptr, w_ptr, order_ptr, starts_ptr, gx_ptr, N, C, Kc,
                       BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
        """grad_x[j] = sum of W[k] * go[n] over the (n, k) with idx[n, k] = j, in the order
        of ``order`` (flat positions n * Kc + k sorted stably by target: increasing (n, k))."""
        pid_n = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        grow = b * N + rows.to(tl.int64)
        start = tl.load(starts_ptr + grow, mask=rmask, other=0)
        cnt = tl.load(starts_ptr + grow + 1, mask=rmask, other=0) - start
        n_iter = tl.max(cnt, axis=0)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            cmask = cols < C
            acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=gx_ptr.dtype.element_ty)
            for i in range(0, n_iter):
                valid = i < cnt
                e = tl.load(order_ptr + start + i, mask=valid, other=0)
                src = e // Kc  # flattened (b * N + n) row that read patch j
                k = e - src * Kc
                m2 = valid[:, None] & cmask[None, :]
                w = tl.load(w_ptr + k[:, None] * C + cols[None, :], mask=m2, other=0.)
                g = tl.load(go_ptr + src[:, None] * C + cols[None, :], mask=m2, other=0.)
                acc = tl.where(m2, acc + w * g, acc)
            tl.store(
                gx_ptr + grow[:, None] * C + cols[None, :],
                acc,
                mask=rmask[:, None] & cmask[None, :])

    @triton.jit
    def _probe_kernel(x_ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(x_ptr + offs, tl.load(x_ptr + offs) + 1.)


def _interpreted():
    """True when the kernels were decorated under TRITON_INTERPRET=1 (they run on CPU)."""
    if triton is None:
        return False
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except Exception:  # noqa: BLE001 - an older layout: fall back to the variable
        return os.environ.get('TRITON_INTERPRET', '0') == '1'
    return isinstance(_cluster_kernel, InterpretedFunction)


_PROBE = None


def available():
    """``(ok, reason)``: whether these kernels import and run here (CUDA, or the interpreter).

    The first call on CUDA compiles and runs a one-line kernel (cached), so a broken
    toolchain shows up here rather than in the first DCConv.
    """
    global _PROBE
    if triton is None:
        return False, f'triton is not importable ({_IMPORT_ERROR})'
    interp = _interpreted()
    if not interp and not torch.cuda.is_available():
        return False, ('no CUDA device, and the Triton interpreter was not on '
                       '(TRITON_INTERPRET=1 before importing mmdccnext.ops.triton_impl)')
    if _PROBE is None:
        where = 'interpreter (CPU tensors)' if interp else 'CUDA'
        try:
            x = torch.zeros(16, device='cpu' if interp else 'cuda')
            _probe_kernel[(1, )](x, BLOCK=16)
            ok = bool((x == 1).all())
            _PROBE = (ok, f'triton {triton.__version__} on {where}' if ok else
                      f'triton {triton.__version__} on {where}: the probe kernel gave a wrong '
                      'result')
        except Exception as exc:  # noqa: BLE001 - report why it cannot run
            _PROBE = (False, f'triton {triton.__version__} on {where} failed to run a kernel: '
                      f'{type(exc).__name__}: {exc}')
    return _PROBE


def _launch_ctx(t):
    # Triton launches on the current CUDA device; follow the tensor's.
    if t.device.type == 'cuda':
        return torch.cuda.device(t.device)
    import contextlib
    return contextlib.nullcontext()


def _check(cond, msg):
    if not cond:
        raise ValueError(f'triton_impl: {msg}')


def _next_pow2(n):
    return 1 << max(0, int(n) - 1).bit_length()


def cluster(s, kernel_size):
    """Cluster indices of the sub-vectors ``s`` (B, N, D), float32 or float64 (any layout:
    it is transposed to (B, D, N) here).

    Returns a LongTensor (B, N, min(K, N)): the patch itself, then its nearest others in
    ascending (canonical distance, index).
    """
    _check(s.dim() == 3 and s.dtype in (torch.float32, torch.float64),
           f's must be (B, N, D) float32 / float64, got {tuple(s.shape)} {s.dtype}')
    B, N, D = s.shape
    _check(B >= 1 and N >= 1 and D >= 1, f's must not be empty, got {tuple(s.shape)}')
    _check(int(kernel_size) >= 1, f'kernel_size must be >= 1, got {kernel_size}')
    Kc = min(int(kernel_size), N)
    _check(N < 2**31, 'the packed keys hold the index in 32 bits (N < 2**31)')
    out = torch.empty((B, N, Kc), dtype=torch.long, device=s.device)
    if Kc == 1:  # only the patch itself
        out[..., 0] = torch.arange(N, device=s.device)
        return out
    st = s.transpose(1, 2).contiguous()  # (B, D, N): contiguous loads along the patches
    M = Kc - 1
    grid = (triton.cdiv(N, _CLUSTER_BLOCK_M), B)
    with _launch_ctx(s):
        _cluster_kernel[grid](
            st,
            out,
            N,
            D,
            Kc,
            M=M,
            KP=_next_pow2(M),
            PACKED=s.dtype == torch.float32,
            BLOCK_M=_CLUSTER_BLOCK_M,
            BLOCK_N=_CLUSTER_BLOCK_N,
            num_warps=_NUM_WARPS,
            enable_fp_fusion=False)
    return out


def _block_c(C):
    return min(_AGG_BLOCK_C, _next_pow2(C))


def _check_agg(x, idx, weight):
    _check(x.dim() == 3 and x.dtype in (torch.float32, torch.float64),
           f'x must be (B, N, C) float32 / float64, got {tuple(x.shape)} {x.dtype}')
    B, N, C = x.shape
    _check(idx.dtype == torch.int64 and idx.dim() == 3 and idx.shape[:2] == (B, N),
           f'idx must be int64 (B, N, Kc), got {tuple(idx.shape)} {idx.dtype}')
    Kc = idx.shape[-1]
    # like the C++ leaf: weight may hold more taps than the Kc in use (N < K)
    _check(
        weight.dim() == 2 and weight.shape[0] >= Kc and weight.shape[1] == C
        and weight.dtype == x.dtype, f'weight must be (K >= {Kc}, {C}) {x.dtype}, got '
        f'{tuple(weight.shape)} {weight.dtype}')
    return B, N, C, Kc


def aggregate_forward(x, idx, weight, bias):
    """``y = bias + sum_k W[k] * x[idx[..., k]]`` (B, N, C) in the dtype of ``x``.

    ``x`` (B, N, C), ``idx`` (B, N, Kc) int64, ``weight`` (K >= Kc, C) (taps past Kc
    unused), ``bias`` (C,) or None; floating ones in one compute dtype (float32 / float64).
    Made contiguous here if they are not (a no-op when they are).
    """
    B, N, C, Kc = _check_agg(x, idx, weight)
    if bias is not None:
        _check(bias.shape == (C, ) and bias.dtype == x.dtype,
               f'bias must be ({C},) {x.dtype}, got {tuple(bias.shape)} {bias.dtype}')
        bias = bias.contiguous()
    x, idx, weight = x.contiguous(), idx.contiguous(), weight.contiguous()
    y = torch.empty_like(x)
    grid = (triton.cdiv(N, _AGG_BLOCK_N), B)
    with _launch_ctx(x):
        _agg_fwd_kernel[grid](
            x, idx, weight, bias if bias is not None else x, y, N, C, Kc,
            HAS_BIAS=bias is not None, KP=_next_pow2(Kc), BLOCK_N=_AGG_BLOCK_N,
            BLOCK_C=_block_c(C), num_warps=_NUM_WARPS, enable_fp_fusion=False)  # yapf: disable
    return y


def _sum_partials(part, out):
    """``out`` (R elements) = sum of ``part`` (P, R) over its first dimension, in increasing
    order."""
    P = part.shape[0]
    R = out.numel()
    grid = (triton.cdiv(R, _REDUCE_BLOCK), )
    _sum_partials_kernel[grid](
        part, out, P, R, BLOCK=_REDUCE_BLOCK, num_warps=_NUM_WARPS, enable_fp_fusion=False)
    return out


def aggregate_backward(grad_out, x, idx, weight, need_x, need_w, need_b):
    """Gradients of :func:`aggregate_forward`: ``(grad_x, grad_w, grad_b)``, None where not
    needed; ``grad_w`` has the shape of ``weight`` (zero past the Kc taps in use).
    ``grad_out`` (B, N, C) in the dtype of ``x``. Deterministic: no atomics, every sum in a
    fixed order (bit-identical from run to run)."""
    B, N, C, Kc = _check_agg(x, idx, weight)
    _check(
        grad_out.shape == x.shape and grad_out.dtype == x.dtype,
        f'grad_out must be {tuple(x.shape)} {x.dtype}, got {tuple(grad_out.shape)} '
        f'{grad_out.dtype}')
    grad_out, x, idx = grad_out.contiguous(), x.contiguous(), idx.contiguous()
    weight = weight.contiguous()
    grad_x = grad_w = grad_b = None
    BC = _block_c(C)
    nblk = triton.cdiv(N, _AGG_BLOCK_N)
    with _launch_ctx(x):
        if need_x:
            # inverse of idx: flat positions (b, n, k) sorted stably by the patch they read,
            # so each patch meets its readers in increasing (n, k); starts by binary search
            # (no atomic histogram)
            target = (idx + torch.arange(B, device=idx.device).view(B, 1, 1) * N).view(-1)
            keys, order = torch.sort(target, stable=True)
            starts = torch.searchsorted(keys, torch.arange(B * N + 1, device=idx.device))
            grad_x = torch.empty_like(x)
            _grad_x_kernel[(nblk, B)](
                grad_out, weight, order, starts, grad_x, N, C, Kc, BLOCK_N=_AGG_BLOCK_N,
                BLOCK_C=BC, num_warps=_NUM_WARPS, enable_fp_fusion=False)  # yapf: disable
        if need_w or need_b:
            P = B * nblk
            pw = torch.empty((P, Kc, C), dtype=x.dtype, device=x.device) if need_w else x
            pb = torch.empty((P, C), dtype=x.dtype, device=x.device) if need_b else x
            _agg_partials_kernel[(nblk, B)](
                grad_out, x, idx, pw, pb, N, C, Kc, NEED_W=bool(need_w), NEED_B=bool(need_b),
                KP=_next_pow2(Kc), BLOCK_N=_AGG_BLOCK_N, BLOCK_C=BC, num_warps=_NUM_WARPS,
                enable_fp_fusion=False)  # yapf: disable
            if need_w:
                grad_w = torch.zeros_like(weight)
                _sum_partials(pw, grad_w[:Kc])  # rows 0 .. Kc - 1: contiguous
            if need_b:
                grad_b = _sum_partials(pb, torch.empty((C, ), dtype=x.dtype, device=x.device))
    return grad_x, grad_w, grad_b
