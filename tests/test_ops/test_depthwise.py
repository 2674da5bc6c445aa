"""The Conv-FFN's 3x3 depthwise convolution kernels (mmdccnext/ops/depthwise.py,
csrc/cpu/depthwise.cpp): against the float64 convolution, gradcheck, every ISA bit-identical,
deterministic whatever the threads, written into a caller's buffer or in place, clear errors,
and the module equal to nn.Conv2d wherever it runs them and nn.Conv2d itself everywhere else."""
import pytest
import torch
import torch.nn.functional as F
from cpu_isa_helpers import ISAS, forced_isa, isa_skip_reason

from mmdccnext.ops import cpu_impl, depthwise
from mmdccnext.ops.depthwise import DepthwiseConv2d

pytestmark = pytest.mark.skipif(
    not cpu_impl.ext_available(), reason='the C++ extension mmdccnext._ext is not built')

# (B, H, W, C): the vector lanes and the scalar tail of every ISA, single rows and columns,
# a row shorter than a pair, a map taller than a gradient task (8 rows)
SHAPES = [(2, 5, 7, 19), (1, 1, 1, 3), (3, 1, 6, 16), (2, 6, 1, 33), (1, 2, 2, 1), (2, 11, 9, 64),
          (1, 17, 3, 40)]


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def reference(x, weight, bias):
    """The convolution in float64, channels-last in and out."""
    out = F.conv2d(x.double().permute(0, 3, 1, 2), weight.double(),
                   None if bias is None else bias.double(), 1, 1, 1, x.shape[-1])
    return out.permute(0, 2, 3, 1)


def reference_grads(x, weight, bias, grad):
    leaves = [t.double().requires_grad_() for t in (x, weight, bias)]
    out = reference(*leaves)
    return torch.autograd.grad(out, leaves, grad.double())


def inputs(shape, dtype=torch.float32, seed=0):
    C = shape[-1]
    return (randn(*shape, seed=seed, dtype=dtype), randn(C, 1, 3, 3, seed=seed + 1, dtype=dtype),
            randn(C, seed=seed + 2, dtype=dtype), randn(*shape, seed=seed + 3, dtype=dtype))


@pytest.mark.parametrize('shape', SHAPES, ids=str)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_forward_and_gradients_match_the_float64_convolution(shape, dtype, cpu_isa):
    x, w, b, g = inputs(shape, dtype)
    B, H, W, C = shape
    eps = torch.finfo(dtype).eps
    # |error| <= n eps sum |terms| for a chain of n roundings (n <= 10 forward)
    abs_out = reference(x.abs(), w.abs(), b.abs())
    torch.testing.assert_close(
        depthwise.forward(x, w, b).double(),
        reference(x, w, b),
        rtol=0,
        atol=float(10 * eps * abs_out.max()) + 1e-300)
    gx, gw, gb = depthwise.backward(g, x, w)
    rx, rw, rb = reference_grads(x, w, b, g)
    abs_gx, abs_gw, abs_gb = reference_grads(x.abs(), w.abs(), b.abs(), g.abs())
    n = B * H * W + 10  # the longest chain: a weight gradient's, plus the task sums
    torch.testing.assert_close(gx.double(), rx, rtol=0, atol=float(10 * eps * abs_gx.abs().max()))
    torch.testing.assert_close(gw.double(), rw, rtol=0, atol=float(n * eps * abs_gw.abs().max()))
    torch.testing.assert_close(gb.double(), rb, rtol=0, atol=float(n * eps * abs_gb.abs().max()))


def test_gradcheck_float64():
    x, w, b, _ = inputs((2, 5, 4, 6), torch.float64)
    leaves = [t.requires_grad_() for t in (x, w, b)]
    assert torch.autograd.gradcheck(depthwise.conv3x3, leaves)


def test_every_isa_gives_the_same_bits():
    runnable = [isa for isa in ISAS if isa_skip_reason(isa) is None]
    if len(runnable) < 2:
        pytest.skip(f'this machine runs only {runnable} of the kernels: nothing to compare')
    x, w, b, g = inputs((2, 9, 13, 37))
    results = []
    for isa in runnable:
        with forced_isa(isa):
            results.append((depthwise.forward(x, w, b), *depthwise.backward(g, x, w)))
    for other in results[1:]:
        for a, e in zip(other, results[0]):
            assert torch.equal(a, e)


def at_threads(fn, counts):
    """``fn()`` run with each number of threads of ``counts``: the list of its results."""
    threads = torch.get_num_threads()
    try:
        return [torch.set_num_threads(n) or fn() for n in counts]
    finally:
        torch.set_num_threads(threads)


