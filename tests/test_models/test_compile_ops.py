"""What DCCNeXt runs under torch.compile on the CPU (mmdccnext/models/backbones/compile_ops.py):
the Conv-FFN and the depthwise mixer as ops that compute eager's results to the bit, taken only
while compiling, and a compiled backbone equal to eager."""
import threading

import pytest
import torch
from torch import nn

from mmdccnext.models.backbones import DCCNeXt, compile_ops
from mmdccnext.models.backbones.dccnext import ConvFFN, _conv_cl
from mmdccnext.ops.depthwise import DepthwiseConv2d


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _grads(fn, x, params, seed):
    x = x.clone().requires_grad_()
    out = fn(x)
    grads = torch.autograd.grad(out, [x] + list(params), randn(*out.shape, seed=seed))
    return [out.detach()] + list(grads)


@pytest.mark.parametrize('approximate', ['none', 'tanh'])
def test_the_conv_ffn_op_is_the_module_to_the_bit(approximate):
    torch.manual_seed(0)
    ffn = ConvFFN(12, ffn_ratio=2.5)
    ffn.act = nn.GELU(approximate)
    x = randn(2, 7, 5, 12, seed=1)
    params = list(ffn.parameters())
    eager = _grads(ffn, x, params, seed=2)
    op = _grads(lambda t: compile_ops.conv_ffn(ffn, t), x, params, seed=2)
    for a, e in zip(op, eager):
        assert torch.equal(a, e)


@pytest.mark.parametrize('conv,size', [
    (DepthwiseConv2d(10, 7), (2, 9, 6, 10)),  # the mixer: the extension's weight gradient
    (nn.Conv2d(10, 16, 3, stride=2, padding=1), (2, 9, 6, 10)),  # downsampling
    (nn.Conv2d(3, 16, 7, stride=4, padding=2), (1, 23, 17, 3)),  # the stem
    (nn.Conv2d(4, 6, 3, padding=1, bias=False), (2, 5, 5, 4)),
])
def test_the_conv_op_is_the_convolution_to_the_bit(conv, size):
    x = randn(*size, seed=3)
    params = list(conv.parameters())
    with torch.no_grad():
        eager_out = _conv_cl(conv, x)
    assert eager_out.is_contiguous()  # channels-last out, as the op declares
    eager = _grads(lambda t: _conv_cl(conv, t), x, params, seed=4)
    op = _grads(lambda t: compile_ops.conv(conv, t), x, params, seed=4)
    for a, e in zip(op, eager):
        assert torch.equal(a, e)


def test_torch_library_registration():
    torch.manual_seed(0)
    ffn = ConvFFN(6, ffn_ratio=2.)
    x = randn(2, 4, 5, 6, seed=5).requires_grad_()
    args = (x, ffn.fc1.weight, ffn.fc1.bias, ffn.dwconv.weight, ffn.dwconv.bias, ffn.fc2.weight,
            ffn.fc2.bias, 'none')
    torch.library.opcheck(compile_ops.conv_ffn_op, args)
    conv = nn.Conv2d(6, 4, 3, stride=2, padding=1)
    torch.library.opcheck(compile_ops.conv_op, (x, conv.weight, conv.bias, [2, 2], [1, 1], 1))


def test_only_while_compiling_cpu_modules_without_hooks(monkeypatch):
    ffn = ConvFFN(8, ffn_ratio=2.)
    x = randn(1, 4, 4, 8)
    mixer = nn.Conv2d(8, 8, 7, padding=3, groups=8)
    assert not compile_ops.conv_ffn_applies(ffn, x)  # eager runs the modules
    assert not compile_ops.conv_applies(mixer, x)
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    assert compile_ops.conv_ffn_applies(ffn, x) and compile_ops.conv_applies(mixer, x)
    assert not compile_ops.conv_applies(nn.Conv2d(8, 8, 3, dilation=2), x)
    assert not compile_ops.conv_applies(nn.Conv2d(8, 8, 3, padding='same'), x)
    ffn.dwconv.stride = (2, 2)
    assert not compile_ops.conv_ffn_applies(ffn, x)  # not the 'same' depthwise convolution
    ffn.dwconv.stride = (1, 1)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert not compile_ops.conv_ffn_applies(ffn, x)
    handle = ffn.act.register_forward_hook(lambda module, args, out: None)
    assert not compile_ops.conv_ffn_applies(ffn, x)  # a hook sees the module's own call
    handle.remove()


