"""Cluster maps (paper Fig. 3): the clusters DCConv blocks form on an image, as a picture.

The clusters are the ones the model computes: :class:`mmdccnext.ops.DCConv` keeps the
indices of its last forward when ``record_indices`` is set, and the backbone is run once
with that flag on for the chosen blocks. Geometry (which pixels a patch covers) is in
:mod:`mmdccnext.visualization.patches`; drawing is MMEngine's ``Visualizer``.

The image reaches the model as at test time: the config's test pipeline (loading steps
left out, the image is given in memory; crops left out, so that every pixel has a patch)
and the model's data preprocessor (BGR -> RGB, mean / std, padding). Resizes are undone
exactly when pixel coordinates are mapped: the continuous coordinate ``u`` of the original
image is ``u * new_size / old_size`` in the resized one, as for OpenCV's and Pillow's
resizes.
"""
import os
import os.path as osp
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import mmcv
import numpy as np
import torch
from mmengine.dataset import Compose
from mmengine.model import is_model_wrapper
from mmengine.registry import DefaultScope
from mmengine.visualization import Visualizer

from .files import save_png
from .model import (block_stage, find_backbone, model_for_pictures, paper_block_number,
                    resolve_blocks, test_pipeline_cfg)
from .patches import PatchGrid

CENTER_COLOR = (255, 0, 0)  # red, as in the paper
MEMBER_COLOR = (255, 165, 0)  # orange (matplotlib's 'orange')
FILL_ALPHA = 0.5
TITLE_HEIGHT = 34
PANEL_GAP = 6


@dataclass
class ModelInput:
    """An image as the model sees it.

    Attributes:
        inputs (Tensor): ``(1, 3, H, W)`` output of the model's data preprocessor.
        image (ndarray): the original RGB image.
        scale (tuple): ``(sx, sy)``, model-input pixels per original pixel.
        content_shape (tuple): ``(h, w)`` of the resized image inside ``inputs`` (the rest
            is padding).
        dropped (tuple): names of the pipeline steps left out.
    """
    inputs: torch.Tensor
    image: np.ndarray
    scale: tuple
    content_shape: tuple
    dropped: tuple = ()

    def to_input(self, x, y):
        """Continuous model-input coordinates of the centre of original pixel (x, y)."""
        return (x + 0.5) * self.scale[0], (y + 0.5) * self.scale[1]


@dataclass
class BlockClusters:
    """Clusters of one DCConv block: ``indices[n]`` is the cluster of patch ``n`` (itself
    first, then its K - 1 nearest patches)."""
    name: str
    paper_number: int
    grid: PatchGrid
    indices: np.ndarray


@dataclass
class ClusterPanel:
    """One panel: one block, one centre. Boxes are in canvas pixels."""
    block: str
    center_xy: tuple
    center_patch: int
    member_patches: np.ndarray
    center_box: np.ndarray
    member_boxes: np.ndarray
    hidden_members: int  # members in the padding, outside the image
    origin: tuple  # (x, y) of the panel's image in the canvas


@dataclass
class ClusterVisualization:
    canvas: np.ndarray
    panels: list  # [centre][block] -> ClusterPanel
    clusters: OrderedDict
    centers: list
    model_input: ModelInput
    display_scale: tuple  # (sx, sy) canvas pixels per original pixel
    notes: list = field(default_factory=list)


def load_image(image):
    """RGB uint8 ``(H, W, 3)`` from a file path or an array (gray or RGB(A))."""
    if isinstance(image, (str, os.PathLike)):
        image = str(image)
        if not osp.isfile(image):
            raise FileNotFoundError(f'image: no such file {image!r}')
        array = mmcv.imread(image, channel_order='rgb')
        if array is None:
            raise ValueError(f'image: {image!r} could not be read as an image')
        return array
    if not isinstance(image, np.ndarray):
        raise TypeError(f'image must be a path or a numpy array, got {type(image).__name__}')
    if image.dtype != np.uint8:
        raise ValueError(f'image must be uint8, got {image.dtype}')
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f'image must be (H, W), (H, W, 3) or (H, W, 4), got {image.shape}')
    return np.ascontiguousarray(image[..., :3])


def build_test_transforms(cfg):
    """The config's test pipeline, built in its scope, as a list of transforms."""
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        return Compose(test_pipeline_cfg(cfg)).transforms


def _kind(transform):
    name = type(transform).__name__
    if name.startswith('Load'):
        return 'load'
    if 'Crop' in name:
        return 'crop'
    if name == 'TestTimeAug':
        raise ValueError('pipeline: test-time augmentation (TestTimeAug) is not supported; '
                         'use a config with a single test pipeline')
    return 'keep'


