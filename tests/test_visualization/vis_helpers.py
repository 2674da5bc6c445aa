"""Shared pieces of the visualisation tests: a real photograph and the PNG read-back."""
import math
import os.path as osp

import cv2
import numpy as np
import pytest

from mmdccnext.visualization import stage_stride_offset

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
RED = np.array([255, 0, 0])
ORANGE = np.array([255, 165, 0])
ALPHA = 0.5


def photo(width=301, height=237):
    """scikit-image's bundled photograph of a cat, cropped to the aspect ratio and resized
    to a non-square size that is not a multiple of 32."""
    data = pytest.importorskip('skimage.data', reason='scikit-image is not installed')
    image = data.chelsea()  # (300, 451, 3)
    h, w = image.shape[:2]
    crop_w = round(h * width / height)
    left = (w - crop_w) // 2
    image = image[:, left:left + crop_w]
    return np.ascontiguousarray(cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA))


def read_png(path):
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f'{path} is not a readable image'
    return np.ascontiguousarray(image[..., ::-1])


def nearest_patch(x, y, scale, shape, stride, offset):
    """Patch whose receptive-field centre is nearest to original pixel (x, y), by brute
    force over the rows and columns."""
    ux, uy = (x + 0.5) * scale[0], (y + 0.5) * scale[1]
    col = int(np.argmin(np.abs(offset[1] + stride[1] * np.arange(shape[1]) - ux)))
    row = int(np.argmin(np.abs(offset[0] + stride[0] * np.arange(shape[0]) - uy)))
    return row * shape[1] + col


def _span(index, count, stride, offset, input_size, content_size, scale):
    """Original-image span of patch ``index`` on one axis: half a stride either side of its
    receptive-field centre, the last one stretched to the input border, cut to the image."""
    centre = offset + stride * index
    lo = max(centre - stride / 2, 0.)
    hi = input_size if index == count - 1 else centre + stride / 2
    hi = min(hi, content_size)
    return lo / scale, hi / scale


def check_panels(result, canvas, backbone, margin=2.5):
    """Read the canvas back at every patch of every panel and check the colour: red where
    the centre patch is, orange at the recorded members, the photo elsewhere.

    Returns the number of pixels checked."""
    model_input = result.model_input
    image = model_input.image
    oh, ow = image.shape[:2]
    content_h, content_w = model_input.content_shape
    scale = (content_w / ow, content_h / oh)
    assert result.display_scale == (1.0, 1.0)  # read-back at the photo's own pixels
    checked = 0
    for row in result.panels:
        for panel in row:
            clusters = result.clusters[panel.block]
            stage = int(panel.block.split('.')[1])
            stride, offset = stage_stride_offset(backbone, stage)
            rows, cols = clusters.grid.shape
            in_h, in_w = model_input.inputs.shape[2:]
            centre = nearest_patch(*panel.center_xy, scale, (rows, cols), stride, offset)
            assert panel.center_patch == centre
            members = set(clusters.indices[centre].tolist()) - {centre}
            assert set(panel.member_patches.tolist()) == members
            ox, oy = panel.origin
            for patch in range(rows * cols):
                r, c = divmod(patch, cols)
                x1, x2 = _span(c, cols, stride[1], offset[1], in_w, content_w, scale[0])
                y1, y2 = _span(r, rows, stride[0], offset[0], in_h, content_h, scale[1])
                # the middle and, inset by the margin, the four corners of the box
                xs = {math.floor((x1 + x2) / 2), math.floor(x1 + margin),
                      math.ceil(x2 - margin) - 1}
                ys = {math.floor((y1 + y2) / 2), math.floor(y1 + margin),
                      math.ceil(y2 - margin) - 1}
                expected = ('centre' if patch == centre else
                            'member' if patch in members else 'none')
                for px, py in ((px, py) for px in xs for py in ys):
                    if min(px + 0.5 - x1, x2 - px - 0.5, py + 0.5 - y1, y2 - py - 0.5) < margin:
                        continue  # too close to a box edge (edge lines), or outside the image
                    original = image[py, px].astype(float)
                    drawn = canvas[oy + py, ox + px].astype(float)
                    candidates = {
                        'centre': ALPHA * RED + (1 - ALPHA) * original,
                        'member': ALPHA * ORANGE + (1 - ALPHA) * original,
                        'none': original
                    }
                    errors = {k: np.abs(drawn - v).max() for k, v in candidates.items()}
                    assert errors[expected] <= 2, (
                        f'{panel.block} patch ({r}, {c}) at pixel ({px}, {py}): expected '
                        f'{expected}, colour {drawn} is off by {errors}')
                    checked += 1
    return checked