def _step(model, x):
    model.zero_grad(set_to_none=True)
    outs = model(x)
    sum(o.pow(2).mean() for o in outs).backward()
    return [o.detach() for o in outs] + [p.grad.clone() for p in model.parameters()]


def test_a_compiled_backbone_holds_the_ops_and_equals_eager():
    torch.manual_seed(0)
    model = DCCNeXt(arch=dict(channels=[8, 16, 24, 32], depths=[1, 1, 1, 1]),
                    out_indices=(2, 3), drop_path_rate=0.)
    x = randn(2, 3, 64, 64, seed=6)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    ops = {str(node.target) for graph in explained.graphs for node in graph.graph.nodes}
    assert {'mmdccnext.conv_ffn.default', 'mmdccnext.conv_cl.default'} <= ops, ops
    # no convolution left for inductor's layout optimisation to convert (see compile_ops)
    assert not [op for op in ops if 'conv2d' in op or 'convolution' in op], ops
    eager = _step(model, x)
    # aot_eager: dynamo + AOTAutograd with eager kernels: bit for bit
    compiled = _step(torch.compile(model, backend='aot_eager', fullgraph=True), x)
    for a, e in zip(compiled, eager):
        assert torch.equal(a, e)


@pytest.mark.parametrize('out_channels_last', [False, True])
def test_without_autograd_a_compiled_backbone_runs_the_fast_path_as_one_op(out_channels_last):
    torch.manual_seed(0)
    model = DCCNeXt('b0', out_indices=(1, 2, 3), gap_before_final_norm=False,
                    out_channels_last=out_channels_last).eval()
    x = randn(2, 3, 72, 56, seed=7)
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0, explained.break_reasons
        ops = {str(node.target) for graph in explained.graphs for node in graph.graph.nodes}
        assert 'mmdccnext.dccnext_fast_path.default' in ops, ops
        eager = model(x)
        for backend in ('aot_eager', 'inductor'):
            torch._dynamo.reset()
            compiled = torch.compile(model, backend=backend, fullgraph=True)(x)
            assert [c.shape for c in compiled] == [e.shape for e in eager]
            assert [c.stride() for c in compiled] == [e.stride() for e in eager], backend
            for c, e in zip(compiled, eager):
                assert torch.equal(c, e), backend


def test_exports_record_the_standard_operators():
    # torch.export traces with torch.compiler.is_compiling() true: no op of ours may appear
    torch.manual_seed(0)
    model = DCCNeXt(arch=dict(channels=[8, 16, 24, 32], depths=[1, 1, 1, 1]),
                    out_indices=(2, 3), drop_path_rate=0.).eval()
    with torch.no_grad():
        program = torch.export.export(model, (randn(1, 3, 64, 64, seed=8), ))
    targets = {str(node.target) for node in program.graph.nodes}
    assert not [t for t in targets if t.startswith('mmdccnext.')], targets
    assert 'aten.convolution.default' in targets or 'aten.conv2d.default' in targets, targets


def test_the_conv_ffn_ops_reuse_their_threads_buffers():
    # the ops' internal temporaries come from the calling thread's buffers: the same buffers
    # call after call (grown for a larger map, views for a smaller one), another thread's own
    torch.manual_seed(0)
    ffn = ConvFFN(8, ffn_ratio=2.)
    params = list(ffn.parameters())
    for size in [(2, 6, 5, 8), (1, 3, 4, 8), (2, 6, 5, 8)]:
        x = randn(*size, seed=sum(size))
        op = _grads(lambda t: compile_ops.conv_ffn(ffn, t), x, params, seed=7)
        for a, e in zip(op, _grads(ffn, x, params, seed=7)):
            assert torch.equal(a, e)
    mine = compile_ops._buffers()
    assert compile_ops._buffers() is mine
    others = []
    thread = threading.Thread(target=lambda: others.append(compile_ops._buffers()))
    thread.start()
    thread.join()
    assert others[0] is not mine