def prepare_input(model, transforms, image):
    """Run ``image`` through the test ``transforms`` and ``model.data_preprocessor``.

    Loading steps are left out (the image is in memory) and so are crops (every pixel of the
    image gets a patch). Resizes and bottom/right paddings are allowed; a step that changes
    the image size otherwise, or flips it, is an error, because coordinates could not be
    mapped back.
    """
    rgb = load_image(image)
    h, w = rgb.shape[:2]
    results = dict(
        img=np.ascontiguousarray(rgb[..., ::-1]),  # BGR, as LoadImageFromFile gives
        img_shape=(h, w), ori_shape=(h, w), img_path=image if isinstance(image, str) else '',
        img_id=0, sample_idx=0, scale_factor=(1., 1.))
    content = (h, w)
    dropped = []
    for transform in transforms:
        kind = _kind(transform)
        if kind != 'keep':
            dropped.append(type(transform).__name__)
            continue
        before = results['img'].shape[:2]
        name = type(transform).__name__
        results = transform(results)
        if results is None:
            raise ValueError(f'pipeline: {name} dropped the image')
        if results.get('flip'):
            raise ValueError(f'pipeline: {name} flips the image; cannot map coordinates back')
        if 'inputs' in results:
            break  # packed: the last step
        after = results['img'].shape[:2]
        if after != before:
            if 'Resize' in name:
                content = after
            elif 'Pad' not in name:
                raise ValueError(f'pipeline: {name} changes the image size from {before} to '
                                 f'{after} in a way that cannot be mapped back')
    if 'inputs' not in results:
        raise ValueError('pipeline: no packing step (PackInputs, PackDetInputs, '
                         'PackSegInputs) at the end of the test pipeline')
    data = dict(inputs=[results['inputs']], data_samples=[results['data_samples']])
    with torch.no_grad():
        inputs = model.data_preprocessor(data, False)['inputs']
    scale = (content[1] / w, content[0] / h)
    return ModelInput(inputs, rgb, scale, tuple(content), tuple(dropped))


def record_clusters(backbone, inputs, blocks):
    """Run ``backbone`` once in eval mode and collect the clusters of ``blocks``.

    Args:
        blocks (dict): name -> DCCNeXtBlock (see :func:`resolve_blocks`).

    Returns:
        OrderedDict: name -> :class:`BlockClusters` of the first image of ``inputs``.
    """
    shapes, handles, previous = {}, [], {}

    def keep_shape(name):
        def hook(module, args):
            shapes[name] = tuple(args[0].shape[1:3])  # blocks see (B, H, W, C)
        return hook

    was_training = backbone.training
    try:
        for name, block in blocks.items():
            previous[name] = block.mixer.record_indices
            block.mixer.record_indices = True
            handles.append(block.register_forward_pre_hook(keep_shape(name)))
        backbone.eval()
        with torch.no_grad():
            backbone(inputs)
        out = OrderedDict()
        for name, block in blocks.items():
            grid = PatchGrid.of_stage(backbone, block_stage(name), shapes[name],
                                      inputs.shape[2:])
            indices = block.mixer.last_indices[0].numpy()
            assert indices.shape[0] == grid.num_patches
            out[name] = BlockClusters(name, paper_block_number(backbone, name), grid, indices)
        return out
    finally:
        for handle in handles:
            handle.remove()
        for name, block in blocks.items():
            block.mixer.record_indices = previous.get(name, False)
            if not block.mixer.record_indices:
                block.mixer.last_indices = None
        backbone.train(was_training)


def _pixel_range(lo, hi, scale, size):
    """Original pixels p in [0, size) whose centre (p + 0.5) * scale lies in [lo, hi)."""
    first = max(int(np.ceil(lo / scale - 0.5)), 0)
    last = min(int(np.ceil(hi / scale - 0.5)) - 1, size - 1)
    return first, last


def patch_pixel(model_input, box):
    """An original pixel ``(x, y)`` that maps into the model-input ``box`` of a patch (the
    middle one), or ``None``."""
    x1, y1, x2, y2 = box
    h, w = model_input.image.shape[:2]
    cx = _pixel_range(x1, x2, model_input.scale[0], w)
    cy = _pixel_range(y1, y2, model_input.scale[1], h)
    if cx[0] > cx[1] or cy[0] > cy[1]:
        return None
    return (cx[0] + cx[1]) // 2, (cy[0] + cy[1]) // 2