def test_deterministic_whatever_the_threads():
    x, w, b, g = inputs((3, 19, 6, 24))
    results = at_threads(lambda: (depthwise.forward(x, w, b), *depthwise.backward(g, x, w)),
                         (1, 2, 3))
    for other in results[1:]:
        for a, e in zip(other, results[0]):
            assert torch.equal(a, e)


def test_into_a_buffer_and_only_the_gradients_asked_for():
    x, w, b, g = inputs((2, 4, 5, 8))
    out = torch.full_like(x, float('nan'))
    assert depthwise.forward(x, w, b, out=out) is out
    assert torch.equal(out, depthwise.forward(x, w, b))
    grad_x = torch.full_like(x, float('nan'))
    gx, gw, gb = depthwise.backward(g, x, w, need_w=False, need_b=False, grad_x_out=grad_x)
    assert gx is grad_x and gw is None and gb is None
    assert torch.equal(gx, depthwise.backward(g, x, w)[0])
    gx, gw, gb = depthwise.backward(g, x, w, need_x=False)
    assert gx is None and gw.shape == w.shape and gb.shape == (8, )


def test_taps_outside_the_map_are_skipped_like_onednn():
    # an infinite weight reaches the outputs whose tap reads the map, not the padding: what
    # the float32 nn.Conv2d (oneDNN) returns on the CPU
    x = torch.ones(1, 5, 5, 16)
    w = torch.ones(16, 1, 3, 3)
    w[:, 0, 0, 0] = float('inf')
    expected = F.conv2d(
        x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last), w, None, 1, 1, 1,
        16).permute(0, 2, 3, 1)
    got = depthwise.forward(x, w)
    assert torch.equal(got.isinf(), expected.isinf())
    assert torch.equal(got[got.isfinite()], expected[expected.isfinite()])
    assert got[0, 0, 0, 0] == 4  # the corner: four taps inside the map


def _overlapping(x):
    """``x`` copied into a larger storage, and a tensor shaped as ``x`` 8 values further on in
    it: an output that overlaps the map without being the map."""
    big = torch.empty(x.numel() + 8, dtype=x.dtype)
    a = big[:x.numel()].view(x.shape).copy_(x)
    return a, big[8:].view(x.shape)


@pytest.mark.parametrize('call,match', [
    (lambda x, w: depthwise.forward(x.permute(0, 2, 1, 3), w), 'contiguous'),
    (lambda x, w: depthwise.forward(x[0], w), r'\(B, H, W, C\)'),
    (lambda x, w: depthwise.forward(x.half(), w.half()), 'float32 or float64'),
    (lambda x, w: depthwise.forward(x, w[:, :, :2]), r'\(C, 1, 3, 3\)'),
    (lambda x, w: depthwise.forward(x, w.double()), 'dtype'),
    (lambda x, w: depthwise.forward(x, w, torch.zeros(3)), 'bias'),
    (lambda x, w: (lambda a, b: depthwise.forward(a, w, out=b))(*_overlapping(x)), 'overlap'),
    (lambda x, w: depthwise.forward(x, w, out=torch.empty(1, 2, 3, 8)), 'shaped'),
])
def test_bad_input_is_a_clear_error(call, match):
    x, w, _, _ = inputs((2, 4, 5, 8))
    with pytest.raises(RuntimeError, match=match):
        call(x, w)


@pytest.mark.parametrize('threads', [1, 2, 3])
def test_in_place_is_the_same_convolution(cpu_isa, threads):
    # out=x: rows are written back one row late from a ring of two; with several threads
    # each takes a band of an image's rows and the rows just outside it are copied first
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for shape in SHAPES + [(1, 40, 33, 70), (2, 3, 1, 16)]:
            for dtype in (torch.float32, torch.float64):
                x, w, b, _ = inputs(shape, dtype)
                expected = depthwise.forward(x, w, b)
                y = x.clone()
                got = depthwise.forward(y, w, b, out=y)
                assert got.data_ptr() == y.data_ptr()
                assert torch.equal(y, expected), (shape, dtype)
    finally:
        torch.set_num_threads(before)


def _module_and_conv(channels, seed=0):
    torch.manual_seed(seed)
    module = DepthwiseConv2d(channels)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
    conv.load_state_dict(module.state_dict())
    return module, conv


