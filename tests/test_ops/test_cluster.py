"""Dynamic clustering: every path against the float64 brute force and against each other."""
import importlib

import pytest
import torch
from cpu_isa_helpers import ISAS, forced_isa, isa_param
from paths import cluster_bruteforce, cluster_cpu, cluster_pytorch

from mmdccnext.ops import cluster
from mmdccnext.ops.cpu_impl import ext_available, ext_error
from mmdccnext.ops.pytorch_impl import TILE_BYTES

cluster_mod = importlib.import_module('mmdccnext.ops.pytorch_impl')
ext_loader = importlib.import_module('mmdccnext.ops.cpu_impl')

needs_ext = pytest.mark.skipif(
    not ext_available(), reason=f'the C++ extension mmdccnext._ext is not built ({ext_error()})')

# 'cpu-<isa>' screens candidates with the norm expansion on regular images (D >= 8) and with
# direct differences otherwise; 'cpu-direct-<isa>' forces the direct screen. Both, with the
# kernels of every ISA this CPU can run (the others are skipped, naming the missing CPU
# feature), must give exactly the canonical result.
# 'pytorch' proposes candidates with a float64 matmul screen and certifies them;
# 'pytorch-exact' evaluates every pair (the reference).
CPU_PATHS = ([isa_param(f'cpu-{isa}', isa) for isa in ISAS] +
             [isa_param(f'cpu-direct-{isa}', isa) for isa in ISAS])
PATHS = ['pytorch', 'pytorch-exact'] + CPU_PATHS


def run(path, x, K, d=8, **kwargs):
    if path == 'pytorch':
        return cluster_pytorch(x, K, d, **kwargs)
    if path == 'pytorch-exact':
        return cluster_pytorch(x, K, d, method='exact', **kwargs)
    screen, isa = path.rsplit('-', 1)
    ext = ext_loader.load_ext()
    ext._set_dot_screen(screen == 'cpu')
    try:
        with forced_isa(isa):
            return cluster_cpu(x, K, d, **kwargs)
    finally:
        ext._set_dot_screen(True)


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def check_structure(idx, B, N, K):
    Kc = min(K, N)
    assert idx.shape == (B, N, Kc) and idx.dtype == torch.long
    assert int(idx.min()) >= 0 and int(idx.max()) < N
    assert torch.equal(idx[..., 0], torch.arange(N).expand(B, N))
    # no patch twice in a cluster
    srt = idx.sort(-1).values
    assert bool((srt[..., 1:] != srt[..., :-1]).all())


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize(
    'B,N,C,K,d',
    [
        (1, 50, 32, 9, 8),  # C divisible by d
        (2, 120, 33, 12, 8),  # C not divisible by d: ceil(33 / 8) = 5 sub-channels
        (3, 97, 20, 5, 4),  # B > 1, d = 4
        (1, 64, 13, 18, 1),  # d = 1: full vectors
        (2, 7, 16, 12, 8),  # N < K
        (1, 1, 8, 3, 8),  # a single patch
        (1, 33, 8, 1, 8),  # K = 1: only the patch itself
    ])
def test_matches_float64_bruteforce(path, B, N, C, K, d):
    x = randn(B, N, C, seed=N * C + K)
    idx = run(path, x, K, d)
    check_structure(idx, B, N, K)
    assert torch.equal(idx, cluster_bruteforce(x, K, d))


@pytest.mark.parametrize('path', PATHS)
def test_batch_images_are_independent(path):
    x = randn(3, 60, 24, seed=3)
    idx = run(path, x, 6, 4)
    for b in range(3):
        assert torch.equal(idx[b:b + 1], run(path, x[b:b + 1].clone(), 6, 4))
    # different contents per image give different clusters
    assert not torch.equal(idx[0], idx[1])


@pytest.mark.parametrize('path', PATHS)
def test_float64_input(path):
    x = randn(2, 80, 24, seed=5, dtype=torch.float64)
    assert torch.equal(run(path, x, 7, 2), cluster_bruteforce(x, 7, 2))


