import os.path as osp
import subprocess
import sys

import pytest
import torch

from mmdccnext.analysis import build_model_from_cfg, dcconv_flops, get_complexity
from mmdccnext.models import DCCNeXt
from mmdccnext.ops import DCConv

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CFG = osp.join(ROOT, 'configs', 'classification', 'dccnext-{}_8xb128_in1k.py')
# Table 1: classifier parameters (M) and FLOPs (G) at 224x224
TABLE1 = dict(b0=(5.5, 0.8), b1=(11.4, 1.6), b2=(26.7, 4.0), b3=(56.8, 13.0), b4=(86.7, 15.7))


def test_dcconv_flops_formula():
    c = dcconv_flops(2, 196, 240, 12, 8)
    assert c['dcconv_cluster'] == 2 * 196 * 196 * 30
    assert c['dcconv_aggregate'] == 2 * 196 * 12 * 240
    assert dcconv_flops(1, 196, 240, 12, 8, 'paper')['dcconv_cluster'] == 2 * 196 * 196 * 30
    assert dcconv_flops(1, 4, 20, 18, 8)['dcconv_cluster'] == 16 * 3  # ceil(20 / 8)
    assert dcconv_flops(1, 4, 20, 18, 8)['dcconv_aggregate'] == 4 * 4 * 20  # N < K
    with pytest.raises(ValueError):
        dcconv_flops(1, 4, 20, 18, 8, 'other')


def test_counted_dcconv_matches_formula_and_model_is_restored():
    model = DCCNeXt('b1')
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        before = model(x)[0]
    res = get_complexity(model, (3, 224, 224))
    expected = sum((dcconv_flops(1, 14 * 14, 240, 12, 8) for _ in range(6)),
                   start=dcconv_flops(1, 7 * 7, 384, 18, 8) + dcconv_flops(1, 49, 384, 18, 8))
    assert res['dcconv_cluster'] == expected['dcconv_cluster']
    assert res['dcconv_aggregate'] == expected['dcconv_aggregate']
    assert res['params'] == sum(p.numel() for p in model.parameters())
    assert not res['unsupported_ops'].get('prim::PythonOp._DCConvFlopProxy')
    # the real DCConv is back after counting
    assert all('forward' not in vars(m) for m in model.modules() if isinstance(m, DCConv))
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], before)
    # paper convention doubles the clustering term only
    paper = get_complexity(model, (3, 224, 224), 'paper')
    assert paper['dcconv_cluster'] == 2 * res['dcconv_cluster']
    assert paper['flops'] - res['flops'] == res['dcconv_cluster']


@pytest.mark.parametrize('arch', sorted(TABLE1))
def test_table1(arch):
    params_m, flops_g = TABLE1[arch]
    model = build_model_from_cfg(CFG.format(arch))
    res = get_complexity(model, (3, 224, 224), 'paper')
    assert res['params'] / 1e6 == pytest.approx(params_m, rel=0.02)
    flops = res['flops'] / 1e9
    # within 5 %, or equal to the paper's figure after rounding to one decimal (B0: 0.75)
    assert flops == pytest.approx(flops_g, rel=0.05) or int(flops * 10 + 0.5) / 10 == flops_g


def test_table6_b1_backbone():
    """Table 6, B1: 1.58 G at 224^2; 39.2 G (d = 8) and 79.5 G (d = 1) at 1280x800."""
    model = build_model_from_cfg(CFG.format('b1'))
    assert get_complexity(model, (3, 224, 224), 'paper')['flops'] / 1e9 == pytest.approx(
        1.58, rel=0.05)
    backbone = build_model_from_cfg(CFG.format('b1'), backbone_only=True)
    assert isinstance(backbone, DCCNeXt)
    d8 = get_complexity(backbone, (3, 800, 1280), 'paper')['flops'] / 1e9
    assert d8 == pytest.approx(39.2, rel=0.05)
    for m in backbone.modules():
        if isinstance(m, DCConv):
            m.subvector_stride = 1
    d1 = get_complexity(backbone, (3, 800, 1280), 'paper')['flops'] / 1e9
    assert d1 == pytest.approx(79.5, rel=0.05)


def test_get_flops_cli():
    out = subprocess.run([
        sys.executable,
        osp.join(ROOT, 'tools', 'analysis', 'get_flops.py'),
        CFG.format('b0'), '--shape', '64', '--backbone-only', '--cfg-options',
        'model.backbone.subvector_stride=4'
    ],
                         capture_output=True,
                         text=True,
                         cwd=ROOT,
                         check=True).stdout
    assert 'dccnext-b0_8xb128_in1k' in out and "convention 'ours'" in out
    assert '3x64x64, backbone' in out


def test_get_flops_cli_in_channels():
    """--in-channels builds the stem for them (it crashed on the 3-channel stem before)."""
    def row(*extra):
        out = subprocess.run([
            sys.executable, osp.join(ROOT, 'tools', 'analysis', 'get_flops.py'), CFG.format('b0'),
            '--shape', '64', '--backbone-only', *extra], capture_output=True, text=True,
            cwd=ROOT, check=True).stdout
        return out, [line for line in out.splitlines() if 'dccnext-b0_8xb128_in1k |' in line][0]

    out, four = row('--in-channels', '4')
    assert '4x64x64, backbone' in out
    _, three = row()
    assert four != three  # the stem's parameters and FLOPs grew
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'analysis', 'get_flops.py'),
                           CFG.format('b0'), '--in-channels', '0'], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        'ValueError: --in-channels: expected an int >= 1, got 0')


@pytest.mark.parametrize('config,params_m', [
    ('detection/retinanet_dccnext-b2_fpn_1x_coco.py', 33.8),
    ('detection/mask-rcnn_dccnext-b2_fpn_1x_coco.py', 43.7),
    ('segmentation/fpn_dccnext-b2_4xb8-40k_ade20k-512x512.py', 27.8),
])
def test_downstream_params_tables_3_4(config, params_m):
    """The B2 backbone in the standard heads matches the paper's Tables 3 and 4."""
    model = build_model_from_cfg(osp.join(ROOT, 'configs', config))
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, rel=0.02)


def test_two_stage_detector_is_counted():
    model = build_model_from_cfg(
        osp.join(ROOT, 'configs', 'detection', 'mask-rcnn_dccnext-b0_fpn_1x_coco.py'))
    res = get_complexity(model, (3, 128, 128))
    backbone = get_complexity(model.backbone, (3, 128, 128))
    assert res['flops'] > backbone['flops'] > 0
    assert res['dcconv_cluster'] == backbone['dcconv_cluster'] > 0