def test_the_module_is_nn_conv2d_computed_by_the_kernel():
    module, conv = _module_and_conv(24)
    assert list(module.state_dict()) == ['weight', 'bias']
    x = randn(2, 24, 7, 9).contiguous(memory_format=torch.channels_last)
    assert module.runs_kernel(x.permute(0, 2, 3, 1))
    outs, grads = [], []
    for m in (module, conv):
        xg = x.clone().requires_grad_()
        out = m(xg)
        outs.append(out)
        grads.append(torch.autograd.grad(out, [xg, m.weight, m.bias], randn(*out.shape)))
    assert outs[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(outs[0], outs[1])
    for a, e in zip(grads[0], grads[1]):
        torch.testing.assert_close(a, e)


def test_the_module_runs_nn_conv2d_where_the_kernel_does_not_apply(monkeypatch):
    calls = []
    monkeypatch.setattr(depthwise, 'forward', lambda *a, **k: calls.append(1))
    module, conv = _module_and_conv(8)
    x_cl = randn(1, 8, 5, 6).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        # NCHW-contiguous input, autocast, a 5x5 kernel
        x = randn(1, 8, 5, 6)
        assert torch.equal(module(x), conv(x))
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert torch.equal(module(x_cl), conv(x_cl))
        big = DepthwiseConv2d(8, 5)
        assert big(x_cl).shape == x_cl.shape
    assert calls == []


# ---------------------------------------------------------------------------------------
# The 7x7 mixers: oneDNN's forward and input gradient, the extension's weight gradient
# ---------------------------------------------------------------------------------------
def weight_grad(g, x, k=7):
    return depthwise.conv_backward(g, x, randn(x.shape[-1], 1, k, k), need_x=False)[1:]


@pytest.mark.parametrize('shape', SHAPES + [(2, 4, 12, 5)], ids=str)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_7x7_weight_gradient_matches_the_float64_convolution(shape, dtype, cpu_isa):
    B, H, W, C = shape
    x, g = randn(*shape, seed=4, dtype=dtype), randn(*shape, seed=5, dtype=dtype)
    w, b = randn(C, 1, 7, 7, dtype=dtype), randn(C, dtype=dtype)
    gw, gb = weight_grad(g, x)

    def grads(x, w, b, g):
        leaves = [t.double().requires_grad_() for t in (x, w, b)]
        out = F.conv2d(leaves[0].permute(0, 3, 1, 2), leaves[1], leaves[2], 1, 3, 1, C)
        return torch.autograd.grad(out.permute(0, 2, 3, 1), leaves[1:], g.double())

    rw, rb = grads(x, w, b, g)
    abs_w, abs_b = grads(x.abs(), w.abs(), b.abs(), g.abs())
    n = B * H * W + 10  # the longest chain: a task's positions, plus the task sums
    eps = torch.finfo(dtype).eps
    assert gw.dtype == dtype and gw.shape == w.shape
    torch.testing.assert_close(gw.double(), rw, rtol=0, atol=float(n * eps * abs_w.max()))
    torch.testing.assert_close(gb.double(), rb, rtol=0, atol=float(n * eps * abs_b.max()))


def test_7x7_weight_gradient_same_bits_on_every_isa_and_thread_count():
    x, g = randn(3, 19, 13, 37, seed=6), randn(3, 19, 13, 37, seed=7)
    results = []
    for isa in [isa for isa in ISAS if isa_skip_reason(isa) is None]:
        with forced_isa(isa):
            results.append(weight_grad(g, x))
    results += at_threads(lambda: weight_grad(g, x), (1, 3))
    for other in results[1:]:
        for a, e in zip(other, results[0]):
            assert torch.equal(a, e)


def test_weight_gradient_of_another_size_is_a_clear_error():
    x = randn(1, 4, 4, 8)
    with pytest.raises(RuntimeError, match='kernel_size must be 3 or 7'):
        cpu_impl.load_ext().depthwise_weight_grad(x, x, 5)


def test_the_7x7_module_is_nn_conv2d_with_the_extensions_weight_gradient(monkeypatch):
    torch.manual_seed(3)
    module = DepthwiseConv2d(24, 7)
    conv = torch.nn.Conv2d(24, 24, 7, padding=3, groups=24)
    conv.load_state_dict(module.state_dict())
    x = randn(2, 24, 9, 11).contiguous(memory_format=torch.channels_last)
    assert module.runs_weight_grad(x.permute(0, 2, 3, 1))
    results = []
    for m in (module, conv):
        xg = x.clone().requires_grad_()
        out = m(xg)
        results.append((out, *torch.autograd.grad(out, [xg, m.weight, m.bias], randn(*out.shape))))
    (out, gx, gw, gb), (out_ref, gx_ref, gw_ref, gb_ref) = results
    # the output and the input gradient are oneDNN's own, the weight gradient sums in
    # another order
    assert torch.equal(out, out_ref) and torch.equal(gx, gx_ref)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(gw, gw_ref)
    torch.testing.assert_close(gb, gb_ref)
    # nn.Conv2d's forward without autograd, or with a frozen weight
    calls = []
    monkeypatch.setattr(depthwise.WeightGradFunction, 'apply', lambda *a: calls.append(1))
    with torch.no_grad():
        assert torch.equal(module(x), out_ref)
    module.requires_grad_(False)
    assert torch.equal(module(x.clone().requires_grad_()), out_ref)
    assert calls == []