@pytest.mark.parametrize('path', PATHS)
def test_ties_go_to_lower_index_and_self_first(path):
    # constant input: every distance is 0
    idx = run(path, torch.zeros(1, 6, 8), 4, 1)
    expected = [[n] + [j for j in range(6) if j != n][:3] for n in range(6)]
    assert idx[0].tolist() == expected
    # identical patches 1, 4, 7: the patch itself first, then the others by index
    x = randn(1, 10, 16, seed=1)
    x[0, 4] = x[0, 1]
    x[0, 7] = x[0, 1]
    idx = run(path, x, 3, 1)
    assert idx[0, 7].tolist() == [7, 1, 4]
    assert idx[0, 4].tolist() == [4, 1, 7]
    assert idx[0, 1].tolist() == [1, 4, 7]
    assert torch.equal(idx, cluster_bruteforce(x, 3, 1))


@pytest.mark.parametrize('path', PATHS)
def test_integer_data_many_exact_ties(path):
    # small integers: every distance is exact, so ties are real ties
    x = torch.randint(-2, 3, (2, 300, 12), generator=torch.Generator().manual_seed(0)).float()
    assert torch.equal(run(path, x, 12, 1), cluster_bruteforce(x, 12, 1))


@pytest.mark.parametrize('screen', CPU_PATHS)
@pytest.mark.parametrize('scale', [1e-3, 1.0, 1e3])
def test_paths_bit_identical_on_near_ties(scale, screen):
    # patches that differ by a few ulps: distances agree only if both paths compute the
    # same canonical distance (direct differences, separately rounded, in channel order)
    g = torch.Generator().manual_seed(2)
    base = torch.randn(1, 40, 64, generator=g) * scale
    x = base.repeat(1, 10, 1)
    x = x * (1 + torch.randint(-3, 4, x.shape, generator=g).float() * 2**-23)
    a, b = run(screen, x, 18, 1), cluster_pytorch(x, 18, 1)
    assert torch.equal(a, b)
    check_structure(a, 1, 400, 18)


@pytest.mark.parametrize('screen', CPU_PATHS)
@pytest.mark.parametrize('offset', [0., 1e3, 1e5])
def test_common_offset_and_near_duplicates(offset, screen):
    # a large common offset (cancellation in |a|^2 + |b|^2 - 2ab) and clusters of
    # near-duplicates whose distances are tiny compared to the norms
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(1, 30, 64, generator=g)
    x = centres.repeat(1, 20, 1) + 1e-4 * torch.randn(1, 600, 64, generator=g) + offset
    a, b = run(screen, x, 12, 2), cluster_pytorch(x, 12, 2)
    assert torch.equal(a, b)
    check_structure(a, 1, 600, 12)


@pytest.mark.parametrize('screen', CPU_PATHS)
def test_paths_identical_larger(screen):
    x = randn(2, 700, 96, seed=7)
    assert torch.equal(run(screen, x, 12, 8), cluster_pytorch(x, 12, 8))


@pytest.mark.parametrize('path', PATHS)
def test_non_finite_inputs(path):
    x = randn(2, 40, 16, seed=4)
    x[0, 3] = float('nan')
    x[0, 5, 2] = float('inf')
    x[0, 6, 2] = float('inf')  # inf - inf = nan
    x[1, :, 0] = float('-inf')  # every distance of image 1 is nan -> +inf
    idx = run(path, x, 6, 1)
    check_structure(idx, 2, 40, 6)
    assert torch.equal(idx, cluster_bruteforce(x, 6, 1))
    # image 1: all distances +inf -> the lowest other indices
    assert idx[1, 0].tolist() == [0, 1, 2, 3, 4, 5]
    assert idx[1, 2].tolist() == [2, 0, 1, 3, 4, 5]


@pytest.mark.parametrize('screen', CPU_PATHS)
@pytest.mark.parametrize('scale,d', [(1e18, 1), (1e-40, 1), (1e18, 2), (1e-21, 2), (3e17, 2)])
def test_extreme_magnitudes_paths_agree(scale, d, screen):
    # near overflow (squared differences overflow to inf) and subnormal distances
    x = randn(1, 90, 16, seed=6) * scale
    a, b = run(screen, x, 9, d), cluster_pytorch(x, 9, d)
    check_structure(a, 1, 90, 9)
    assert torch.equal(a, b)


@pytest.mark.parametrize('path', PATHS)
def test_non_contiguous_input(path):
    x = randn(2, 24, 90, seed=8).transpose(1, 2)  # (2, 90, 24) view, not contiguous
    assert not x.is_contiguous()
    assert torch.equal(run(path, x, 5, 4), run(path, x.contiguous(), 5, 4))


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_inputs_use_float32_distances(path, dtype):
    x = randn(1, 64, 32, seed=9).to(dtype)
    assert torch.equal(run(path, x, 8, 4), cluster_bruteforce(x.float(), 8, 4))


