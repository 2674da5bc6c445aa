"""The Conv-FFN as one autograd node under eager autograd on the CPU
(mmdccnext/models/backbones/training.py): the plain modules' results and gradients up to float
rounding, near the float64 gradients, taken only where it applies, buffers per pass."""
import pytest
import torch
from torch import nn

from mmdccnext.models.backbones import DCCNeXt, training
from mmdccnext.models.backbones.dccnext import ConvFFN


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _ffn(approximate='none', channels=12, ratio=2.5):
    torch.manual_seed(0)
    ffn = ConvFFN(channels, ffn_ratio=ratio)
    ffn.act = nn.GELU(approximate)
    for p in ffn.parameters():  # larger than the init's: every term of the gradient counts
        nn.init.normal_(p, std=0.3)
    return ffn


def _grads(fn, x, params, seed=2):
    x = x.clone().requires_grad_()
    out = fn(x)
    grads = torch.autograd.grad(out, [x] + list(params),
                                randn(*out.shape, seed=seed).to(out.dtype))
    return [out.detach()] + list(grads)


def _plain(monkeypatch):
    monkeypatch.setattr(training, 'node_applies', lambda ffn, x: False)


def _close(a, b):
    """Float32 rounding of the same sums, some in another order (the gradient of fc1's input
    is oneDNN's in the node, ATen's in plain autograd): within 1e-5 of the tensor's scale,
    element by element (an element that cancels keeps the absolute error of its terms)."""
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * b.abs().max().item() + 1e-6)


@pytest.mark.parametrize('approximate', ['none', 'tanh'])
def test_the_node_is_the_plain_ffn_up_to_rounding_and_near_float64(approximate, monkeypatch):
    ffn = _ffn(approximate)
    x = randn(2, 7, 5, 12, seed=1)
    params = list(ffn.parameters())
    out = ffn(x.clone().requires_grad_())
    assert type(out.grad_fn).__name__ == 'ConvFFNFunctionBackward'
    node = _grads(ffn, x, params)
    with monkeypatch.context() as m:
        _plain(m)
        plain = _grads(ffn, x, params)
        assert type(ffn(x.clone().requires_grad_()).grad_fn).__name__ != \
            'ConvFFNFunctionBackward'
        ffn64 = _ffn(approximate).double()  # the plain modules in float64: the reference
        ref = _grads(ffn64, x.double(), list(ffn64.parameters()))
    for a, p, r in zip(node, plain, ref):
        assert a.shape == p.shape and a.dtype == torch.float32
        _close(a, p)
        scale = r.abs().max().item()
        # float32 error of the node no larger than a float32 rounding budget of the reference
        assert (a.double() - r).abs().max().item() <= 1e-5 * scale + 1e-6


def test_the_backbone_trains_as_with_the_plain_modules(monkeypatch):
    """A training step of B0 (with and without gradient checkpointing): same outputs and the
    same gradient for every parameter, up to float rounding."""
    for kwargs in (dict(), dict(with_cp=True),
                   dict(gap_before_final_norm=False, out_indices=(0, 1, 2, 3))):
        torch.manual_seed(0)
        model = DCCNeXt('b0', **kwargs)
        for p in model.parameters():
            nn.init.normal_(p, std=0.1)
        model.train()
        x = randn(2, 3, 64, 96, seed=3)

        def step():
            model.zero_grad(set_to_none=True)
            outs = model(x)
            sum((o * randn(*o.shape, seed=4)).sum() for o in outs).backward()
            return [o.detach() for o in outs], [p.grad.clone() for p in model.parameters()]

        outs, grads = step()
        with monkeypatch.context() as m:
            _plain(m)
            plain_outs, plain_grads = step()
        for a, b in zip(outs + grads, plain_outs + plain_grads):
            _close(a, b)


def test_buffers_belong_to_one_pass():
    """Two passes recorded before either backward, run backward in either order and twice,
    give the gradients of each pass alone: nothing a node reads in its backward pass lives
    in a buffer that a later forward pass overwrites."""
    torch.manual_seed(0)
    model = DCCNeXt('b0')
    model.train()
    x1, x2 = randn(1, 3, 64, 64, seed=5), randn(1, 3, 96, 64, seed=6)

    def grads(loss):
        return torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)

    alone1 = grads(model(x1)[0].sum())
    alone2 = grads(model(x2)[0].pow(2).sum())
    loss1, loss2 = model(x1)[0].sum(), model(x2)[0].pow(2).sum()
    for loss, alone in ((loss2, alone2), (loss1, alone1), (loss2, alone2)):
        for a, b in zip(grads(loss), alone):
            assert torch.equal(a, b)


def test_where_the_node_does_not_apply():
    ffn = _ffn()
    x = randn(2, 4, 4, 12, seed=7)
    name = 'ConvFFNFunctionBackward'
    assert type(ffn(x.requires_grad_()).grad_fn).__name__ == name
    assert type(ffn.double()(x.double()).grad_fn).__name__ != name  # float64: plain modules
    ffn.float()
    with torch.no_grad():  # no autograd: nothing to record
        assert ffn(x).grad_fn is None
    for p in ffn.parameters():  # nothing of it needs a gradient
        p.requires_grad_(False)
    assert ffn(x.detach()).grad_fn is None
    for p in ffn.parameters():
        p.requires_grad_(True)
    seen = []
    handle = ffn.fc1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:  # a hook sees the module's call
        assert type(ffn(x).grad_fn).__name__ != name and seen == [(2, 4, 4, 30)]
    finally:
        handle.remove()
