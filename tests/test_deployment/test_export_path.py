"""The export path of DCConv (standard ops): same indices and outputs as every other path,
in PyTorch, under tracing and in ONNX Runtime."""
import importlib
import warnings

import numpy as np
import pytest
import torch
from onnx_graphs import all_graphs

from mmdccnext.ops import DCConv, aggregate, available_impls, cluster, dcconv
from mmdccnext.ops.common import subvectors
from mmdccnext.ops.dcconv import is_exporting
from mmdccnext.ops.reference import cluster_reference as cluster_bruteforce

export_mod = importlib.import_module('mmdccnext.ops.export')
dcconv_mod = importlib.import_module('mmdccnext.ops.dcconv')
AGG_PATHS = available_impls('cpu')


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize(
    'B,N,C,K,d',
    [
        (1, 50, 32, 9, 8),  # screened: N >= K + 3
        (2, 120, 33, 12, 8),  # ceil(33 / 8) = 5 sub-channels
        (3, 97, 20, 5, 4),
        (1, 64, 13, 18, 1),  # d = 1: full vectors
        (2, 20, 16, 12, 8),  # N = K + 8: screened, 2 candidates beyond the cluster
        (2, 14, 16, 12, 8),  # N < K + 3: exact path
        (2, 7, 16, 12, 8),  # N < K
        (1, 1, 8, 3, 8),  # a single patch
        (1, 33, 8, 1, 8),  # K = 1
    ])
def test_matches_float64_bruteforce(B, N, C, K, d):
    x = randn(B, N, C, seed=N * C + K)
    assert torch.equal(cluster(x, K, d, impl='export'), cluster_bruteforce(x, K, d))


@pytest.mark.parametrize('dtype', [torch.float64, torch.bfloat16])
def test_other_dtypes(dtype):
    x = randn(2, 80, 24, seed=5).to(dtype)
    assert torch.equal(cluster(x, 7, 2, impl='export'), cluster(x, 7, 2, impl='pytorch'))


def test_ties_go_to_lower_index_and_self_first():
    idx = cluster(torch.zeros(1, 6, 8), 4, 1, impl='export')
    assert idx[0].tolist() == [[n] + [j for j in range(6) if j != n][:3] for n in range(6)]
    # small integers: exact ties everywhere
    x = torch.randint(-2, 3, (2, 300, 12), generator=torch.Generator().manual_seed(0)).float()
    assert torch.equal(cluster(x, 12, 1, impl='export'), cluster_bruteforce(x, 12, 1))


@pytest.mark.parametrize('scale', [1e-3, 1.0, 1e3])
def test_near_ties_bit_identical_to_other_paths(scale):
    # patches that differ by a few ulps: agreement needs the same canonical distances
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(1, 40, 64, generator=g) * scale).repeat(1, 10, 1)
    x = x * (1 + torch.randint(-3, 4, x.shape, generator=g).float() * 2**-23)
    assert torch.equal(cluster(x, 18, 1, impl='export'), cluster(x, 18, 1))


@pytest.mark.parametrize('offset', [0., 1e3, 1e5])
def test_common_offset_and_near_duplicates(offset):
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(1, 30, 64, generator=g)
    x = centres.repeat(1, 20, 1) + 1e-4 * torch.randn(1, 600, 64, generator=g) + offset
    assert torch.equal(cluster(x, 12, 2, impl='export'), cluster(x, 12, 2))


@pytest.mark.parametrize('scale,d', [(1e18, 1), (1e-40, 1), (1e18, 2), (1e-21, 2), (3e17, 2)])
def test_extreme_magnitudes(scale, d):
    # near overflow (the screen gives up: exact fallback) and subnormal distances (the
    # float32 screen underflows; the certificate's absolute slack covers it)
    x = randn(1, 90, 16, seed=6) * scale
    assert torch.equal(cluster(x, 9, d, impl='export'), cluster(x, 9, d, impl='pytorch'))


def test_non_finite_inputs():
    x = randn(2, 40, 16, seed=4)
    x[0, 3] = float('nan')
    x[0, 5, 2] = float('inf')
    x[0, 6, 2] = float('inf')
    x[1, :, 0] = float('-inf')
    assert torch.equal(cluster(x, 6, 1, impl='export'), cluster_bruteforce(x, 6, 1))


def test_exact_fallback_only_where_the_screen_cannot_certify(monkeypatch):
    redone = []
    original = export_mod._exact_rows

    def spy(s, rid, *args, **kwargs):
        redone.append(rid.clone())
        return original(s, rid, *args, **kwargs)

    monkeypatch.setattr(export_mod, '_exact_rows', spy)
    x = randn(2, 700, 160, seed=12)
    assert torch.equal(cluster(x, 12, 8, impl='export'), cluster(x, 12, 8))
    assert not redone  # ordinary data: certified, candidates only
    x[0, 650:] = x[0, 550:600]  # twins (the screen certifies those)
    x[0, 600:641] = 10.  # 41 identical patches far from the others: more ties than candidates
    assert torch.equal(cluster(x, 12, 8, impl='export'), cluster_bruteforce(x, 12, 8))
    # only the row blocks that hold uncertified rows were redone
    rows = torch.cat(redone).unique()
    blocks = export_mod._row_blocks(700, 'cpu', True)
    holding = [b for b in blocks if ((b >= 600) & (b <= 640)).any()]
    assert 0 < len(redone) == len(holding) < len(blocks)
    assert rows.min() >= min(b.min() for b in holding)


