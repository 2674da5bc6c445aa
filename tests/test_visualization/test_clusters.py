"""Cluster pictures of a real photograph (301x237: not square, not a multiple of 32) with
classification, detection and segmentation configs, checked against the recorded clusters
by reading the PNG back."""
import os.path as osp

import numpy as np
import pytest
import torch
from vis_helpers import REPO, check_panels, nearest_patch, read_png

from mmdccnext.ops import cluster
from mmdccnext.visualization import (build_test_transforms, find_backbone, model_for_pictures,
                                     save_png, visualize_clusters)

CONFIGS = dict(
    det='configs/detection/retinanet_dccnext-b0_fpn_synthetic.py',
    seg='configs/segmentation/fpn_dccnext-b0_synthetic.py')


def test_classification_picture_matches_recorded_clusters(cls_model, image, tmp_path):
    model, transforms = cls_model
    _, backbone = find_backbone(model)
    blocks = ['stages.2.0', 'stages.2.4', 'stages.3.0']
    centers = [(150, 100), (0, 236), (300, 0)]  # (x, y), two of them in corners
    result = visualize_clusters(model, image, transforms, blocks, centers)
    out = tmp_path / 'clusters.png'
    save_png(result.canvas, str(out))
    canvas = read_png(out)
    assert canvas.shape == result.canvas.shape
    assert (canvas == result.canvas).all()

    # the test pipeline's resize (short edge 128; its CenterCrop is left out) was applied
    model_input = result.model_input
    assert model_input.dropped == ('LoadImageFromFile', 'CenterCrop')
    assert model_input.content_shape[0] == 128
    assert model_input.content_shape[1] == pytest.approx(301 * 128 / 237, abs=1)
    assert tuple(model_input.inputs.shape[2:]) == model_input.content_shape  # no padding
    assert len(result.panels) == 3 and all(len(row) == 3 for row in result.panels)
    assert list(result.clusters) == blocks
    assert [result.clusters[b].paper_number for b in blocks] == [7, 11, 12]  # B0: 3+3+5+2

    # the recorded indices are the block's own clusters: the op on the tokens it received
    tokens = {}
    hooks = [backbone.stages[2][0].mixer.register_forward_hook(
        lambda m, args, out: tokens.setdefault('stages.2.0', args[0].detach().clone()))]
    with torch.no_grad():
        backbone(model_input.inputs)
    hooks[0].remove()
    mixer = backbone.stages[2][0].mixer
    expected = cluster(tokens['stages.2.0'], mixer.kernel_size, mixer.subvector_stride)[0]
    assert np.array_equal(result.clusters['stages.2.0'].indices, expected.numpy())

    # every patch of every panel, read back from the PNG
    grid = result.clusters['stages.3.0'].grid
    patches = sum(result.clusters[b].grid.num_patches for b in blocks) * len(centers)
    checked = check_panels(result, canvas, backbone)
    assert checked >= 2 * patches
    assert grid.shape == (4, 5)


