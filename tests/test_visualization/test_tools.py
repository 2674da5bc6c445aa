"""tools/analysis/visualize_clusters.py and visualize_kernels.py, in process, with and
without a checkpoint; the kernel-tap profiles they report."""
import importlib.util
import os.path as osp
from collections import OrderedDict

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from vis_helpers import REPO, check_panels, read_png

from mmdccnext.models import DCCNeXt
from mmdccnext.visualization import (build_test_transforms, dcconv_blocks, find_backbone,
                                     kernel_profiles, model_for_pictures, plot_kernel_profiles,
                                     profile_matrix, visualize_clusters)

CLS_CONFIG = osp.join(REPO, 'configs/classification/dccnext-b0_synthetic.py')
DET_CONFIG = osp.join(REPO, 'configs/detection/retinanet_dccnext-b0_fpn_synthetic.py')


def _tool(name):
    path = osp.join(REPO, 'tools', 'analysis', f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'{name}_tool', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def decaying_checkpoint(tmp_path_factory, cls_cfg):
    """A classifier checkpoint whose DCConv taps decay: |W[k, c]| = (K - k) * (1 + i / 10)
    for the i-th DCConv block, with random signs."""
    model = model_for_pictures(cls_cfg, seed=1)
    _, backbone = find_backbone(model)
    generator = torch.Generator().manual_seed(0)
    for i, block in enumerate(dcconv_blocks(backbone).values()):
        weight = block.mixer.weight
        K, C = weight.shape
        magnitude = (K - torch.arange(K, dtype=weight.dtype))[:, None] * (1 + i / 10)
        signs = torch.randint(0, 2, (K, C), generator=generator).to(weight.dtype) * 2 - 1
        with torch.no_grad():
            weight.copy_(magnitude * signs)
    path = tmp_path_factory.mktemp('ckpt') / 'decaying.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return str(path), model


def test_kernel_profiles_and_plot(decaying_checkpoint, tmp_path):
    _, model = decaying_checkpoint
    _, backbone = find_backbone(model)
    profiles = kernel_profiles(backbone)
    assert list(profiles) == [f'stages.2.{j}' for j in range(5)] + ['stages.3.0', 'stages.3.1']
    for i, (name, profile) in enumerate(profiles.items()):
        K = len(profile)
        assert K == (12 if name.startswith('stages.2') else 18)
        np.testing.assert_allclose(profile, (K - np.arange(K)) * (1 + i / 10), rtol=1e-6)
    matrix = profile_matrix(profiles)
    assert matrix.shape == (7, 18)
    assert np.isnan(matrix[:5, 12:]).all() and not np.isnan(matrix[5:]).any()

    out = tmp_path / 'kernels.png'
    assert plot_kernel_profiles(backbone, str(out)).keys() == profiles.keys()
    picture = read_png(out)
    assert picture.shape[0] > 300 and picture.shape[1] > 600
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 100  # a drawn plot, not blank
    with pytest.raises(ValueError, match=r"blocks: 'stages.1.0' is a depthwise"):
        plot_kernel_profiles(backbone, str(tmp_path / 'x.png'), blocks=['stages.1.0'])
    with pytest.raises(ValueError, match='out: expected a .png path'):
        plot_kernel_profiles(backbone, str(tmp_path / 'x.svg'))


def test_visualize_kernels_cli_loads_the_checkpoint(decaying_checkpoint, tmp_path, capsys):
    checkpoint, model = decaying_checkpoint
    out = tmp_path / 'kernels.png'
    profiles = _tool('visualize_kernels').main([CLS_CONFIG, checkpoint, '--out', str(out)])
    expected = kernel_profiles(find_backbone(model)[1])
    for name in expected:
        np.testing.assert_allclose(profiles[name], expected[name], rtol=1e-6)
    printed = capsys.readouterr().out
    # stages.3.1 is the 7th DCConv block: |W[k]| = (18 - k) * 1.6; tap 0 is 18 / mean(1..17)
    assert f'stages.3.1: {18 * 1.6:.4f} {17 * 1.6:.4f} ' in printed
    assert f'(tap 0 / mean of the others: {18 / 9:.2f})' in printed
    assert f'wrote {out}' in printed
    assert read_png(out).ndim == 3


def test_backbone_checkpoint_into_a_detector_and_bad_checkpoints(decaying_checkpoint, cls_cfg,
                                                                 tmp_path):
    checkpoint, model = decaying_checkpoint
    expected = kernel_profiles(find_backbone(model)[1])
    # a classifier checkpoint (backbone.* keys) in a detection config
    detector = model_for_pictures(DET_CONFIG, checkpoint)
    loaded = kernel_profiles(find_backbone(detector)[1])
    for name in expected:
        np.testing.assert_allclose(loaded[name], expected[name], rtol=1e-6)
    # a backbone-only state dict
    bare = tmp_path / 'backbone.pth'
    torch.save(find_backbone(model)[1].state_dict(), bare)
    classifier = model_for_pictures(cls_cfg, str(bare))
    np.testing.assert_allclose(kernel_profiles(find_backbone(classifier)[1])['stages.3.0'],
                               expected['stages.3.0'], rtol=1e-6)
    # weights of something else
    other = tmp_path / 'other.pth'
    torch.save({'state_dict': OrderedDict(fc=torch.zeros(2))}, other)
    with pytest.raises(ValueError, match='has no weights of the DCCNeXt backbone'):
        model_for_pictures(cls_cfg, str(other))
    with pytest.raises(FileNotFoundError, match='config: no such file'):
        model_for_pictures(str(tmp_path / 'missing.py'))


def test_visualize_clusters_cli(decaying_checkpoint, image, tmp_path, capsys):
    checkpoint, trained = decaying_checkpoint
    image_file = tmp_path / 'cat.png'
    cv2.imwrite(str(image_file), image[..., ::-1])
    tool = _tool('visualize_clusters')
    out = tmp_path / 'clusters.png'
    # CONFIG IMAGE: random initialisation
    result = tool.main([CLS_CONFIG, str(image_file), '--blocks', 'stages.2.0', 'stages.3.1',
                        '--centers', '150,100', '60,200', '--out', str(out)])
    printed = capsys.readouterr().out
    assert 'stages.2.0: 8x10 patches, stride 16; centre (150, 100) -> patch (3, 5), 11 members' \
        in printed
    assert f'wrote {out} (' in printed
    canvas = read_png(out)
    assert (canvas == result.canvas).all()
    assert check_panels(result, canvas, DCCNeXt('b0')) > 0

    # CONFIG CHECKPOINT IMAGE: the checkpoint's weights make the clusters
    out2 = tmp_path / 'clusters_ckpt.png'
    with_ckpt = tool.main([CLS_CONFIG, checkpoint, str(image_file), '--blocks', 'stages.3.1',
                           '--num-centers', '2', '--out', str(out2)])
    assert 'centres picked automatically on stages.3.1' in capsys.readouterr().out
    transforms = build_test_transforms(Config.fromfile(CLS_CONFIG))
    again = visualize_clusters(trained, str(image_file), transforms, ['stages.3.1'],
                               with_ckpt.centers)
    assert (again.canvas == read_png(out2)).all()
    for name, clusters in again.clusters.items():
        assert np.array_equal(clusters.indices, with_ckpt.clusters[name].indices)

    with pytest.raises(SystemExit):
        tool.main([CLS_CONFIG, str(image_file), '--centers', '1.5,2', '--out', str(out)])
    assert 'expected X,Y integer pixel coordinates' in capsys.readouterr().err
    # the user's mistake: one message, no traceback (mmdccnext.apis.cli)
    with pytest.raises(SystemExit, match='^error: image: no such file'):
        tool.main([CLS_CONFIG, str(tmp_path / 'none.jpg'), '--out', str(out)])