def test_row_blocks_bound_the_temporaries(monkeypatch):
    # every (B, rows, N) temporary of the clustering has ROW_BLOCK rows: memory N * block
    x = randn(1, 3000, 64, seed=14)
    expected = cluster(x, 12, 8)
    shapes = []
    original = torch.matmul

    def spy(a, b):
        out = original(a, b)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(export_mod.torch, 'matmul', spy)
    assert torch.equal(cluster(x, 12, 8, impl='export'), expected)
    G, R = export_mod.COL_GROUP, export_mod.ROW_BLOCK
    # a static N: 24 equal blocks of 125 rows (no padding rows)
    assert len(shapes) == -(-3000 // R) == 24
    # the block's rows against every group of G columns (whole groups, the last padding)
    assert all(s == (1, 3000 // G + 2, 125, G) for s in shapes)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize('with_bias', [True, False])
def test_aggregate_bit_identical_to_other_paths(dtype, with_bias):
    x = randn(3, 200, 48, seed=1).to(dtype)
    w = randn(12, 48, seed=2).to(dtype)
    b = randn(48, seed=3).to(dtype) if with_bias else None
    idx = cluster(x, 12, 8)
    y = aggregate(x, idx, w, b, impl='export')
    assert y.dtype == dtype
    for path in AGG_PATHS:
        assert torch.equal(y, aggregate(x, idx, w, b, impl=path))


def test_export_impl_gradients_match_pytorch_path():
    x, w, b = randn(2, 60, 16, seed=6), randn(5, 16, seed=7), randn(16, seed=8)
    grads = []
    for impl in ('export', 'pytorch'):
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        dcconv(xs, ws, bs, impl=impl).pow(2).sum().backward()
        grads.append((xs.grad, ws.grad, bs.grad))
    for a, e in zip(*grads):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


def test_dispatch_to_the_export_path():
    x = randn(1, 40, 16, seed=9)
    assert dcconv_mod.resolve_impl('export', x) == 'export'
    assert not is_exporting()
    assert "impl='export'" in repr(DCConv(16, 5, impl='export'))
    w = randn(5, 16, seed=10)
    assert torch.equal(dcconv(x, w, impl='export'), dcconv(x, w, impl='pytorch'))


def test_jit_trace_records_the_export_path():
    # torch.jit.trace cannot record torch.cond: the traced clustering evaluates all pairs,
    # which still gives the canonical clusters for inputs other than the traced one
    layer = DCConv(64, 12).eval()
    torch.nn.init.normal_(layer.weight)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')  # trace warnings about data-dependent values
        traced = torch.jit.trace(layer, randn(1, 120, 64, seed=11))
        x = randn(1, 120, 64, seed=12)
        assert torch.equal(traced(x), layer(x))


class _LayerWithIndices(torch.nn.Module):

    def __init__(self, channels, kernel_size):
        super().__init__()
        self.layer = DCConv(channels, kernel_size)
        torch.nn.init.normal_(self.layer.weight)
        torch.nn.init.normal_(self.layer.bias)

    def forward(self, x):
        y, idx = dcconv(x, self.layer.weight, self.layer.bias, return_indices=True)
        return y, idx


def _inputs_for_ort():
    g = torch.Generator().manual_seed(13)
    plain = torch.randn(2, 300, 80, generator=g)
    dup = torch.randn(2, 300, 80, generator=g)
    dup[0, 100:200] = dup[0, :100]  # twins and a block of identical patches: If -> else
    dup[0, 20:50] = dup[0, 10]
    ints = torch.randint(-2, 3, (2, 300, 80), generator=g).float()  # exact ties
    nan = torch.randn(2, 300, 80, generator=g)
    nan[1, 7] = float('nan')
    return dict(plain=plain, duplicates=dup, integers=ints, nan=nan)


@pytest.mark.parametrize('dynamo', [True, False])
def test_onnx_runtime_identical_indices_and_outputs(tmp_path, dynamo):
    # dynamo: the screened clustering with an If for the exact fallback; the legacy
    # TorchScript-based exporter cannot record the If and exports the exact all-pairs path
    ort = pytest.importorskip('onnxruntime', reason='onnxruntime is not installed')
    onnx = pytest.importorskip('onnx', reason='onnx is not installed')
    model = _LayerWithIndices(80, 12).eval()
    path = str(tmp_path / 'dcconv.onnx')
    inputs = _inputs_for_ort()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the legacy exporter is deprecated
        torch.onnx.export(
            model, (inputs['plain'], ),
            path,
            input_names=['x'],
            output_names=['y', 'idx'],
            dynamo=dynamo,
            verbose=False,
            **({} if dynamo else dict(opset_version=17)))
    nodes = [n for g in all_graphs(onnx.load(path).graph) for n in g.node]
    ops = {n.op_type for n in nodes}
    if dynamo:  # the row blocks in a Scan, the fallback in an If
        assert {'MatMul', 'TopK', 'If', 'Scan', 'ReduceMin'} <= ops
    else:  # blocks unrolled, no control flow
        assert 'TopK' in ops and not {'If', 'Scan', 'Loop'} & ops
    assert all(n.domain in ('', 'ai.onnx') for n in nodes)  # no custom operators
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    for name, x in inputs.items():
        y, idx = session.run(None, {'x': x.numpy()})
        with torch.no_grad():
            y_ref, idx_ref = model(x)  # default path (C++ kernels when built)
        assert np.array_equal(idx, idx_ref.numpy()), name
        np.testing.assert_allclose(y, y_ref.numpy(), rtol=0, atol=1e-5, err_msg=name)
    # the screen cannot certify the duplicated image: ORT took the exact branch there
    s = subvectors(inputs['duplicates'], 8)
    assert not bool(export_mod._screened(s, 12, False, False)[1].all())
