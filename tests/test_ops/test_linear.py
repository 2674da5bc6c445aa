"""The Conv-FFN's linear layers on oneDNN (mmdccnext/ops/linear.py): within a rounding bound
of the float64 product, nn.Linear's gradients, oneDNN only where it applies (an output within
the layer's limit) and nn.Linear's own forward everywhere else, the same state dict."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmdccnext.ops import linear
from mmdccnext.ops.linear import OneDNNLinear, onednn_linear

needs_onednn = pytest.mark.skipif(
    linear._onednn_linear() is None or not torch.backends.mkldnn.enabled,
    reason='this build of PyTorch has no oneDNN linear op (torch.ops.mkldnn._linear_pointwise)')

# (input shape, out features): rows of one, odd widths (vector tails), the Conv-FFN's
# channels-last maps, no rows at all
SHAPES = [((1, 7), 3), ((5, 33), 17), ((2, 3, 4, 48), 8), ((3, 5, 2, 96), 16), ((0, 12), 5),
          ((64, 384), 64)]


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _layer(in_features, out_features, bias=True, seed=1):
    torch.manual_seed(seed)
    return OneDNNLinear(in_features, out_features, bias=bias)


def _bound(x, weight, bias):
    """Error bound of float32 sums of the K terms in any order: (K + 2) u (|x| |w|^T + |b|)."""
    K = x.shape[-1]
    terms = x.double().abs() @ weight.double().abs().t()
    if bias is not None:
        terms = terms + bias.double().abs()
    return (K + 2) * torch.finfo(torch.float32).eps / 2 * terms


@needs_onednn
@pytest.mark.parametrize('shape,out_features', SHAPES)
@pytest.mark.parametrize('bias', [True, False])
def test_forward_within_rounding_of_float64(shape, out_features, bias):
    layer = _layer(shape[-1], out_features, bias)
    x = randn(*shape, seed=2)
    assert linear.applies(x, layer.weight)
    with torch.no_grad():
        y = layer(x)
    ref = F.linear(x.double(), layer.weight.double(),
                   None if layer.bias is None else layer.bias.double())
    assert y.shape == ref.shape and y.dtype == torch.float32 and y.is_contiguous()
    assert ((y.double() - ref).abs() <= _bound(x, layer.weight, layer.bias)).all()


@needs_onednn
def test_the_module_runs_onednn_where_it_applies(monkeypatch):
    calls = []
    op = linear._onednn_linear()

    def spy(*args):
        calls.append(args[0].shape)
        return op(*args)

    monkeypatch.setattr(linear, '_onednn_linear', lambda: spy)
    layer = _layer(24, 6)
    x = randn(4, 24)
    with torch.no_grad():
        layer(x)
    layer(x.requires_grad_())
    assert calls == [(4, 24), (4, 24)]


@needs_onednn
@pytest.mark.parametrize('shape,out_features', SHAPES[:4])
def test_gradients_are_nn_linears(shape, out_features):
    """LinearFunction's backward is ATen's products: nn.Linear's gradients up to rounding,
    within a rounding bound of the float64 ones."""
    layer = _layer(shape[-1], out_features)
    plain = nn.Linear(shape[-1], out_features)
    plain.load_state_dict(layer.state_dict())
    x = randn(*shape, seed=3)
    grad = randn(*shape[:-1], out_features, seed=4)
    ours = torch.autograd.grad(layer(x.clone().requires_grad_()),
                               [layer.weight, layer.bias], grad, allow_unused=False)
    xs = x.clone().requires_grad_()
    out = layer(xs)
    assert type(out.grad_fn).__name__ == 'LinearFunctionBackward'
    (grad_x, ) = torch.autograd.grad(out, [xs], grad)
    theirs = torch.autograd.grad(plain(x.clone().requires_grad_()), [plain.weight, plain.bias],
                                 grad)
    xp = x.clone().requires_grad_()
    (grad_x_plain, ) = torch.autograd.grad(plain(xp), [xp], grad)
    g64, x64, w64 = grad.double().flatten(0, -2), x.double().flatten(0, -2), layer.weight.double()
    refs = [g64 @ w64, g64.t() @ x64, g64.sum(0)]
    for a, p, r, n in zip([grad_x, *ours], [grad_x_plain, *theirs], refs,
                          [out_features, x64.shape[0], x64.shape[0]]):
        assert a.shape == p.shape
        scale = r.abs().max().item()
        budget = (n + 2) * torch.finfo(torch.float32).eps * scale + 1e-30
        assert (a.double().reshape(r.shape) - r).abs().max().item() <= budget
        torch.testing.assert_close(a, p, rtol=0, atol=budget)


@needs_onednn
def test_outputs_over_the_limit_are_nn_linears(monkeypatch):
    calls = []
    op = linear._onednn_linear()
    monkeypatch.setattr(linear, '_onednn_linear',
                        lambda: lambda *args: calls.append(args[0].shape) or op(*args))
    torch.manual_seed(0)
    layer = OneDNNLinear(8, 5, max_output_bytes=4 * 5 * 3)  # three rows of 5 floats
    small, large = randn(3, 8), randn(4, 8)
    with torch.no_grad():
        layer(small)
        assert torch.equal(layer(large), F.linear(large, layer.weight, layer.bias))
    assert calls == [(3, 8)]
    assert linear.applies(small, layer.weight, 60) and not linear.applies(large, layer.weight, 60)
    assert linear.FRESH_PAGES_BYTES == 32 * 2**20


def test_nn_linears_forward_everywhere_else(monkeypatch):
    """float64, oneDNN switched off, autocast, or a graph being recorded: nn.Linear's forward
    (the same bits as F.linear), oneDNN never called."""
    def refuse(*args):
        pytest.fail('oneDNN was called')

    monkeypatch.setattr(linear, '_onednn_linear', lambda: refuse)
    layer = _layer(16, 4)
    x = randn(3, 16)
    with torch.no_grad():
        assert torch.equal(layer.double()(x.double()), F.linear(x.double(), layer.weight,
                                                                layer.bias))
        layer.float()
        with torch.backends.mkldnn.flags(enabled=False):
            assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert layer(x).dtype == torch.bfloat16
        traced = torch.jit.trace(layer, (x, ), check_trace=False)  # the check runs eagerly
        assert torch.equal(traced(x), F.linear(x, layer.weight, layer.bias))
        assert torch.equal(onednn_linear(x.double(), layer.weight.double()),
                           F.linear(x.double(), layer.weight.double()))


def test_onnx_export_records_a_standard_product(tmp_path):
    onnx = pytest.importorskip('onnx', reason='the onnx package is not installed')
    layer = _layer(16, 4)
    path = str(tmp_path / 'linear.onnx')
    torch.onnx.export(layer, (randn(3, 16), ), path, dynamo=False)
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert ops & {'Gemm', 'MatMul'} and not any('mkldnn' in op for op in ops)


def test_state_dict_is_nn_linears():
    layer = _layer(10, 3)
    plain = nn.Linear(10, 3)
    plain.load_state_dict(layer.state_dict())
    assert isinstance(layer, nn.Linear) and list(layer.state_dict()) == ['weight', 'bias']
    x = randn(2, 10)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), plain(x), rtol=0,
                                   atol=_bound(x, layer.weight, layer.bias).max().item())


@pytest.fixture
def fresh_probe():
    linear._onednn_linear.cache_clear()
    yield
    linear._onednn_linear.cache_clear()


def test_a_build_whose_op_fails_its_probe_keeps_nn_linear(fresh_probe, monkeypatch):
    """No oneDNN, or an op that raises or computes wrongly here: None, and the layers run
    nn.Linear's forward."""
    monkeypatch.setattr(torch.backends.mkldnn, 'is_available', lambda: False)
    assert linear._onednn_linear() is None
    monkeypatch.undo()

    class Broken:
        def __init__(self, fn):
            self.default = fn

    def raises(*args):
        raise RuntimeError('not supported on this CPU')

    for fn in (raises, lambda x, w, b, *rest: torch.zeros(x.shape[0], w.shape[0])):
        linear._onednn_linear.cache_clear()
        monkeypatch.setattr(torch.ops.mkldnn, '_linear_pointwise', Broken(fn), raising=False)
        assert linear._onednn_linear() is None
        layer, x = _layer(6, 2), randn(3, 6)
        assert not linear.applies(x, layer.weight)
        with torch.no_grad():
            assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
