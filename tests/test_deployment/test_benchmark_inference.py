"""The inference benchmark's machinery (no assertion on speed: the machine is shared)."""
import importlib.util
import os.path as osp
import statistics

import pytest
import torch

from mmdccnext.analysis.inference_benchmark import (SETTINGS, UNACCOUNTED, backbone_cfg,
                                                    build_backbone, build_whole_model, format_table,
                                                    make_image, make_input, measure_memory,
                                                    run_whole_benchmark, time_breakdown,
                                                    time_interleaved, whole_breakdown,
                                                    whole_model_cfg)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def test_time_interleaved_rounds_and_ratios():
    a, b = torch.randn(64, 64), torch.randn(256, 256)
    calls = []

    def runner(name, m):

        def run():
            calls.append(name)
            return m @ m

        return run

    result = time_interleaved({'ConvNeXt-T': runner('ref', a), 'other': runner('other', b)},
                              batch=4, repeat=3, min_seconds=0.)
    assert result['ConvNeXt-T']['ratio'] == 1.0
    ips = result['other']['ips']
    assert len(ips) == 3 and all(v > 0 for v in ips)
    expected = statistics.median(o / r for o, r in zip(ips, result['ConvNeXt-T']['ips']))
    assert result['other']['ratio'] == pytest.approx(expected)
    assert result['other']['median_ips'] == statistics.median(ips)
    assert result['ConvNeXt-T']['cpu_ratio'] == 1.0 and result['other']['cpu_ratio'] > 0
    # warm-up + 3 rounds each, the order rotating: round 2 starts with 'other'
    assert calls[:2] == ['ref', 'other'] and calls[2:4] == ['ref', 'other']
    assert calls[4:6] == ['other', 'ref']


def test_backbones_from_the_registries():
    assert backbone_cfg('ConvNeXt-T', dense=True)['type'] == 'mmpretrain.ConvNeXt'
    with pytest.raises(KeyError, match='unknown model'):
        backbone_cfg('ViT-B', dense=False)
    model = build_backbone('ResNet-50', dense=True)
    assert not model.training
    with torch.no_grad():
        outs = model(torch.zeros(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [256, 512, 1024, 2048]


def test_time_breakdown_splits_dcconv():
    model = build_backbone('DCCNeXt-B0', dense=False)
    spent = time_breakdown(model, make_input(SETTINGS['224x224 b1']))
    for kind in ('DCConv clustering', 'DCConv aggregation', 'Linear', 'LayerNorm',
                 'depthwise conv 7x7', 'depthwise conv 3x3', 'dense conv'):
        assert spent[kind] > 0, kind
    parts = sum(v for k, v in spent.items() if k != 'total')
    assert parts == pytest.approx(spent['total'], rel=0.05)
    assert spent[UNACCOUNTED] >= 0


def test_memory_of_a_fresh_process():
    mem = measure_memory('DCCNeXt-B0', 'torch', SETTINGS['224x224 b1'], threads=1)
    # model + inference includes the weights (3.9 M parameters, 15.7 MB)
    assert mem['total_bytes'] > 15e6 and 0 < mem['inference_bytes'] <= mem['total_bytes']


def test_cli_rejects_bad_values():
    spec = importlib.util.spec_from_file_location(
        'benchmark_inference_tool', osp.join(REPO, 'tools', 'analysis', 'benchmark_inference.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with pytest.raises(SystemExit):
        tool.parse_args(['--threads', '0'])
    with pytest.raises(SystemExit):
        tool.parse_args(['--models', 'ViT-B'])
    args = tool.parse_args(['--settings', '224x224 b32', '--engines', 'torch'])
    assert args.settings == ['224x224 b32'] and args.engines == ['torch']


def test_whole_model_twins_differ_only_in_the_backbone():
    ours = whole_model_cfg('Mask R-CNN', 'DCCNeXt-B2')
    twin = whole_model_cfg('Mask R-CNN', 'ConvNeXt-T')
    assert ours.model.backbone.type == 'mmdccnext.DCCNeXt' and ours.model.backbone.init_cfg is None
    assert twin.model.backbone.type == 'mmpretrain.ConvNeXt' and twin.model.backbone.arch == 'tiny'
    assert twin.model.backbone.out_indices == ours.model.backbone.out_indices == (0, 1, 2, 3)
    assert ours.model.neck.in_channels == [64, 128, 320, 512]
    assert twin.model.neck.in_channels == [96, 192, 384, 768]
    assert ours.model.roi_head == twin.model.roi_head and ours.model.test_cfg == twin.model.test_cfg
    assert twin.model.test_cfg.rcnn.score_thr == 0  # the mask head runs on 100 boxes
    retina = whole_model_cfg('RetinaNet', 'ConvNeXt-T')
    assert retina.model.neck.in_channels == [192, 384, 768]  # stages 2-4, as ours
    with pytest.raises(KeyError, match='unknown whole model'):
        whole_model_cfg('YOLO', 'DCCNeXt-B2')
    with pytest.raises(KeyError, match='unknown backbone'):
        whole_model_cfg('RetinaNet', 'ResNet-50')


def test_whole_models_through_the_libraries_inference_api():
    model = build_whole_model('Semantic FPN', 'DCCNeXt-B2')
    spent, layout = whole_breakdown('Semantic FPN', model, make_image('Semantic FPN'))
    for part in ('backbone', 'neck', 'total'):
        assert spent[part] > 0, part
    assert [shape for shape, _, _ in layout] == [(1, 64, 128, 128), (1, 128, 64, 64),
                                                 (1, 320, 32, 32), (1, 512, 16, 16)]
    rows = run_whole_benchmark(['Semantic FPN'], threads=1, repeat=1, min_seconds=0.,
                               memory=False, log=lambda table: None)
    assert [r['model'] for r in rows] == ['Semantic FPN DCCNeXt-B2', 'Semantic FPN ConvNeXt-T']
    assert rows[1]['ratio'] == 1.0 and rows[0]['ratio'] > 0 and rows[0]['setting'] == '512x512 b1'


def test_compiled_rows_show_their_ratio_to_eager():
    rows = [dict(setting='224x224 b32', engine='compile', model=m, median_ips=2., ratio=r,
                 cpu_ratio=r, vs_eager=v, load_before=1., load_after=1.)
            for m, r, v in (('DCCNeXt-B2', 1.4, 1.02), ('ConvNeXt-T', 1., 0.97))]
    table = format_table(rows).splitlines()
    assert 'compiled vs eager' in table[0] and table[1].count('|') == table[0].count('|')
    assert table[2].count('|') == table[0].count('|') and '| 1.02x |' in table[2]
