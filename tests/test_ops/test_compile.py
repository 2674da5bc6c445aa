"""DCConv through torch.library: the ops' registrations hold (opcheck), torch.compile traces
DCCNeXt without a graph break at DCConv, and compiled runs equal eager ones."""
import pytest
import torch

from mmdccnext.models.backbones import DCCNeXt
from mmdccnext.ops import DCConv, available_impls, cluster, dcconv
from mmdccnext.ops.library import aggregate_backward_op, aggregate_op, cluster_op

IMPLS = [i for i in available_impls('cpu') if i != 'triton']  # triton: test_triton.py
# A DCCNeXt small enough to compile in seconds, with DCConv in stages 3 and 4 as in B0-B4.
TINY = dict(channels=[8, 16, 24, 32], depths=[1, 1, 1, 1])


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_opcheck(impl, dtype):
    # schema, fake (meta) function, autograd registration and dispatch agree with each other
    x = randn(2, 30, 12, seed=1, dtype=dtype)
    s = x[..., ::4].contiguous()
    idx = cluster_op(s, 5, impl)
    w, b = randn(5, 12, seed=2, dtype=dtype), randn(12, seed=3, dtype=dtype)
    torch.library.opcheck(cluster_op, (s, 5, impl))
    torch.library.opcheck(cluster_op, (s[:, :3].contiguous(), 5, impl))  # N < K
    for bias in (b, None):
        torch.library.opcheck(aggregate_op, (x.requires_grad_(), idx, w.requires_grad_(), bias,
                                             impl))
    g = randn(2, 30, 12, seed=4, dtype=dtype)
    torch.library.opcheck(aggregate_backward_op, (g, x.detach(), idx, w.detach(), True, False,
                                                  True, impl))


def tiny_backbone(seed=0):
    torch.manual_seed(seed)
    # drop_path 0: compiled and eager must draw nothing random to be compared
    return DCCNeXt(arch=TINY, out_indices=(2, 3), drop_path_rate=0.)


def test_backbone_traces_with_no_graph_break():
    model = tiny_backbone()
    explained = torch._dynamo.explain(model)(randn(2, 3, 64, 64))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    ops = {str(node.target) for graph in explained.graphs for node in graph.graph.nodes}
    assert {'mmdccnext.cluster.default', 'mmdccnext.aggregate.default'} <= ops, ops


def _step(model, x):
    model.zero_grad(set_to_none=True)
    outs = model(x)
    sum(o.pow(2).mean() for o in outs).backward()
    return [o.detach() for o in outs], [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize('impl', IMPLS)
def test_compiled_backbone_equals_eager(impl):
    # aot_eager: dynamo + AOTAutograd (fake tensors, the ops' registered autograd formula,
    # functionalisation) with eager kernels, so the results must be bitwise those of eager;
    # inductor's code generation is compared on the op alone below.
    model = tiny_backbone()
    for m in model.modules():
        if isinstance(m, DCConv):
            m.impl = impl
    x = randn(2, 3, 64, 64, seed=5)
    eager_out, eager_grads = _step(model, x)
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    out, grads = _step(compiled, x)
    for a, e in zip(out, eager_out):
        assert torch.equal(a, e)
    for a, e in zip(grads, eager_grads):
        assert torch.equal(a, e)


@pytest.mark.parametrize('impl', IMPLS)
def test_inductor_compiled_dcconv_equals_eager(impl):
    # the op is one opaque node for inductor: indices identical, outputs and gradients equal
    # to eager up to the rounding of what inductor fuses around it (the 4-D to tokens views,
    # the casts)
    x = randn(2, 24, 10, 12, seed=6).requires_grad_()
    w = randn(9, 24, seed=7).requires_grad_()
    b = randn(24, seed=8).requires_grad_()

    def f(x, w, b):
        y, idx = dcconv(x, w, b, impl=impl, return_indices=True)
        return (y * y).sum(), idx

    results = []
    for fn in (f, torch.compile(f, fullgraph=True)):
        loss, idx = fn(x, w, b)
        grads = torch.autograd.grad(loss, (x, w, b))
        results.append((loss.detach(), idx, grads))
    (loss_e, idx_e, grads_e), (loss_c, idx_c, grads_c) = results
    assert torch.equal(idx_c, idx_e)
    assert torch.equal(idx_e, cluster(x.detach().flatten(2).transpose(1, 2), 9, impl=impl))
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-6, atol=0)
    for a, e in zip(grads_c, grads_e):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


def test_compiled_with_dynamic_shapes():
    # one graph for several numbers of patches: the fake functions handle a symbolic N,
    # N < K included
    m = DCConv(16, 12)
    compiled = torch.compile(m, backend='aot_eager', dynamic=True, fullgraph=True)
    for n in (40, 57, 7):
        x = randn(2, n, 16, seed=n)
        assert torch.equal(compiled(x), m(x))
