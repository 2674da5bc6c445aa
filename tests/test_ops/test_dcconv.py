"""DCConv aggregation, the functional API, the module and the dispatch."""
import importlib
import warnings

import pytest
import torch
from cpu_isa_helpers import ISAS, forced_isa, isa_param
from paths import cluster_bruteforce

from mmdccnext.ops import DCConv, aggregate, cluster, dcconv
from mmdccnext.ops.cpu_impl import ext_available, ext_error
from mmdccnext.registry import MODELS

ext_loader = importlib.import_module('mmdccnext.ops.cpu_impl')
dcconv_mod = importlib.import_module('mmdccnext.ops.dcconv')

needs_ext = pytest.mark.skipif(
    not ext_available(), reason=f'the C++ extension mmdccnext._ext is not built ({ext_error()})')


@pytest.fixture(params=['pytorch'] + [isa_param(f'cpu-{isa}', isa) for isa in ISAS])
def path(request):
    """The impl a test passes: 'pytorch', or 'cpu' with the kernels of each ISA this CPU can
    run forced (the others are skipped, naming the missing CPU feature)."""
    impl, _, isa = request.param.partition('-')
    if not isa:
        yield impl
        return
    with forced_isa(isa):
        yield impl


def gen(seed):
    return torch.Generator().manual_seed(seed)


def inputs(B=2, N=30, C=20, K=6, seed=0, dtype=torch.float32):
    g = gen(seed)
    x = torch.randn(B, N, C, generator=g, dtype=dtype)
    w = torch.randn(K, C, generator=g, dtype=dtype)
    b = torch.randn(C, generator=g, dtype=dtype)
    return x, w, b


def manual(x, idx, w, b):
    """y[b, n, c] = sum_k w[k, c] x[b, idx[b, n, k], c] + b[c], in float64."""
    B = x.shape[0]
    Kc = idx.shape[-1]
    g = x.double()[torch.arange(B)[:, None, None], idx]  # (B, N, Kc, C)
    y = (g * w.double()[:Kc]).sum(2)
    return y + b.double() if b is not None else y


@pytest.mark.parametrize('with_bias', [True, False])
def test_forward_matches_definition(path, with_bias):
    x, w, b = inputs()
    b = b if with_bias else None
    y, idx = dcconv(x, w, b, impl=path, subvector_stride=4, return_indices=True)
    assert torch.equal(idx, cluster_bruteforce(x, 6, 4))
    torch.testing.assert_close(y.double(), manual(x, idx, w, b), rtol=1e-5, atol=1e-5)


def test_paths_agree_forward_and_backward(cpu_isa):
    x, w, b = inputs(B=3, N=150, C=48, K=9, seed=1)
    grads = {}
    for path in ('pytorch', 'cpu'):
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        y = dcconv(xs, ws, bs, impl=path)
        y.backward(torch.ones_like(y) * torch.linspace(-1, 1, 48))
        grads[path] = (y.detach(), xs.grad, ws.grad, bs.grad)
    # forward: same operations in the same order -> bit-identical
    assert torch.equal(grads['pytorch'][0], grads['cpu'][0])
    for a, c in zip(grads['pytorch'][1:], grads['cpu'][1:]):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)


def test_gradcheck_float64(path):
    x, w, b = inputs(B=2, N=12, C=5, K=4, seed=2, dtype=torch.float64)
    idx = cluster(x, 4, 2)
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: dcconv(x, w, b, impl=path, idx=idx), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: aggregate(x, idx, w, impl=path), (x, w))