def auto_centers(model_input, clusters, num_centers=1):
    """Centres picked on the deepest block: the patches that belong to the most clusters
    (ties to the lower index), spread out (a quarter of the shorter side of the patch grid,
    at least 2 patches, apart while enough such patches exist), as original pixels."""
    deepest = list(clusters.values())[-1]
    grid = deepest.grid
    counts = np.bincount(deepest.indices[:, 1:].ravel(), minlength=grid.num_patches)
    ranked = [int(p) for p in np.argsort(-counts, kind='stable')]
    boxes = grid.boxes()
    pixels = {}
    chosen = []
    for spacing in (max(2, min(grid.shape) // 4), 0):
        for patch in ranked:
            if len(chosen) == num_centers:
                break
            if patch not in pixels:
                pixels[patch] = patch_pixel(model_input, boxes[patch])
            if pixels[patch] is None:  # in the padding
                continue
            row, col = divmod(patch, grid.shape[1])
            if patch not in chosen and all(
                    max(abs(row - r), abs(col - c)) >= spacing
                    for r, c in (divmod(q, grid.shape[1]) for q in chosen)):
                chosen.append(patch)
    return [pixels[p] for p in chosen]


def check_centers(centers, image_shape):
    """``[(x, y), ...]`` integer pixels inside the image, or a ValueError naming them."""
    h, w = image_shape[:2]
    checked = []
    for c in centers:
        if (not isinstance(c, (tuple, list)) or len(c) != 2
                or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                           for v in c)):
            raise ValueError(f'centers: each centre must be an (x, y) pair of integer pixel '
                             f'coordinates, got {c!r}')
        x, y = int(c[0]), int(c[1])
        if not (0 <= x < w and 0 <= y < h):
            raise ValueError(f'centers: ({x}, {y}) is outside the {w}x{h} image '
                             f'(x in [0, {w - 1}], y in [0, {h - 1}])')
        checked.append((x, y))
    return checked


def visualize_clusters(model, image, transforms, blocks=None, centers=None, num_centers=1,
                       panel_size=None):
    """Cluster picture of ``image``: one row per centre, one panel per block.

    Args:
        model: a built model with a DCCNeXt backbone and a data preprocessor.
        image (str | ndarray): image file or RGB array.
        transforms (list): the test pipeline's transforms (see
            :func:`build_test_transforms`).
        blocks (list[str], optional): block names ``stages.<i>.<j>``; default: the first
            DCConv block of each DCConv stage.
        centers (list[tuple], optional): ``(x, y)`` pixels of the original image; default:
            ``num_centers`` picked by :func:`auto_centers`.
        panel_size (int, optional): long side of each panel in pixels; default: the image's.

    Returns:
        ClusterVisualization: the canvas (RGB) and, per panel, the recorded centre and member
        patches and the boxes drawn for them.
    """
    if is_model_wrapper(model):
        model = model.module
    _, backbone = find_backbone(model)
    chosen = resolve_blocks(backbone, blocks)
    rgb = load_image(image)
    if centers is not None:
        centers = check_centers(centers, rgb.shape)
        if not centers:
            raise ValueError('centers: give at least one (x, y) centre, or None for automatic')
    elif isinstance(num_centers, bool) or not isinstance(num_centers, int) or num_centers < 1:
        raise ValueError(f'num_centers must be an int >= 1, got {num_centers!r}')
    if panel_size is not None and (isinstance(panel_size, bool) or
                                   not isinstance(panel_size, int) or panel_size < 16):
        raise ValueError(f'panel_size must be an int >= 16 or None, got {panel_size!r}')
    model_input = prepare_input(model, transforms, rgb)
    clusters = record_clusters(backbone, model_input.inputs, chosen)
    notes = []
    if centers is None:
        centers = auto_centers(model_input, clusters, num_centers)
        notes.append(f'centres picked automatically on {list(clusters)[-1]}: {centers}')
    return _draw(model_input, clusters, centers, panel_size, notes)


def _display_image(image, panel_size):
    h, w = image.shape[:2]
    if panel_size is None:
        return image
    ratio = panel_size / max(h, w)
    size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
    return mmcv.imresize(image, size, interpolation='area' if ratio < 1 else 'bilinear')


def _to_display(boxes, model_input, display_scale):
    """Model-input boxes -> canvas boxes, clipped to the image; empty ones are zero-area."""
    sx = display_scale[0] / model_input.scale[0]
    sy = display_scale[1] / model_input.scale[1]
    out = boxes * np.array([sx, sy, sx, sy])
    h, w = model_input.image.shape[:2]
    limits = np.array([w, h, w, h]) * np.array(display_scale * 2)
    return np.minimum(out, limits)


def _draw(model_input, clusters, centers, panel_size, notes):
    shown = _display_image(model_input.image, panel_size)
    dh, dw = shown.shape[:2]
    oh, ow = model_input.image.shape[:2]
    display_scale = (dw / ow, dh / oh)
    visualizer = Visualizer(name='mmdccnext_clusters')
    with warnings.catch_warnings():
        # boxes are clipped to the image; the Visualizer flags any that touch its border
        warnings.filterwarnings('ignore', message='Warning: The (bbox|polygon) is out of bounds')
        rows, panels = _draw_panels(visualizer, shown, model_input, clusters, centers,
                                    display_scale)
    return ClusterVisualization(_grid(rows), panels, clusters, centers, model_input,
                                display_scale, notes)


def _draw_panels(visualizer, shown, model_input, clusters, centers, display_scale):
    dh, dw = shown.shape[:2]
    rows = []
    panels = []
    for r, (x, y) in enumerate(centers):
        row_images, row_panels = [], []
        for c, (name, block) in enumerate(clusters.items()):
            grid = block.grid
            patch = grid.patch_at(*model_input.to_input(x, y))
            members = block.indices[patch]
            members = members[members != patch]
            boxes = _to_display(grid.boxes(), model_input, display_scale)
            visible = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            hidden = int((~visible[members]).sum())  # in the padding, outside the image
            member_boxes = boxes[members[visible[members]]]
            visualizer.set_image(shown)
            if len(member_boxes):
                visualizer.draw_bboxes(member_boxes, edge_colors=[MEMBER_COLOR],
                                       face_colors=[MEMBER_COLOR], alpha=FILL_ALPHA,
                                       line_widths=1)
            visualizer.draw_bboxes(boxes[patch], edge_colors=[CENTER_COLOR],
                                   face_colors=[CENTER_COLOR], alpha=FILL_ALPHA, line_widths=1)
            drawn = visualizer.get_image()
            stride = grid.stride[0] if grid.stride[0] == grid.stride[1] else grid.stride
            line2 = f'centre ({x}, {y}) + {len(members)} members'
            if hidden:
                line2 += f' ({hidden} in padding)'
            visualizer.set_image(np.full((TITLE_HEIGHT, dw, 3), 255, np.uint8))
            visualizer.draw_texts(
                [f'{name} (block {block.paper_number}), stride {stride}', line2],
                positions=np.array([[3, 2], [3, TITLE_HEIGHT / 2 + 1]]),
                font_sizes=9, colors='black')
            row_images.append(np.concatenate([visualizer.get_image(), drawn], axis=0))
            origin = (c * (dw + PANEL_GAP), r * (TITLE_HEIGHT + dh + PANEL_GAP) + TITLE_HEIGHT)
            row_panels.append(ClusterPanel(name, (x, y), patch, members, boxes[patch],
                                           member_boxes, hidden, origin))
        rows.append(row_images)
        panels.append(row_panels)
    return rows, panels


def _grid(rows):
    """Panels side by side, rows one under another, white gaps."""
    def pad_right(img, gap):
        return np.pad(img, ((0, 0), (0, gap), (0, 0)), constant_values=255)

    def pad_below(img, gap):
        return np.pad(img, ((0, gap), (0, 0), (0, 0)), constant_values=255)

    lines = []
    for images in rows:
        line = [pad_right(img, PANEL_GAP) for img in images[:-1]] + [images[-1]]
        lines.append(np.concatenate(line, axis=1))
    lines = [pad_below(line, PANEL_GAP) for line in lines[:-1]] + [lines[-1]]
    return np.concatenate(lines, axis=0)


def visualize_clusters_from_config(config, image, out, checkpoint=None, blocks=None,
                                   centers=None, num_centers=1, panel_size=None,
                                   cfg_options=None, seed=0, device='cpu'):
    """:func:`visualize_clusters` for a config file (and checkpoint); writes ``out``."""
    if not str(out).lower().endswith('.png'):
        raise ValueError(f'out: expected a .png path, got {out!r}')
    image = load_image(image)  # before the model: a wrong path fails at once
    if centers is not None:
        centers = check_centers(centers, image.shape)
    model = model_for_pictures(config, checkpoint, cfg_options, seed=seed, device=device)
    cfg = model.cfg
    result = visualize_clusters(model, image, build_test_transforms(cfg), blocks, centers,
                                num_centers, panel_size)
    save_png(result.canvas, out)
    return result
