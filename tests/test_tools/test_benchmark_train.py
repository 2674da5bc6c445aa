"""The training-step benchmark's machinery (no assertion on speed: the machine is shared)."""
import importlib.util
import os.path as osp

import pytest
import torch

from mmdccnext.analysis import train_benchmark as tb

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def test_a_step_computes_the_gradients_of_the_mean_of_the_outputs():
    setting = tb.TrainSetting('32x32 b2', 2, 32, 32, True)
    torch.manual_seed(0)
    model = tb.build_train_model('DCCNeXt-B0', dense=True)
    assert model.training
    x = tb.make_batch(setting)
    run = tb.step_runner(model, x, 'eager')
    run()
    grads = [p.grad.clone() for p in model.parameters()]
    loss = tb.train_step(model, x)  # the same step, written out
    assert torch.isfinite(loss)
    for g, p in zip(grads, model.parameters()):
        assert torch.equal(g, p.grad)
    with pytest.raises(ValueError, match='mode'):
        tb.step_runner(model, x, 'jit')


def test_ratios_and_rows(monkeypatch):
    small = tb.TrainSetting('32x32 b2', 2, 32, 32, False)
    monkeypatch.setitem(tb.TRAIN_SETTINGS, small.name, small)
    tables = []
    rows = tb.run_train_benchmark(models=('DCCNeXt-B0', 'DCCNeXt-B1'), settings=('32x32 b2', ),
                                  threads=1, repeat=2, min_seconds=0., log=tables.append)
    assert [(r['model'], r['mode']) for r in rows] == [('DCCNeXt-B0', 'eager'),
                                                       ('DCCNeXt-B1', 'eager')]
    assert all(r['ratio'] is None and r['vs_eager'] == 1.0 and len(r['ips']) == 2 for r in rows)
    assert len(tables) == 1 and 'DCCNeXt-B1' in tables[0]
    timing = {'a': {'ips': [2., 4., 9.]}, 'b': {'ips': [1., 1., 3.]}}
    assert tb.pair_ratio(timing, 'a', 'b') == 3.
    with pytest.raises(ValueError, match='models: unknown'):
        tb.run_train_benchmark(models=('ViT-B', ))


def test_breakdown_by_kind():
    torch.manual_seed(0)
    model = tb.build_train_model('DCCNeXt-B0', dense=False)
    spent = tb.train_breakdown(model, torch.randn(2, 3, 64, 64))
    for kind in ('Linear', 'LayerNorm', 'GELU', 'depthwise conv 7x7', 'depthwise conv 3x3',
                 'dense conv', 'DCConv clustering', 'DCConv aggregation'):
        assert spent[kind] > 0, kind
    assert spent['total'] > 0


def test_cli_rejects_bad_values():
    spec = importlib.util.spec_from_file_location(
        'benchmark_train_tool', osp.join(REPO, 'tools', 'analysis', 'benchmark_train.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with pytest.raises(SystemExit):
        tool.parse_args(['--repeat', '0'])
    with pytest.raises(SystemExit):
        tool.parse_args(['--modes', 'jit'])
    args = tool.parse_args(['--modes', 'eager', 'compiled', '--models', 'DCCNeXt-B2'])
    assert args.modes == ['eager', 'compiled'] and args.models == ['DCCNeXt-B2']