def test_gradcheck_feature_maps(path):
    g = gen(3)
    x = torch.randn(1, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    idx = cluster(x.detach().flatten(2).transpose(1, 2), 5, 1)
    assert torch.autograd.gradcheck(lambda x, w: dcconv(x, w, impl=path, idx=idx), (x, w))


def test_fewer_patches_than_kernel_taps(path):
    # N = 5 < K = 9: the cluster holds all 5 patches, the taps W[5:] are unused
    x, w, b = inputs(B=2, N=5, C=8, K=9, seed=4)
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    y, idx = dcconv(x, w, b, impl=path, return_indices=True)
    assert idx.shape == (2, 5, 5)
    assert torch.equal(idx[..., 0], torch.arange(5).expand(2, 5))
    assert torch.equal(idx.sort(-1).values, torch.arange(5).expand(2, 5, 5))
    torch.testing.assert_close(
        y.double(), manual(x.detach(), idx, w.detach(), b.detach()), rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert torch.all(w.grad[5:] == 0) and torch.any(w.grad[:5] != 0)
    # feature maps with H * W < K
    maps = torch.randn(1, 8, 2, 2, generator=gen(5))
    assert dcconv(maps, w.detach(), impl=path).shape == (1, 8, 2, 2)


def test_feature_map_layouts(path):
    g = gen(6)
    maps = torch.randn(2, 24, 5, 7, generator=g)
    w = torch.randn(7, 24, generator=g)
    tokens = maps.flatten(2).transpose(1, 2).contiguous()
    y_tok = dcconv(tokens, w, impl=path)
    y = dcconv(maps, w, impl=path)
    assert y.shape == maps.shape and y.is_contiguous()
    assert torch.equal(y.flatten(2).transpose(1, 2), y_tok)
    cl = maps.contiguous(memory_format=torch.channels_last)
    y_cl = dcconv(cl, w, impl=path)
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y_cl, y)
    # non-contiguous tokens
    y_nc = dcconv(tokens.transpose(1, 2).contiguous().transpose(1, 2), w, impl=path)
    assert torch.equal(y_nc, y_tok)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision(path, dtype):
    x, w, b = inputs(B=2, N=40, C=16, K=6, seed=7)
    xh, wh, bh = (t.to(dtype).requires_grad_() for t in (x, w, b))
    y = dcconv(xh, wh, bh, impl=path)
    assert y.dtype == dtype
    # reference: the same (rounded) inputs in float32
    xf, wf, bf = (t.detach().float().requires_grad_() for t in (xh, wh, bh))
    yf = dcconv(xf, wf, bf, impl=path)
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.float16 else dict(rtol=2e-2, atol=4e-2)
    torch.testing.assert_close(y.float(), yf, **tol)
    y.float().sum().backward()
    yf.sum().backward()
    assert xh.grad.dtype == dtype and wh.grad.dtype == dtype
    torch.testing.assert_close(xh.grad.float(), xf.grad, **tol)
    torch.testing.assert_close(wh.grad.float(), wf.grad, rtol=2e-2, atol=0.5)


def test_autocast_float32_weight_half_input(path):
    x, w, b = inputs(B=1, N=30, C=16, K=5, seed=8)
    y = dcconv(x.bfloat16(), w, b, impl=path)  # AMP: activations bf16, parameters fp32
    assert y.dtype == torch.bfloat16
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y2 = DCConv(16, 5, impl=path)(x.bfloat16())
    assert y2.dtype == torch.bfloat16


def test_backward_deterministic(path):
    x, w, b = inputs(B=2, N=300, C=40, K=12, seed=9)
    idx = cluster(x, 12)
    g = torch.randn(2, 300, 40, generator=gen(10))
    results = []
    threads = torch.get_num_threads()
    try:
        for n_threads in (threads, threads, 1):
            torch.set_num_threads(n_threads)
            xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
            dcconv(xs, ws, bs, impl=path, idx=idx).backward(g)
            results.append((xs.grad, ws.grad, bs.grad))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, c in zip(results[0], other):
            assert torch.equal(a, c)


def test_non_finite_inputs_do_not_crash(path):
    x, w, b = inputs(B=1, N=20, C=8, K=5, seed=11)
    x[0, 2] = float('nan')
    x[0, 7, 0] = float('inf')
    y, idx = dcconv(x, w, b, impl=path, subvector_stride=1, return_indices=True)
    assert int(idx.min()) >= 0 and int(idx.max()) < 20
    assert torch.equal(idx[0, :, 0], torch.arange(20))
    assert torch.equal(idx, cluster_bruteforce(x, 5, 1))
    assert y.shape == x.shape


def test_precomputed_indices_skip_clustering(path, monkeypatch):
    x, w, b = inputs(B=1, N=10, C=4, K=3, seed=12)
    idx = torch.arange(10).repeat(1, 3, 1).permute(0, 2, 1).contiguous()  # self only, x3

    def boom(*args, **kwargs):
        raise AssertionError('clustering must be skipped')

    monkeypatch.setattr(dcconv_mod, '_cluster', boom)
    y = dcconv(x, w, b, impl=path, idx=idx)
    torch.testing.assert_close(y, x * w.sum(0) + b)
    assert torch.equal(aggregate(x, idx, w, b, impl=path), y)


@pytest.mark.parametrize('bad,match', [
    (lambda x, w, b: dcconv(x[0, 0], w, b), 'x must be'),
    (lambda x, w, b: dcconv(x[None, None], w, b), 'x must be'),
    (lambda x, w, b: dcconv(x[:0], w, b), 'empty batch'),
    (lambda x, w, b: dcconv(x, w[:, :3], b), 'weight must be'),
    (lambda x, w, b: dcconv(x, w[0], b), 'weight must be'),
    (lambda x, w, b: dcconv(x, w[:0], b), 'K >= 1'),
    (lambda x, w, b: dcconv(x, w, b[:3]), 'bias must be'),
    # bias as weight: floating point only (ints would be promoted silently, complex would lose
    # its imaginary part)
    (lambda x, w, b: dcconv(x, w, b.long()), 'bias must be a floating-point tensor, got .*int64'),
    (lambda x, w, b: dcconv(x, w, b > 0), 'bias must be a floating-point tensor, got torch.bool'),
    (lambda x, w, b: dcconv(x, w, b.to(torch.complex64)), 'bias must be a floating-point'),
    (lambda x, w, b: dcconv(x, w, [0.] * 8), 'bias must be a .8,. tensor, got list'),
    (lambda x, w, b: dcconv(x, w.long(), b), 'weight must be a floating-point'),
    (lambda x, w, b: dcconv(x, w, b, kernel_size=5), 'kernel_size'),
    (lambda x, w, b: dcconv(x, w, b, kernel_size=0), 'kernel_size'),
    (lambda x, w, b: dcconv(x, w, b, subvector_stride=0), 'subvector_stride'),
    (lambda x, w, b: dcconv(x, w, b, impl='gpu'), 'impl'),
    (lambda x, w, b: dcconv(x, w, b, idx=torch.zeros(2, 10, 2, dtype=torch.long)), 'idx'),
    (lambda x, w, b: dcconv(x, w, b, idx=torch.full((2, 10, 6), 10)), r'\[0, 10\)'),
    (lambda x, w, b: dcconv(x, w, b, idx=torch.zeros(2, 10, 6)), 'int64'),
    (lambda x, w, b: dcconv(x[:, :, :0], w[:, :0], b[:0]), 'C = 0'),
    (lambda x, w, b: dcconv(torch.zeros(1, 4, 0, 3), w[:, :4], b[:4]), 'spatial'),
    (lambda x, w, b: DCConv(4, 0), 'kernel_size'),
    (lambda x, w, b: DCConv(4, 3, impl='fast'), 'impl'),
])
def test_bad_input(bad, match):
    x, w, b = inputs(B=2, N=10, C=8, K=6)
    with pytest.raises(ValueError, match=match):
        bad(x, w, b)


def test_module():
    m = MODELS.build(dict(type='DCConv', channels=32, kernel_size=9))
    assert isinstance(m, DCConv)
    assert m.weight.shape == (9, 32) and m.bias.shape == (32, )
    weight = m.weight.detach()
    assert float(weight.abs().max()) <= .04 and 0.01 < float(weight.std()) < 0.03
    assert torch.all(m.bias == 0)
    assert repr(m) == 'DCConv(32, kernel_size=9, subvector_stride=8)'
    assert 'bias=False' in repr(DCConv(8, 3, 1, bias=False))
    assert DCConv(8, 3, bias=False).bias is None
    assert "impl='pytorch'" in repr(DCConv(8, 3, impl='pytorch'))
    maps = torch.randn(2, 32, 4, 5)
    assert m(maps).shape == maps.shape
    assert m.last_indices is None
    m.record_indices = True
    tokens = torch.randn(2, 20, 32, requires_grad=True)
    y = m(tokens)
    assert y.shape == tokens.shape
    idx = m.last_indices
    assert idx.shape == (2, 20, 9) and idx.device.type == 'cpu' and not idx.requires_grad
    assert torch.equal(idx, cluster(tokens.detach(), 9, 8))
    y.sum().backward()
    assert m.weight.grad is not None and m.bias.grad is not None


@pytest.fixture
def no_ext(monkeypatch):
    """Simulate a missing extension (and restore the real state afterwards)."""

    def missing():
        raise ImportError('No module named mmdccnext._ext (simulated)')

    ext_loader.reset_ext_cache()
    monkeypatch.setattr(ext_loader, '_import_ext', missing)
    yield
    monkeypatch.undo()
    ext_loader.reset_ext_cache()


def test_missing_extension_falls_back_with_one_warning(no_ext, monkeypatch):
    monkeypatch.delenv(dcconv_mod.ENV_IMPL, raising=False)
    x, w, b = inputs(B=1, N=16, C=8, K=4)
    with pytest.warns(UserWarning, match='pure-PyTorch') as record:
        y1 = dcconv(x, w, b)
        y2 = dcconv(x, w, b)
        cluster(x, 4)
    assert len([r for r in record if 'pure-PyTorch' in str(r.message)]) == 1
    assert torch.equal(y1, y2)
    assert torch.equal(y1, dcconv(x, w, b, impl='pytorch'))
    assert not ext_available()
    with pytest.raises(RuntimeError, match='mmdccnext._ext'):
        dcconv(x, w, b, impl='cpu')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        dcconv(x, w, b, impl='pytorch')  # explicit PyTorch path: no warning


def test_missing_extension_in_fresh_interpreter():
    import subprocess
    import sys
    code = (
        'import sys, warnings\n'
        'sys.modules["mmdccnext._ext"] = None\n'  # makes `import mmdccnext._ext` fail
        'warnings.simplefilter("always")\n'
        'with warnings.catch_warnings(record=True) as rec:\n'
        '    import mmdccnext, torch\n'
        '    from mmdccnext.ops import dcconv, DCConv\n'
        '    y = DCConv(8, 3)(torch.randn(1, 8, 4, 4)); y = DCConv(8, 3)(torch.randn(2, 5, 8))\n'
        'n = sum("pure-PyTorch" in str(r.message) for r in rec)\n'
        'print(n)\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == '1'


def test_env_var_overrides_auto(monkeypatch):
    x = torch.randn(1, 4, 4)
    monkeypatch.setenv(dcconv_mod.ENV_IMPL, 'pytorch')
    assert dcconv_mod.resolve_impl('auto', x) == 'pytorch'
    if ext_available():  # the variable only replaces 'auto', never an explicit choice
        assert dcconv_mod.resolve_impl('cpu', x) == 'cpu'
    monkeypatch.setenv(dcconv_mod.ENV_IMPL, 'nonsense')
    with pytest.raises(ValueError, match=dcconv_mod.ENV_IMPL):
        dcconv_mod.resolve_impl('auto', x)
    monkeypatch.delenv(dcconv_mod.ENV_IMPL)
    expected = 'cpu' if ext_available() else 'pytorch'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        assert dcconv_mod.resolve_impl('auto', x) == expected


@needs_ext
def test_cpu_impl_rejects_non_cpu_tensor():
    x = torch.randn(1, 4, 4, device='meta')
    with pytest.raises(RuntimeError, match="impl='cpu'"):
        dcconv_mod.resolve_impl('cpu', x)
    assert dcconv_mod.resolve_impl('auto', x) == 'pytorch'