@pytest.mark.parametrize('method', ['exact', 'screened'])
def test_pytorch_path_tiles_are_bounded(monkeypatch, method):
    shapes = []
    original = cluster_mod._tile_shape

    def spy(B, N, device, tile_bytes):
        out = original(B, N, device, tile_bytes)
        shapes.append(out)
        return out

    monkeypatch.setattr(cluster_mod, '_tile_shape', spy)
    x = randn(1, 3000, 16, seed=10)
    idx = cluster_pytorch(x, 5, 8, method=method)
    for bt, rt, ct in shapes:
        assert bt * rt * ct * cluster_mod._BYTES_PER_ELEM <= TILE_BYTES
        assert rt * ct < 3000 * 3000
    assert torch.equal(idx, cluster_bruteforce(x, 5, 8))
    # explicit tiny tiles: several column tiles per row tile, merged by the running top-K
    shapes.clear()
    small = cluster_pytorch(x[:, :500], 5, 8, tile_bytes=32 * 200, method=method)
    assert all(bt * rt * ct <= 200 for bt, rt, ct in shapes)
    assert torch.equal(small, cluster_bruteforce(x[:, :500], 5, 8))


def test_exact_path_tiles_are_bounded(monkeypatch):
    seen = []
    original = cluster_mod._pairwise_sq_dist

    def spy(rows, cols):
        out = original(rows, cols)
        seen.append(out.numel())
        return out

    monkeypatch.setattr(cluster_mod, '_pairwise_sq_dist', spy)
    x = randn(1, 3000, 16, seed=10)
    cluster_pytorch(x, 5, 8, method='exact')
    assert max(seen) * cluster_mod._BYTES_PER_ELEM <= cluster_mod._CPU_TILE_BYTES


def test_screened_path_redoes_uncertified_rows(monkeypatch):
    # duplicated patches: exact ties that the screen cannot certify -> exact redo of rows
    calls = []
    original = cluster_mod._exact_topk

    def spy(s, Kc, row_ids, tile_bytes):
        calls.append(row_ids.numel())
        return original(s, Kc, row_ids, tile_bytes)

    monkeypatch.setattr(cluster_mod, '_exact_topk', spy)
    x = randn(2, 200, 16, seed=12)
    x[0, 100:] = x[0, :100]  # every patch of image 0 has a twin
    x[0, 20:50] = x[0, 10]  # and 31 identical ones: more ties than candidates
    idx = cluster_pytorch(x, 9, 1)
    assert calls and 31 <= sum(calls) < 200  # only the rows with too many ties redone
    assert torch.equal(idx, cluster_bruteforce(x, 9, 1))
    assert torch.equal(idx, cluster_pytorch(x, 9, 1, method='exact'))


def test_pytorch_method_name():
    with pytest.raises(ValueError, match='method'):
        cluster_pytorch(torch.randn(1, 4, 4), 2, method='fast')


def test_no_gradient_through_cluster():
    x = randn(1, 20, 8, seed=11).requires_grad_()
    idx = cluster(x, 4, 2)
    assert not idx.requires_grad and idx.grad_fn is None


@pytest.mark.parametrize('bad,match', [
    (lambda: cluster(torch.randn(4, 8), 3), 'x must be'),
    (lambda: cluster(torch.randn(0, 4, 8), 3), 'empty batch'),
    (lambda: cluster(torch.randn(1, 0, 8), 3), 'N = 0'),
    (lambda: cluster(torch.randn(1, 4, 8), 0), 'kernel_size'),
    (lambda: cluster(torch.randn(1, 4, 8), 3, 0), 'subvector_stride'),
    (lambda: cluster(torch.randn(1, 4, 8), 2.5), 'kernel_size'),
    (lambda: cluster(torch.randn(1, 4, 8), 3, impl='cuda'), 'impl'),
    (lambda: cluster(torch.ones(1, 4, 8, dtype=torch.long), 3), 'floating-point'),
])
def test_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


def test_bruteforce_reference_is_what_it_claims():
    # sanity of the reference itself on a hand-made example
    x = torch.tensor([[[0.], [10.], [1.], [3.], [-1.]]])
    assert cluster_bruteforce(x, 3, 1)[0].tolist() == [[0, 2, 4], [1, 3, 2], [2, 0, 3], [3, 2, 0],
                                                       [4, 0, 2]]
