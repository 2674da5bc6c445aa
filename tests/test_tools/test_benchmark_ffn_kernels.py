"""The Conv-FFN kernels' benchmark machinery (no assertion on speed: the machine is shared):
both sides of every comparison compute the same thing, and the table has a row per shape and
operation."""
import importlib.util
import os.path as osp

import pytest
import torch

from mmdccnext.ops import cpu_impl

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
pytestmark = pytest.mark.skipif(
    not cpu_impl.ext_available(), reason='the C++ extension mmdccnext._ext is not built')


def _tool():
    spec = importlib.util.spec_from_file_location(
        'benchmark_ffn_kernels_tool',
        osp.join(REPO, 'tools', 'analysis', 'benchmark_ffn_kernels.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_both_sides_compute_the_same_convolution():
    tool = _tool()
    for name, (ours, theirs) in tool.comparisons((2, 5, 6, 32)).items():
        a, b = ours(), theirs()
        if name == 'backward':  # (grad_x, grad_w, grad_b) each; oneDNN's grad_x is NCHW
            torch.testing.assert_close(a[0], b[0].permute(0, 2, 3, 1))
            for x, y in zip(a[1:], b[1:]):
                torch.testing.assert_close(x, y)
        elif name == 'forward into a buffer':  # oneDNN wrote into the same buffer
            expected = a.clone()
            theirs()
            torch.testing.assert_close(a, expected)
        else:
            torch.testing.assert_close(a, b.permute(0, 2, 3, 1))


def test_both_sides_compute_the_same_mixer_gradients():
    (ours, theirs), = _tool().mixer_comparisons((2, 9, 5, 24)).values()
    a, b = ours(), theirs()
    assert torch.equal(a[0], b[0].permute(0, 2, 3, 1))  # both oneDNN's input gradient
    for x, y in zip(a[1:], b[1:]):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize('fc1_limit', ['default', 0])
def test_both_sides_compute_the_same_products(fc1_limit, monkeypatch):
    tool = _tool()
    if fc1_limit != 'default':  # fc1's output over the limit: ATen's product into a buffer
        monkeypatch.setattr(tool.linear, 'FRESH_PAGES_BYTES', fc1_limit)
    for ours, before in tool.linear_comparisons((40, 24, 8)).values():
        torch.testing.assert_close(ours(), before().clone())


def test_table(monkeypatch, capsys):
    tool = _tool()
    monkeypatch.setattr(tool, 'SHAPES', {'tiny': [(1, 4, 5, 16), (2, 3, 3, 8)]})
    monkeypatch.setattr(tool, 'MIXER_SHAPES', {'tiny': [(1, 8, 9, 8)]})
    monkeypatch.setattr(tool, 'LINEAR_SHAPES', {'tiny': [(30, 24, 8)]})
    tool.main(['--threads', '1', '--repeat', '2'])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith('| tiny')]
    assert len(rows) == 2 * 3 + 1 + 3
    assert all(line.rstrip().endswith('× |') for line in rows)
    with pytest.raises(SystemExit):
        tool.main(['--repeat', '0'])