@pytest.mark.parametrize('task', ['det', 'seg'])
def test_detection_and_segmentation_configs(task, image):
    options = None
    if task == 'det':  # content 228x180 padded to 256x192: some patches lie in the padding
        options = {'test_dataloader.dataset.pipeline.1.scale': (228, 180)}
    model = model_for_pictures(osp.join(REPO, CONFIGS[task]), cfg_options=options)
    cfg = model.cfg
    _, backbone = find_backbone(model)
    result = visualize_clusters(model, image, build_test_transforms(cfg),
                                ['stages.2.0', 'stages.3.1'], [(100, 50)])
    model_input = result.model_input
    in_h, in_w = model_input.inputs.shape[2:]
    content_h, content_w = model_input.content_shape
    if task == 'det':
        assert (content_h, content_w) == (180, 228)
        assert (in_h, in_w) == (192, 256)  # DetDataPreprocessor pads to a multiple of 32
    else:  # Resize(scale=(1024, 256), keep_ratio): the short side to 256
        assert content_h == 256 and (in_h, in_w) == (content_h, content_w)
    for panel in result.panels[0]:
        grid = result.clusters[panel.block].grid
        stage = int(panel.block.split('.')[1])
        stride = 4 * 2**stage
        # patches whose box starts past the image lie wholly in the padding
        cols = np.arange(grid.shape[1])
        rows = np.arange(grid.shape[0])
        hidden_cols = set(cols[1.5 + stride * (cols - 0.5) >= content_w].tolist())
        hidden_rows = set(rows[1.5 + stride * (rows - 0.5) >= content_h].tolist())
        hidden = [m for m in panel.member_patches
                  if m // grid.shape[1] in hidden_rows or m % grid.shape[1] in hidden_cols]
        assert panel.hidden_members == len(hidden)
        assert len(panel.member_boxes) == len(panel.member_patches) - len(hidden)
        if task == 'det' and stage == 2:
            assert hidden_cols  # the case is exercised
    assert check_panels(result, result.canvas, backbone) > 0


def test_automatic_centres(cls_model, image):
    model, transforms = cls_model
    _, backbone = find_backbone(model)
    result = visualize_clusters(model, image, transforms, ['stages.2.1', 'stages.3.1'],
                                num_centers=3)
    assert len(result.centers) == 3 and len(result.panels) == 3
    deepest = result.clusters['stages.3.1']
    counts = np.bincount(deepest.indices[:, 1:].ravel(), minlength=deepest.grid.num_patches)
    scale = (result.model_input.content_shape[1] / 301, result.model_input.content_shape[0] / 237)
    picked = [nearest_patch(x, y, scale, deepest.grid.shape, deepest.grid.stride,
                            deepest.grid.offset) for x, y in result.centers]
    # the first centre is the patch that belongs to the most clusters
    assert counts[picked[0]] == counts.max()
    assert len(set(picked)) == 3
    assert check_panels(result, result.canvas, backbone) > 0


def test_panel_size_scales_the_picture(cls_model, image):
    model, transforms = cls_model
    result = visualize_clusters(model, image, transforms, ['stages.2.0'], [(150, 100)],
                                panel_size=602)
    assert result.display_scale == (2.0, 2.0)
    panel = result.panels[0][0]
    x1, y1, x2, y2 = panel.center_box
    ox, oy = panel.origin
    # the centre pixel, scaled, lies in the red box
    assert x1 <= 150.5 * 2 < x2 and y1 <= 100.5 * 2 < y2
    cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
    assert result.canvas[oy + cy, ox + cx, 0] > result.canvas[oy + cy, ox + cx, 2] + 60


def test_bad_arguments_are_named(cls_model, image):
    model, transforms = cls_model
    with pytest.raises(ValueError, match=r"blocks: 'stages.2.9' is not a block.*stages\.2\.0"):
        visualize_clusters(model, image, transforms, ['stages.2.9'], [(1, 1)])
    with pytest.raises(ValueError, match=r"'stages.0.1' is a depthwise-convolution block.*"
                       r"valid DCConv blocks: stages\.2\.0, stages\.2\.1"):
        visualize_clusters(model, image, transforms, ['stages.0.1'], [(1, 1)])
    with pytest.raises(ValueError, match=r'blocks: .*block7.*stages\.<stage>\.<block>'):
        visualize_clusters(model, image, transforms, ['block7'], [(1, 1)])
    with pytest.raises(ValueError, match=r'centers: \(301, 5\) is outside the 301x237 image'):
        visualize_clusters(model, image, transforms, None, [(301, 5)])
    with pytest.raises(ValueError, match='centers: each centre must be an'):
        visualize_clusters(model, image, transforms, None, [(1.5, 5)])
    with pytest.raises(ValueError, match='image must be uint8'):
        visualize_clusters(model, image.astype(np.float32), transforms, None, [(1, 1)])
    with pytest.raises(ValueError, match='out: expected a .png path'):
        save_png(image, 'picture.jpg')
