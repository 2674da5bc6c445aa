"""Patch geometry: strides and receptive-field centres, grid sizes for any input size, and
the pixel -> patch -> box mapping."""
import math

import numpy as np
import pytest
import torch

from mmdccnext.models import DCCNeXt
from mmdccnext.visualization import PatchGrid, dcconv_blocks, record_clusters, stage_stride_offset


@pytest.fixture(scope='module')
def backbone():
    torch.manual_seed(0)
    return DCCNeXt('b0', out_indices=(0, 1, 2, 3), gap_before_final_norm=False).eval()


@pytest.mark.parametrize('stage', [0, 1, 2, 3])
def test_offset_is_the_receptive_field_centre(backbone, stage):
    """The receptive field of an interior cell, measured with autograd through the stem and
    downsampling layers, is centred where ``stage_stride_offset`` puts the patch."""
    (sy, sx), (oy, ox) = stage_stride_offset(backbone, stage)
    assert (sy, sx) == (4 * 2**stage, ) * 2
    image = torch.randn(1, 3, 160, 224, requires_grad=True)
    x = image
    for layer in backbone.downsample_layers[:stage + 1]:
        x = layer(x)  # (B, H, W, C)
    row, col = x.shape[1] // 2, x.shape[2] // 2
    # a random projection: the channel sum of a LayerNorm output has no gradient
    (x[0, row, col] * torch.randn(x.shape[-1])).sum().backward()
    support = image.grad[0].abs().sum(0) > 0
    rows = np.nonzero(support.any(1).numpy())[0]
    cols = np.nonzero(support.any(0).numpy())[0]
    assert rows[0] > 0 and cols[0] > 0  # not cut by the border
    # continuous centre of the pixel span [first, last + 1)
    assert (rows[0] + rows[-1] + 1) / 2 == pytest.approx(oy + sy * row)
    assert (cols[0] + cols[-1] + 1) / 2 == pytest.approx(ox + sx * col)


@pytest.mark.parametrize('height,width', [(237, 301), (225, 226), (96, 130), (33, 65)])
def test_grid_sizes_for_any_input_size(backbone, height, width):
    """No padding and no multiple of 32 needed: the stem gives floor((H + 1) / 4) rows,
    each downsampling ceil(H / 2)."""
    blocks = dcconv_blocks(backbone)
    names = [n for n in blocks if n.endswith('.0')]
    clusters = record_clusters(backbone, torch.randn(1, 3, height, width),
                               {n: blocks[n] for n in names})
    for name in names:
        stage = int(name.split('.')[1])
        h, w = (height + 1) // 4, (width + 1) // 4
        for _ in range(stage):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        grid = clusters[name].grid
        assert grid.shape == (h, w)
        assert grid.input_shape == (height, width)
        assert clusters[name].indices.shape == (h * w, min(blocks[name].mixer.kernel_size, h * w))
    # the recorder leaves the blocks as it found them
    assert all(not b.mixer.record_indices and b.mixer.last_indices is None
               for b in blocks.values())


@pytest.mark.parametrize('shape,stride,input_shape', [((8, 10), 16, (128, 162)),
                                                      ((15, 19), 16, (237, 301)),
                                                      ((4, 5), 32, (128, 162)),
                                                      ((8, 9), 32, (256, 288))])
def test_boxes_tile_the_input_and_contain_their_pixels(shape, stride, input_shape):
    grid = PatchGrid(shape, (stride, stride), (1.5, 1.5), input_shape)
    boxes = grid.boxes()
    centres = grid.patch_centers()
    h, w = input_shape
    # boxes cover the input exactly once
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert areas.sum() == pytest.approx(h * w)
    ys, xs = np.mgrid[0:h, 0:w] + 0.5  # pixel centres
    for x, y in zip(xs.ravel()[::7], ys.ravel()[::7]):
        patch = grid.patch_at(x, y)
        x1, y1, x2, y2 = boxes[patch]
        assert x1 <= x < x2 and y1 <= y < y2
        # the patch is the one with the nearest receptive-field centre, on both axes
        assert abs(centres[patch, 0] - x) <= np.abs(centres[:, 0] - x).min() + 1e-9
        assert abs(centres[patch, 1] - y) <= np.abs(centres[:, 1] - y).min() + 1e-9
