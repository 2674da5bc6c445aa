"""Checks of the Triton leaf (mmdccnext/ops/triton_impl.py) run on CPU tensors by Triton's
interpreter; ``test_triton.py`` runs this file as a script, in a fresh interpreter with
``TRITON_INTERPRET=1`` (the variable must be set before ``triton.jit`` decorates the kernels),
and asserts on the JSON it prints: ``{check name: {"ok": bool, "detail": str}}``.

Shapes are small (the interpreter executes every block op in numpy); block sizes are shrunk
where a case needs several tiles or channel blocks out of a few patches.

Usage: ``TRITON_INTERPRET=1 python triton_interp_checks.py [check names...]``.
"""
import importlib.util
import json
import math
import os
import sys
import traceback
from contextlib import contextmanager

import torch

LEAF = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), '..', '..', 'mmdccnext', 'ops', 'triton_impl.py')


def load_leaf():
    """The leaf by its file: it imports only torch and triton, so it needs nothing of the
    mmdccnext.ops package (whose other modules are not under test here)."""
    spec = importlib.util.spec_from_file_location('mmdccnext_triton_leaf', LEAF)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ti = None  # the leaf, loaded in main()


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@contextmanager
def blocks(**sizes):
    """Temporarily set the leaf's block-size constants (e.g. CLUSTER_BLOCK_M=16)."""
    old = {k: getattr(ti, '_' + k) for k in sizes}
    for k, v in sizes.items():
        setattr(ti, '_' + k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(ti, '_' + k, v)


# --------------------------------------------------------------------------- references
def canonical_reference(s, K):
    """The contract, literally: direct differences summed in increasing channel order, one
    rounding per operation (separate torch ops on the CPU), in the dtype of ``s``; NaN ->
    +inf; self first; ascending (distance, index) by a stable sort."""
    B, N, D = s.shape
    acc = torch.zeros((B, N, N), dtype=s.dtype)
    for t in range(D):
        diff = s[:, :, None, t] - s[:, None, :, t]
        acc = acc + diff * diff
    acc = acc.masked_fill(torch.isnan(acc), math.inf)
    acc = acc.masked_fill(torch.eye(N, dtype=torch.bool), -1.0)
    return torch.sort(acc, dim=-1, stable=True).indices[..., :min(K, N)]


def float64_reference(s, K):
    """float64 brute force (the distance computed in double precision)."""
    s = s.double()
    dist = ((s[:, :, None, :] - s[:, None, :, :])**2).sum(-1)
    dist = dist.masked_fill(torch.isnan(dist), math.inf)
    dist = dist.masked_fill(torch.eye(s.shape[1], dtype=torch.bool), -1.0)
    return torch.sort(dist, dim=-1, stable=True).indices[..., :min(K, s.shape[1])]


def pytorch_path():
    """The repository's PyTorch clustering of sub-vectors ``s``, wherever the op package's
    reshape has put it (the leaf ``pytorch_impl.cluster(s, K)``, or the older
    ``cluster_pytorch(x, K, d)``, fed ``s`` with d = 1); None if neither imports."""
    try:
        from mmdccnext.ops.pytorch_impl import cluster as leaf
        return lambda s, K: leaf(s, K)
    except Exception:  # noqa: BLE001 - try the older location
        pass
    try:
        from mmdccnext.ops import cluster_pytorch
        return lambda s, K: cluster_pytorch(s, K, 1)
    except Exception:  # noqa: BLE001
        return None


def bits(t):
    """Bit pattern (distinguishes -0.0 from +0.0, unlike torch.equal)."""
    return t.contiguous().view(torch.int64 if t.dtype == torch.float64 else torch.int32)


def bit_equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def forward_reference(x, idx, w, b):
    """Plain-torch fixed-order loop: from the bias (0 without), add W[k] * x[idx[..., k]]
    for k = 0, 1, ..., one rounding per multiply and per add."""
    B, N, C = x.shape
    out = b.expand(B, N, C).clone() if b is not None else x.new_zeros((B, N, C))
    for k in range(idx.shape[-1]):
        out = out + torch.gather(x, 1, idx[..., k:k + 1].expand(B, N, C)) * w[k]
    return out


def grad_x_reference(go, idx, w):
    """grad_x summed per patch in increasing (n, k) order of its readers, from 0."""
    B, N, C = go.shape
    Kc = idx.shape[-1]
    gx = torch.zeros_like(go)
    flat_go = go.reshape(B * N, C)
    target = (idx + torch.arange(B).view(B, 1, 1) * N).reshape(-1).tolist()
    readers = [[] for _ in range(B * N)]
    for e, j in enumerate(target):  # e = (b * N + n) * Kc + k: increasing (n, k)
        readers[j].append(e)
    gx = gx.reshape(B * N, C)
    for j, es in enumerate(readers):
        acc = torch.zeros(C, dtype=go.dtype)
        for e in es:
            acc = acc + w[e % Kc] * flat_go[e // Kc]
        gx[j] = acc
    return gx.reshape(B, N, C)


def float64_grads(go, x, idx, w, b):
    xd = x.double().requires_grad_()
    wd = w.double().requires_grad_()
    bd = b.double().requires_grad_() if b is not None else None
    forward_reference(xd, idx, wd, bd).backward(go.double())
    return xd.grad, wd.grad, bd.grad if b is not None else None


def close(a, ref, rtol):
    """Within ``rtol`` of the largest reference value (sums of signed terms: relative
    error per element would be meaningless where they cancel)."""
    scale = max(float(ref.abs().max()), 1e-30)
    return float((a.double() - ref).abs().max()) <= rtol * scale


# --------------------------------------------------------------------------- checks
class Fail(Exception):
    pass


def expect(cond, what):
    if not cond:
        raise Fail(what)


def check_cluster(s, K, against=('canonical', 'float64', 'pytorch'), label=''):
    """The leaf's clusters of ``s`` equal each reference in ``against``; structure holds."""
    idx = ti.cluster(s, K)
    B, N, _ = s.shape
    Kc = min(K, N)
    expect(idx.shape == (B, N, Kc) and idx.dtype == torch.int64,
           f'{label}: shape {tuple(idx.shape)} {idx.dtype}')
    expect(torch.equal(idx[..., 0], torch.arange(N).expand(B, N)), f'{label}: self not first')
    srt = idx.sort(-1).values
    expect(bool((srt[..., 1:] != srt[..., :-1]).all()), f'{label}: a patch twice in a cluster')
    refs = {
        'canonical': lambda: canonical_reference(s, K),
        'float64': lambda: float64_reference(s, K)
    }
    if 'pytorch' in against:
        path = pytorch_path()
        expect(
            path is not None, f'{label}: the PyTorch path is importable neither from '
            'mmdccnext.ops.pytorch_impl nor from mmdccnext.ops')
        refs['pytorch'] = lambda: path(s, K)
    for name in against:
        ref = refs[name]()
        bad = (idx != ref).any(-1).nonzero().tolist()
        expect(
            not bad, f'{label}: differs from the {name} reference at (b, n) {bad[:5]} '
            f'({len(bad)} rows)')
    return idx


def sub(x, d):
    return x[..., ::d].contiguous()


def c_random_fp32():
    # D = ceil(33 / 8) = 5; 16 x 16 tiles: several row blocks and column tiles, last partial
    with blocks(CLUSTER_BLOCK_M=16, CLUSTER_BLOCK_N=16):
        check_cluster(sub(randn(2, 70, 33, seed=1), 8), 9, label='B=2 N=70 D=5 K=9')
        check_cluster(sub(randn(1, 45, 13, seed=2), 1), 5, label='N=45 D=13 K=5')
    # default blocks (32 x 64): N = 100 is one full and one partial column tile
    check_cluster(sub(randn(1, 100, 40, seed=3), 8), 12, label='default blocks N=100 K=12')
    # B2's per-stage shape in small: C = 320 (D = 40), K = 12, with twins, default blocks
    x = randn(1, 300, 320, seed=4)
    x[0, 150:200] = x[0, :50]
    check_cluster(sub(x, 8), 12, label='N=300 C=320 K=12 with twins')


def c_ties():
    with blocks(CLUSTER_BLOCK_M=4, CLUSTER_BLOCK_N=4):
        # every distance 0: the patch itself, then the lowest other indices
        idx = check_cluster(torch.zeros(1, 6, 8), 4, label='constant')
        expected = [[n] + [j for j in range(6) if j != n][:3] for n in range(6)]
        expect(idx[0].tolist() == expected, f'constant input: {idx[0].tolist()}')
        # identical patches 1, 4, 7 (in different 4-column tiles)
        x = randn(1, 10, 16, seed=1)
        x[0, 4] = x[0, 1]
        x[0, 7] = x[0, 1]
        idx = check_cluster(x, 3, label='duplicates 1, 4, 7')
        got = [idx[0, n].tolist() for n in (7, 4, 1)]
        expect(got == [[7, 1, 4], [4, 1, 7], [1, 4, 7]], f'duplicates 1, 4, 7: {got}')
    with blocks(CLUSTER_BLOCK_M=16, CLUSTER_BLOCK_N=16):
        # every patch has a twin, and 16 identical patches: more exact ties than K
        x = randn(1, 60, 16, seed=12)
        x[0, 30:] = x[0, :30]
        x[0, 5:20] = x[0, 2]
        check_cluster(x, 9, label='twins and 16 identical')
        # small integers: every distance exact, ties everywhere
        x = torch.randint(-2, 3, (2, 96, 12), generator=torch.Generator().manual_seed(0))
        check_cluster(x.float(), 12, label='integer data')


def c_near_ties():
    # patches that differ by a few ulps: the indices agree only if the leaf computes the
    # canonical float32 distance (the float64 distance orders some of these differently,
    # so the float64 brute force is not a reference here)
    g = torch.Generator().manual_seed(2)
    base = torch.randn(1, 20, 32, generator=g)
    x = base.repeat(1, 5, 1)
    x = x * (1 + torch.randint(-3, 4, x.shape, generator=g).float() * 2**-23)
    check_cluster(x, 18, against=('canonical', 'pytorch'), label='ulp near-ties')
    # a large common offset and near-duplicates
    centres = torch.randn(1, 10, 32, generator=g)
    x = centres.repeat(1, 8, 1) + 1e-4 * torch.randn(1, 80, 32, generator=g) + 1e3
    check_cluster(sub(x, 2), 12, against=('canonical', 'pytorch'), label='offset 1e3')


def c_non_finite():
    x = randn(2, 40, 16, seed=4)
    x[0, 3] = float('nan')
    x[0, 5, 2] = float('inf')
    x[0, 6, 2] = float('inf')  # inf - inf = nan -> +inf
    x[1, :, 0] = float('-inf')  # every distance of image 1 is nan -> +inf
    with blocks(CLUSTER_BLOCK_M=16, CLUSTER_BLOCK_N=16):
        idx = check_cluster(x, 6, label='nan / inf')
    expect(idx[1, 0].tolist() == [0, 1, 2, 3, 4, 5], f'all +inf, row 0: {idx[1, 0].tolist()}')
    expect(idx[1, 2].tolist() == [2, 0, 1, 3, 4, 5], f'all +inf, row 2: {idx[1, 2].tolist()}')
    # squared differences that overflow to +inf, and subnormal distances
    for scale in (1e18, 1e-40):
        check_cluster(
            randn(1, 40, 16, seed=6) * scale,
            9,
            against=('canonical', 'pytorch'),
            label=f'scale {scale}')


def c_small_n():
    check_cluster(sub(randn(2, 7, 16, seed=7), 8), 12, label='N=7 < K=12')
    check_cluster(sub(randn(1, 1, 8, seed=8), 8), 3, label='N=1')
    check_cluster(sub(randn(1, 33, 8, seed=9), 8), 1, label='K=1')
    check_cluster(sub(randn(3, 2, 8, seed=10), 1), 5, label='N=2 < K')
    check_cluster(sub(randn(1, 9, 8, seed=11), 1), 9, label='N=K')


def c_float64():
    with blocks(CLUSTER_BLOCK_M=16, CLUSTER_BLOCK_N=16):
        check_cluster(sub(randn(2, 50, 24, seed=5, dtype=torch.float64), 2), 7, label='fp64')
        x = randn(1, 40, 8, seed=13, dtype=torch.float64)
        x[0, 20:] = x[0, :20]  # twins: exact ties broken by the second key
        x[0, 3] = float('nan')
        x[0, 7, 1] = float('inf')
        check_cluster(x, 6, label='fp64 twins, nan, inf')
        # near-ties far below float32 resolution: only a float64 distance separates them
        x = randn(1, 8, 8, seed=14, dtype=torch.float64).repeat(1, 4, 1)
        x = x * (1 + torch.randint(-3, 4, x.shape, generator=torch.Generator()) * 2.0**-40)
        check_cluster(x, 8, against=('canonical', 'pytorch'), label='fp64 near-ties')


def c_half():
    # the seam upcasts float16 / bfloat16 to float32 before calling the leaf
    for dtype in (torch.float16, torch.bfloat16):
        x = randn(1, 64, 32, seed=9).to(dtype)
        check_cluster(sub(x.float(), 4), 8, label=str(dtype))


def agg_cases():
    """(label, x, idx, w, b, block sizes) for the aggregation checks."""
    out = []

    def case(label, B, N, C, Kc, dtype=torch.float32, bias=True, seed=0, hub=False, **blk):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(B, N, C, generator=g, dtype=dtype)
        idx = torch.randint(0, N, (B, N, Kc), generator=g)
        idx[..., 0] = torch.arange(N)
        if hub:  # patch 0 read by most of the others, patches N // 2 .. read by none
            idx[:, ::2, 1:] = 0
            idx[:, 1::2, 1:] = torch.randint(0, max(1, N // 2), idx[:, 1::2, 1:].shape, generator=g)
        w = torch.randn(Kc, C, generator=g, dtype=dtype)
        b = torch.randn(C, generator=g, dtype=dtype) if bias else None
        out.append((label, x, idx.contiguous(), w, b, blk))
        return out[-1]

    case('B=2 N=50 C=13 K=5', 2, 50, 13, 5, AGG_BLOCK_N=8)
    case(
            'C=33 in 16-channel blocks, no bias',
            1,
            37,
            33,
            9,
            bias=False,
            AGG_BLOCK_N=8,
            AGG_BLOCK_C=16)
    case('N=7 < K: Kc=7', 2, 7, 16, 7)
    case('N=1', 1, 1, 8, 1)
    case('hub patch', 2, 40, 20, 6, hub=True, AGG_BLOCK_N=8, AGG_BLOCK_C=8)
    case('float64', 2, 30, 33, 4, dtype=torch.float64, AGG_BLOCK_N=8)
    label, x, idx, w, b, blk = case('from float16', 1, 24, 17, 5)
    out[-1] = (label, x.half().float(), idx, w.half().float(), b.half().float(), blk)
    label, x, idx, w, b, blk = case('from bfloat16', 1, 24, 17, 5)
    out[-1] = (label, x.bfloat16().float(), idx, w.bfloat16().float(), b.bfloat16().float(), blk)
    # signed zeros: a -0.0 bias must stay -0.0 where every product is -0.0
    label, x, idx, w, b, blk = case('signed zeros', 1, 10, 8, 3)
    x = x.abs()
    w = torch.full_like(w, -0.0)
    b = torch.full_like(b, -0.0)
    b[::2] = 1.5
    out[-1] = (label, x, idx, w, b, blk)
    return out


def c_agg_forward():
    for label, x, idx, w, b, blk in agg_cases():
        with blocks(**blk):
            y = ti.aggregate_forward(x, idx, w, b)
        ref = forward_reference(x, idx, w, b)
        expect(
            bit_equal(y, ref), f'{label}: not bit-identical to the fixed-order loop '
            f'(max diff {float((y.double() - ref.double()).abs().max()):.3g})')
        if label == 'signed zeros':
            expect(bool(torch.signbit(y[..., 1::2]).all()), 'signed zeros: -0.0 bias lost')


def c_agg_backward():
    for label, x, idx, w, b, blk in agg_cases():
        g = torch.Generator().manual_seed(99)
        go = torch.randn(x.shape, generator=g, dtype=x.dtype)
        with blocks(**blk):
            gx, gw, gb = ti.aggregate_backward(go, x, idx, w, True, True, b is not None)
            again = ti.aggregate_backward(go, x, idx, w, True, True, b is not None)
            only_x = ti.aggregate_backward(go, x, idx, w, True, False, False)
            only_w = ti.aggregate_backward(go, x, idx, w, False, True, False)
            only_b = ti.aggregate_backward(go, x, idx, w, False, False, True)
        rx, rw, rb = float64_grads(go, x, idx, w, b)
        rtol = 1e-12 if x.dtype == torch.float64 else 1e-5
        expect(gx.dtype == x.dtype and gw.dtype == x.dtype, f'{label}: gradient dtypes')
        expect(close(gx, rx, rtol), f'{label}: grad_x off the float64 reference')
        expect(close(gw, rw, rtol), f'{label}: grad_w off the float64 reference')
        if b is not None:
            expect(close(gb, rb, rtol), f'{label}: grad_b off the float64 reference')
        else:
            expect(gb is None, f'{label}: grad_b without need_b')
        for name, a, c in zip(('grad_x', 'grad_w', 'grad_b'), (gx, gw, gb), again):
            expect((a is None and c is None) or bit_equal(a, c),
                   f'{label}: {name} differs between two runs')
        # grad_x sums each patch's readers in increasing (n, k): the same bits as that loop
        expect(
            bit_equal(gx, grad_x_reference(go, idx, w)),
            f'{label}: grad_x not bit-identical to the per-patch (n, k)-ordered loop')
        expect(only_x[1] is None and only_x[2] is None and bit_equal(only_x[0], gx),
               f'{label}: need_x only')
        expect(only_w[0] is None and only_w[2] is None and bit_equal(only_w[1], gw),
               f'{label}: need_w only')
        expect(
            only_b[0] is None and only_b[1] is None and close(only_b[2],
                                                              go.double().sum((0, 1)), rtol),
            f'{label}: need_b only')


def c_agg_layouts():
    # the seam may pass all K taps with N < K (Kc = N), and autograd a non-contiguous
    # grad_out (the output of a (B, C, H, W) layer, transposed back): same results as with
    # weight[:Kc] and contiguous tensors, and a zero gradient for the unused taps
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, 10, generator=g)
    idx = torch.randint(0, 6, (2, 6, 6), generator=g)
    w = torch.randn(9, 10, generator=g)
    b = torch.randn(10, generator=g)
    go = torch.randn(2, 10, 6, generator=g).transpose(1, 2)
    expect(not go.is_contiguous(), 'grad_out should be a non-contiguous view')
    y = ti.aggregate_forward(x, idx, w, b)
    expect(bit_equal(y, ti.aggregate_forward(x, idx, w[:6].contiguous(), b)), 'K > Kc forward')
    expect(bit_equal(y, forward_reference(x, idx, w[:6], b)), 'K > Kc forward vs the loop')
    gx, gw, gb = ti.aggregate_backward(go, x, idx, w, True, True, True)
    cx, cw, cb = ti.aggregate_backward(go.contiguous(), x, idx, w[:6].contiguous(), True, True,
                                       True)
    expect(gw.shape == w.shape and bool((gw[6:] == 0).all()), 'grad of the unused taps')
    expect(
        bit_equal(gw[:6], cw) and bit_equal(gx, cx) and bit_equal(gb, cb),
        'K > Kc / non-contiguous grad_out backward')
    # non-contiguous x and idx (views) give the results of their contiguous copies
    xt = torch.randn(2, 10, 6, generator=g).transpose(1, 2)
    it = idx.transpose(1, 2).contiguous().transpose(1, 2)
    expect(
        bit_equal(
            ti.aggregate_forward(xt, it, w, b), ti.aggregate_forward(xt.contiguous(), idx, w, b)),
        'non-contiguous x, idx')
    st = torch.randn(2, 4, 6, generator=g).transpose(1, 2)
    expect(torch.equal(ti.cluster(st, 4), ti.cluster(st.contiguous(), 4)), 'non-contiguous s')


def c_available():
    ok, reason = ti.available()
    expect(ok and 'interpreter' in reason, f'available() = {(ok, reason)}')


def c_seam():
    # the leaf wired in: dcconv(impl='triton') through the torch.library ops, against the
    # PyTorch path ('auto' picking Triton after its self-check: test_selfcheck.py)
    from mmdccnext.ops import available_impls, dcconv
    dcconv_mod = importlib.import_module('mmdccnext.ops.dcconv')  # the attribute is the function
    expect('triton' in available_impls('cpu'), f'available_impls = {available_impls("cpu")}')
    expect(dcconv_mod._triton_status('cuda')[0], 'Triton does not run here')
    g = torch.Generator().manual_seed(5)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = torch.randn(2, 40, 24, generator=g).to(dtype)
        w = (torch.randn(7, 24, generator=g) * .1).to(dtype)
        b = torch.randn(24, generator=g).to(dtype)
        outs, grads = [], []
        for impl in ('triton', 'pytorch'):
            xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
            y, idx = dcconv(xs, ws, bs, impl=impl, return_indices=True)
            y.float().pow(2).sum().backward()
            outs.append((y.detach(), idx))
            grads.append((xs.grad, ws.grad, bs.grad))
        expect(torch.equal(outs[0][1], outs[1][1]), f'{dtype}: indices differ from pytorch')
        expect(torch.equal(outs[0][0], outs[1][0]), f'{dtype}: outputs differ from pytorch')
        for a, e in zip(*grads):
            expect(torch.allclose(a.double(), e.double(), rtol=1e-5, atol=1e-5),
                   f'{dtype}: gradients differ from pytorch')
    x = torch.randn(1, 12, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    expect(torch.autograd.gradcheck(lambda x, w: dcconv(x, w, impl='triton'), (x, w)),
           'gradcheck through the seam')


CHECKS = {
    'cluster_random_fp32': c_random_fp32,
    'cluster_ties_and_duplicates': c_ties,
    'cluster_near_ties': c_near_ties,
    'cluster_non_finite_and_extremes': c_non_finite,
    'cluster_small_n': c_small_n,
    'cluster_float64': c_float64,
    'cluster_from_half': c_half,
    'aggregate_forward': c_agg_forward,
    'aggregate_backward': c_agg_backward,
    'aggregate_layouts': c_agg_layouts,
    'available': c_available,
    'seam': c_seam,
}


def run_checks(checks, names):
    """Run ``checks`` (those in ``names``, or all) and print ``{name: {"ok": bool, "detail":
    str}}`` as one JSON line (also for selfcheck_checks.py)."""
    results = {}
    for name in names or checks:
        try:
            checks[name]()
            results[name] = {'ok': True, 'detail': ''}
        except Fail as exc:
            results[name] = {'ok': False, 'detail': str(exc)}
        except Exception:  # noqa: BLE001 - report it as that check's failure
            results[name] = {'ok': False, 'detail': traceback.format_exc()}
    print(json.dumps(results))


def main(names):
    global ti
    if os.environ.get('TRITON_INTERPRET') != '1':
        sys.exit('run with TRITON_INTERPRET=1 (the kernels are decorated at import)')
    ti = load_leaf()
    run_checks(CHECKS, names)


if __name__ == '__main__':
    main(sys.argv[1:])
