"""The PyTorch path's backward: deterministic by construction (no scatter_add_, whose atomics
make CUDA runs differ), equal to the float64 reference and to the scatter_add_ it replaced up
to float rounding, whatever the chunking and however many readers a patch has."""
import pytest
import torch

from mmdccnext.ops import cluster, dcconv, pytorch_impl
from mmdccnext.ops.reference import aggregate_reference


def gen(seed):
    return torch.Generator().manual_seed(seed)


def case(B=2, N=300, C=40, K=12, seed=0, dtype=torch.float32, hub=False):
    g = gen(seed)
    x = torch.randn(B, N, C, generator=g, dtype=dtype)
    w = torch.randn(K, C, generator=g, dtype=dtype)
    go = torch.randn(B, N, C, generator=g, dtype=dtype)
    idx = cluster(x, K, impl='pytorch')
    if hub:  # patch 0 read by every row, several times per row (a user's precomputed idx)
        idx = idx.clone()
        idx[:, :, 1::2] = 0
    return x, idx, w, go


def reference_grad_x(x, idx, w, go):
    xd = x.double().requires_grad_()
    aggregate_reference(xd, idx, w.double()).backward(go.double())
    return xd.grad


def scatter_add_grad_x(x, idx, w, go):
    """The backward this path had before: one scatter_add_ per tap."""
    B, N, C = x.shape
    out = torch.zeros_like(x)
    for k in range(idx.shape[-1]):
        out.scatter_add_(1, idx[..., k:k + 1].expand(B, N, C), go * w[k])
    return out


def assert_close_to(got, ref, rtol):
    # normwise: the largest error against the largest reference value (signed sums cancel)
    err = float((got.double() - ref.double()).abs().max())
    assert err <= rtol * float(ref.abs().max()), err


@pytest.mark.parametrize('hub', [False, True])
@pytest.mark.parametrize('chunk', [None, 97, 1000])
def test_grad_x_equals_reference_and_scatter_add(hub, chunk):
    # chunk 97: segments split across chunks; 1000: a chunk spans many segments; the hub's
    # 300 * 6 readers are longer than every chunk
    x, idx, w, go = case(hub=hub)
    got = pytorch_impl._grad_x(go, idx, w, entries_per_chunk=chunk)
    assert_close_to(got, reference_grad_x(x, idx, w, go), 1e-5)
    assert_close_to(got, scatter_add_grad_x(x, idx, w, go), 1e-5)


def test_grad_x_float64_and_n_below_k():
    x, idx, w, go = case(B=3, N=5, C=9, K=12, dtype=torch.float64)
    assert idx.shape[-1] == 5
    got = pytorch_impl._grad_x(go, idx, w[:5].contiguous())
    assert_close_to(got, reference_grad_x(x, idx, w[:5], go), 1e-12)


def test_patches_nobody_reads_get_zero():
    x, idx, w, go = case(B=1, N=20, C=4, K=3)
    idx = torch.zeros_like(idx)  # everyone reads patch 0
    got = pytorch_impl._grad_x(go, idx, w)
    assert bool((got[0, 1:] == 0).all())
    assert_close_to(got, reference_grad_x(x, idx, w, go), 1e-5)


def test_two_backward_passes_give_identical_bits():
    x, idx, w, go = case(B=2, N=400, C=24, K=12, seed=3)
    b = torch.randn(24, generator=gen(4))
    grads = []
    for _ in range(2):
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        dcconv(xs, ws, bs, impl='pytorch', idx=idx).backward(go)
        grads.append((xs.grad, ws.grad, bs.grad))
    for a, c in zip(*grads):
        assert torch.equal(a, c)
    ref = reference_grad_x(x, idx, w, go)
    assert_close_to(grads[0][0], ref, 1e-5)


def test_gradcheck_float64():
    g = gen(5)
    x = torch.randn(2, 11, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: dcconv(x, w, b, impl='pytorch'), (x, w, b))


def test_runs_under_deterministic_algorithms():
    # no op of the backward is refused by torch.use_deterministic_algorithms(True)
    x, idx, w, go = case(B=1, N=50, C=8, K=5)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        got = pytorch_impl._grad_x(go, idx, w)
    finally:
        torch.use_deterministic_algorithms(before)
    assert torch.equal(got, pytorch_impl._grad_x(go, idx, w))
