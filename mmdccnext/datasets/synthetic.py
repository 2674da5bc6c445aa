"""Synthetic data sets in the on-disk formats of COCO 2017, ADE20K and ImageNet.

COCO, ADE20K and ImageNet cannot be downloaded everywhere, yet ``make demo`` and the tests must
show the real OpenMMLab pipelines at work. This module draws small, deterministic data sets of
coloured geometric shapes and writes them in exactly the layouts the real configs read:

* :func:`generate_coco` -- ``annotations/instances_{train,val}2017.json`` (boxes, polygon
  instance masks, areas) and ``{train,val}2017/*.jpg``, for mmdet's ``CocoDataset``;
* :func:`generate_ade20k` -- ``images/{training,validation}/*.jpg`` and
  ``annotations/{training,validation}/*.png`` (uint8 labels, 0 = other/ignore, class ``k`` is
  stored as ``k + 1``), for mmseg's ``ADE20KDataset`` (``reduce_zero_label=True``);
* :func:`generate_imagenet` -- ``{train,val}/<class>/*.JPEG`` plus ``meta/{train,val}.txt``
  (``"<class>/<file> <label>"`` lines), for mmpretrain's ``ImageNet`` and ``CustomDataset``.

The content has real structure: six shape classes with distinct geometry *and* distinct colour
families (jittered), random scale, rotation and aspect, partial occlusion between objects, and
cluttered backgrounds (gradients, low-frequency noise, lines, blobs, pixel noise).

Every image is drawn from its own generator seeded by ``(seed, task, split, index)``, so the same
arguments always give byte-identical files, and the validation split does not depend on the
number of training images.

A data set is written into a temporary sibling ``ROOT.tmp-<pid>`` and renamed to ``ROOT`` when
complete; ``ROOT/synthetic_manifest.json`` is written last and marks completeness. A second call
with the same parameters finds the manifest and returns without writing anything.
"""
import colorsys
import json
import os
import os.path as osp
import shutil
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from mmdccnext.utils.fileio import write_file_atomic

__all__ = [
    'SYNTHETIC_CLASSES', 'SYNTHETIC_ADE20K_CLASSES', 'SYNTHETIC_PALETTE', 'MANIFEST_NAME',
    'DEFAULTS', 'generate', 'generate_coco', 'generate_ade20k', 'generate_imagenet',
    'read_manifest', 'ade20k_class_names', 'mask_to_polygons'
]

# Bumped whenever the drawing or the layout changes: an old data set is then regenerated.
GENERATOR_VERSION = 1
MANIFEST_NAME = 'synthetic_manifest.json'
# Written first into every data set this module creates (the manifest is written last).
_SENTINEL_NAME = '.mmdccnext_synthetic'

#: The shape classes, in canonical (alphabetical) order. Alphabetical so that the label order is
#: the same whether mmpretrain reads ``meta/*.txt`` or scans the class folders (sorted by name).
SYNTHETIC_CLASSES = ('circle', 'cross', 'ring', 'square', 'star', 'triangle')

#: Hue (degrees) of each class's colour family; objects jitter around it.
_HUES = {'circle': 0, 'cross': 180, 'ring': 295, 'square': 115, 'star': 50, 'triangle': 230}
_HUE_JITTER = 12

#: RGB palette (class centre colours) for visualisers, same order as SYNTHETIC_CLASSES.
SYNTHETIC_PALETTE = tuple(
    tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(_HUES[n] / 360., 0.85, 0.9))
    for n in SYNTHETIC_CLASSES)

# The first classes of mmseg's ADE20KDataset.METAINFO (copied so that this module does not need
# mmseg). ADE20KDataset only accepts metainfo classes that are a subset of its 150 names, so the
# synthetic label k+1 stands for ADE class k: pass ``metainfo=dict(classes=ade20k_class_names(K))``
# (identity label map) or keep the default 150 classes; or use BaseSegDataset with
# ``reduce_zero_label=True`` and the shape names.
_ADE20K_FIRST_CLASSES = ('wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road')

#: ADE20K names standing for SYNTHETIC_CLASSES in an ADE20KDataset (same order).
SYNTHETIC_ADE20K_CLASSES = _ADE20K_FIRST_CLASSES[:len(SYNTHETIC_CLASSES)]

#: Default parameters of each task (``make demo`` uses the COCO ones).
DEFAULTS = dict(
    coco=dict(
        num_train=600,
        num_val=100,
        image_size=(160, 128),
        object_size=(28, 80),
        objects_per_image=(1, 4)),
    ade20k=dict(
        num_train=200,
        num_val=50,
        image_size=(256, 256),
        object_size=(32, 128),
        objects_per_image=(2, 6)),
    imagenet=dict(
        num_train=600,
        num_val=120,
        image_size=(128, 128),
        object_size=(0.5, 0.9),
        objects_per_image=(0, 2)))

_SPLIT_CODES = {'train': 0, 'val': 1}
_TASK_CODES = {'coco': 0, 'ade20k': 1, 'imagenet': 2}  # decorrelates the tasks' images
_MIN_VISIBLE = 0.55  # an occluded object keeps at least this fraction of its pixels
_MIN_COMPONENT = 6  # visible fragments smaller than this (pixels) are not annotated

SizeArg = Union[Sequence[int], Sequence[Sequence[int]]]


def ade20k_class_names(num_classes: int = len(SYNTHETIC_CLASSES)) -> Tuple[str, ...]:
    """The ADE20K class names that stand for synthetic labels ``1..num_classes``."""
    if not 1 <= num_classes <= len(_ADE20K_FIRST_CLASSES):
        raise ValueError(f'num_classes must be in 1..{len(_ADE20K_FIRST_CLASSES)}')
    return _ADE20K_FIRST_CLASSES[:num_classes]


# --------------------------------------------------------------------------------------------
# drawing
# --------------------------------------------------------------------------------------------


def _regular(n: int, radius: float = 1., phase: float = -np.pi / 2) -> np.ndarray:
    t = phase + np.arange(n) * 2 * np.pi / n
    return np.stack([np.cos(t), np.sin(t)], 1) * radius


def _unit_shape(name: str, rng: np.random.Generator) -> List[np.ndarray]:
    """Polygons of a shape inside the unit circle; the second polygon (if any) is a hole."""
    if name == 'circle':
        return [_regular(48)]
    if name == 'ring':
        return [_regular(48), _regular(48, rng.uniform(0.5, 0.65))]
    if name == 'square':
        return [_regular(4, phase=np.pi / 4)]
    if name == 'triangle':
        return [_regular(3)]
    if name == 'star':
        pts = _regular(10)
        pts[1::2] *= rng.uniform(0.38, 0.5)
        return [pts]
    if name == 'cross':
        a, b = 1.0, rng.uniform(0.26, 0.36)
        return [
            np.array([(b, a), (b, b), (a, b), (a, -b), (b, -b), (b, -a), (-b, -a), (-b, -b),
                      (-a, -b), (-a, b), (-b, b), (-b, a)],
                     dtype=np.float64)
        ]
    raise KeyError(name)


def _hsv_to_bgr(h: float, s: float, v: float) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb((h % 360.) / 360., s, v)
    return np.array([b, g, r], dtype=np.float32) * 255.


def _class_colour(name: str, rng: np.random.Generator) -> np.ndarray:
    hue = _HUES[name] + rng.uniform(-_HUE_JITTER, _HUE_JITTER)
    return _hsv_to_bgr(hue, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))


def _muted_colour(rng: np.random.Generator, vmin: float = 0.15, vmax: float = 0.9) -> np.ndarray:
    """A low-saturation colour, as used for backgrounds and clutter."""
    return _hsv_to_bgr(rng.uniform(0, 360), rng.uniform(0., 0.3), rng.uniform(vmin, vmax))


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Gradient + low-frequency noise + lines + blobs, float32 BGR."""
    c0, c1 = _muted_colour(rng), _muted_colour(rng)
    theta = rng.uniform(0, 2 * np.pi)
    t = (
        np.arange(w, dtype=np.float32)[None] * np.float32(np.cos(theta)) +
        np.arange(h, dtype=np.float32)[:, None] * np.float32(np.sin(theta)))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.)
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    gh, gw = int(rng.integers(3, 8)), int(rng.integers(3, 8))
    low = rng.normal(0., rng.uniform(8., 25.), (gh, gw, 3)).astype(np.float32)
    img += cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(0, 4))):  # soft blobs
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(8, max(9, w // 3))), int(rng.integers(8, max(9, h // 3))))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360,
                    _muted_colour(rng).tolist(), -1, cv2.LINE_AA)
    for _ in range(int(rng.integers(3, 11))):  # lines
        p0 = (int(rng.integers(-w // 4, w + w // 4)), int(rng.integers(-h // 4, h + h // 4)))
        p1 = (int(rng.integers(-w // 4, w + w // 4)), int(rng.integers(-h // 4, h + h // 4)))
        cv2.line(img, p0, p1,
                 _muted_colour(rng, 0.05, 1.).tolist(), int(rng.integers(1, 4)), cv2.LINE_AA)
    return img


def _finish(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pixel noise and an occasional blur; returns uint8."""
    if rng.random() < 0.4:
        img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.5, 1.0))
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(3., 10.)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _place_shape(name: str, rng: np.random.Generator, h: int, w: int,
                 diameter: float) -> Optional[Tuple[np.ndarray, Tuple[float, float, float]]]:
    """A binary mask of one randomly posed shape fully inside the image, and (cx, cy, r)."""
    polys = _unit_shape(name, rng)
    angle = rng.uniform(0, 2 * np.pi)
    aspect = np.exp(rng.uniform(-0.15, 0.15))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    r = diameter / 2.
    polys = [(p * np.array([aspect, 1. / aspect]) * r) @ rot.T for p in polys]
    lo, hi = polys[0].min(0), polys[0].max(0)
    x_range, y_range = (-lo[0], w - 1 - hi[0]), (-lo[1], h - 1 - hi[1])
    if x_range[0] > x_range[1] or y_range[0] > y_range[1]:
        return None
    cx, cy = rng.uniform(*x_range), rng.uniform(*y_range)
    mask = np.zeros((h, w), np.uint8)
    shifted = [np.round((p + (cx, cy)) * 16).astype(np.int32) for p in polys]
    cv2.fillPoly(mask, shifted[:1], 1, cv2.LINE_8, 4)
    if len(shifted) > 1:
        cv2.fillPoly(mask, shifted[1:], 0, cv2.LINE_8, 4)
    return mask, (cx, cy, r)


def _paint(img: np.ndarray, mask: np.ndarray, name: str, pose: Tuple[float, float, float],
           rng: np.random.Generator) -> None:
    """Fill ``mask`` in ``img`` with the class colour, shaded along a random direction."""
    colour = _class_colour(name, rng)
    ys, xs = np.nonzero(mask)
    cx, cy, r = pose
    phi = rng.uniform(0, 2 * np.pi)
    shade = 1. + rng.uniform(0.05, 0.3) * ((xs - cx) * np.cos(phi) +
                                           (ys - cy) * np.sin(phi)) / max(r, 1.)
    img[ys, xs] = colour[None] * shade[:, None].astype(np.float32)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _draw_scene(rng: np.random.Generator, h: int, w: int, classes: Sequence[str],
                object_size: Sequence[float], num_objects: int):
    """Background plus ``num_objects`` shapes with bounded occlusion.

    Returns the float image, the per-object class indices, and the per-object visible masks
    (later objects occlude earlier ones).
    """
    img = _background(rng, h, w)
    labels, visible, full_area = [], [], []
    for _ in range(num_objects):
        for _attempt in range(20):
            label = int(rng.integers(len(classes)))
            diameter = _log_uniform(rng, object_size[0], min(object_size[1], min(h, w) - 2))
            placed = _place_shape(classes[label], rng, h, w, diameter)
            if placed is None:
                continue
            mask, pose = placed
            inv = 1 - mask
            new_visible = [v & inv for v in visible]
            if all(nv.sum() >= _MIN_VISIBLE * a for nv, a in zip(new_visible, full_area)):
                break
        else:
            continue
        _paint(img, mask, classes[label], pose, rng)
        visible = new_visible + [mask]
        labels.append(label)
        full_area.append(int(mask.sum()))
    return img, labels, visible


def _clean_mask(mask: np.ndarray) -> np.ndarray:
    """Drop visible fragments smaller than _MIN_COMPONENT pixels."""
    n, cc, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 2:
        return mask
    keep = np.zeros(n, np.uint8)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= _MIN_COMPONENT
    return keep[cc]


def _keyhole(outer: np.ndarray, holes: List[np.ndarray]) -> np.ndarray:
    """Splice holes into the outer contour through zero-width bridges (one polygon per part)."""
    poly = outer
    for hole in holes:
        d = ((poly[:, None, :] - hole[None, :, :])**2).sum(-1)
        i, j = np.unravel_index(int(np.argmin(d)), d.shape)
        poly = np.concatenate([poly[:i + 1], hole[j:], hole[:j + 1], poly[i:]])
    return poly


def _simplify(contour: np.ndarray) -> np.ndarray:
    # tolerance 0.5 upsampled px = 0.25 px: fewer vertices, still rasterises to the same mask
    return cv2.approxPolyDP(contour, 0.5, True).reshape(-1, 2)


def mask_to_polygons(mask: np.ndarray) -> List[List[float]]:
    """COCO polygons of a binary mask; rasterising them with pycocotools gives back ``mask``.

    Contours are traced on the mask upsampled 2x, so every vertex lies a quarter pixel inside
    the pixel boundary; holes are spliced in so that each connected part is one polygon.
    """
    h, w = mask.shape
    up = cv2.resize(mask, (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]
    polygons = []
    for k, contour in enumerate(contours):
        if hierarchy[k][3] != -1:
            continue
        holes, child = [], hierarchy[k][2]
        while child != -1:
            holes.append(_simplify(contours[child]))
            child = hierarchy[child][0]
        poly = _keyhole(_simplify(contour), holes)
        if len(poly) < 3:
            continue
        polygons.append([round(float(v), 2) for v in ((poly + 0.5) / 2.).ravel()])
    return polygons


# --------------------------------------------------------------------------------------------
# file writing (module level so that tests can interrupt it)
# --------------------------------------------------------------------------------------------


def _write_image(path: str, img: np.ndarray) -> None:
    """Encode ``img`` (uint8 BGR or single-channel) by the extension of ``path`` and write it."""
    ext = osp.splitext(path)[1].lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, 92] if ext in ('.jpg', '.jpeg') else \
        [cv2.IMWRITE_PNG_COMPRESSION, 6]
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise IOError(f'could not encode {path}')
    with open(path, 'wb') as f:
        f.write(buf.tobytes())


def _write_json(path: str, obj) -> None:
    text = json.dumps(obj, separators=(',', ':'))  # dumps: the fast C encoder
    with open(path, 'w') as f:
        f.write(text)


def _write_lines(path: str, lines: Sequence[str]) -> None:
    with open(path, 'w') as f:
        f.write(''.join(line + '\n' for line in lines))


# --------------------------------------------------------------------------------------------
# parameters, manifest and atomic replacement
# --------------------------------------------------------------------------------------------


def _resolve_classes(classes: Optional[Sequence[str]]) -> Tuple[str, ...]:
    if classes is None:
        return SYNTHETIC_CLASSES
    if isinstance(classes, str):
        classes = [classes]
    unknown = [c for c in classes if c not in SYNTHETIC_CLASSES]
    if unknown or not classes:
        raise ValueError(f'classes must be a non-empty subset of {SYNTHETIC_CLASSES}, '
                         f'got {tuple(classes)}')
    # canonical order, so that folder scans and label files agree (see SYNTHETIC_CLASSES)
    return tuple(c for c in SYNTHETIC_CLASSES if c in classes)


def _resolve_size(image_size: SizeArg) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """``(W, H)`` or ``((Wmin, Hmin), (Wmax, Hmax))`` -> ((Wmin, Hmin), (Wmax, Hmax))."""
    arr = np.asarray(image_size, dtype=np.int64)
    if arr.shape == (2, ):
        lo = hi = (int(arr[0]), int(arr[1]))
    elif arr.shape in ((2, 2), (4, )):
        arr = arr.reshape(2, 2)
        lo, hi = (int(arr[0, 0]), int(arr[0, 1])), (int(arr[1, 0]), int(arr[1, 1]))
    else:
        raise ValueError(f'image_size must be (W, H) or ((Wmin, Hmin), (Wmax, Hmax)), '
                         f'got {image_size!r}')
    if min(lo) < 32 or lo[0] > hi[0] or lo[1] > hi[1]:
        raise ValueError(f'invalid image_size {image_size!r} (sides >= 32, min <= max)')
    return lo, hi


def _sample_size(rng: np.random.Generator, size) -> Tuple[int, int]:
    (w0, h0), (w1, h1) = size
    return int(rng.integers(w0, w1 + 1)), int(rng.integers(h0, h1 + 1))


def _image_rng(seed: int, task: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _TASK_CODES[task], _SPLIT_CODES[split], int(index)])


def _normalise(obj):
    """Params as they read back from JSON (tuples -> lists), for comparison."""
    return json.loads(json.dumps(obj))


def read_manifest(root: str) -> Optional[dict]:
    """The manifest of a complete synthetic data set at ``root``, or None."""
    try:
        with open(osp.join(root, MANIFEST_NAME)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a leftover of an earlier, failed call of this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale_siblings(root: str) -> None:
    """Remove ``ROOT.tmp-<pid>`` / ``ROOT.old-<pid>`` dirs whose process is gone."""
    parent, base = osp.split(osp.abspath(root))
    if not osp.isdir(parent):
        return
    for name in os.listdir(parent):
        for tag in ('.tmp-', '.old-'):
            prefix = base + tag
            if name.startswith(prefix) and name[len(prefix):].isdigit():
                if not _pid_alive(int(name[len(prefix):])):
                    shutil.rmtree(osp.join(parent, name), ignore_errors=True)


def _replaceable(root: str) -> bool:
    """Whether an existing ``root`` is ours (or empty) and may be replaced."""
    if not osp.isdir(root) or osp.islink(root):
        return False
    entries = os.listdir(root)
    return not entries or MANIFEST_NAME in entries or _SENTINEL_NAME in entries


def _build(task: str, root: str, params: dict, writer, force: bool) -> dict:
    """Skip if complete with ``params``; else write via ``writer(tmp)`` and swap in atomically."""
    root = osp.abspath(root)
    params = _normalise(dict(params, task=task, generator_version=GENERATOR_VERSION))
    manifest = read_manifest(root)
    if not force and manifest is not None and manifest.get('params') == params:
        return dict(manifest['summary'], root=root, skipped=True)
    if osp.lexists(root) and not force and not _replaceable(root):
        raise FileExistsError(
            f'{root} exists and was not written by the synthetic data generator (no '
            f'{MANIFEST_NAME}); refusing to replace it. Remove it or pass force=True.')

    _remove_stale_siblings(root)
    os.makedirs(osp.dirname(root), exist_ok=True)
    tmp = f'{root}.tmp-{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        with open(osp.join(tmp, _SENTINEL_NAME), 'w') as f:
            f.write('partial or complete synthetic data set; complete iff '
                    f'{MANIFEST_NAME} exists\n')
        summary = _normalise(dict(writer(tmp), task=task))
        manifest = dict(generator='mmdccnext.datasets.synthetic', params=params, summary=summary)
        # the manifest marks the set complete: written whole or not at all
        write_file_atomic(osp.join(tmp, MANIFEST_NAME), json.dumps(manifest, separators=(',', ':')))

        if osp.lexists(root):
            other = read_manifest(root)
            if not force and other is not None and other.get('params') == params:
                # another process completed the same data set meanwhile: keep it
                shutil.rmtree(tmp, ignore_errors=True)
                return dict(other['summary'], root=root, skipped=True)
            old = f'{root}.old-{os.getpid()}'
            shutil.rmtree(old, ignore_errors=True)
            os.rename(root, old)
            os.rename(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dict(summary, root=root, skipped=False)


def _check_range(name, value, cast=int):
    lo, hi = (cast(v) for v in value)
    if lo < 0 or lo > hi:
        raise ValueError(f'{name} must be (min, max) with 0 <= min <= max, got {value!r}')
    return lo, hi


# --------------------------------------------------------------------------------------------
# COCO 2017
# --------------------------------------------------------------------------------------------


def _coco_split(tmp: str, split: str, num: int, seed: int, classes, size, object_size,
                objects_per_image) -> dict:
    img_dir = osp.join(tmp, f'{split}2017')
    os.makedirs(img_dir)
    images, annotations = [], []
    id_offset = 0 if split == 'train' else 1_000_000
    for i in range(num):
        rng = _image_rng(seed, 'coco', split, i)
        w, h = _sample_size(rng, size)
        n_obj = int(rng.integers(max(objects_per_image[0], 1), objects_per_image[1] + 1))
        img, labels, visible = _draw_scene(rng, h, w, classes, object_size, n_obj)
        image_id = id_offset + i + 1
        file_name = f'{image_id:012d}.jpg'
        _write_image(osp.join(img_dir, file_name), _finish(img, rng))
        images.append(dict(id=image_id, file_name=file_name, width=w, height=h, license=1))
        for label, mask in zip(labels, visible):
            mask = _clean_mask(mask)
            polygons = mask_to_polygons(mask)
            if not polygons:
                continue
            ys, xs = np.nonzero(mask)
            x0, y0 = int(xs.min()), int(ys.min())
            bbox = [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]
            annotations.append(
                dict(
                    id=len(annotations) + 1,
                    image_id=image_id,
                    category_id=label + 1,
                    segmentation=polygons,
                    area=float(mask.sum()),
                    bbox=bbox,
                    iscrowd=0))
    categories = [dict(id=k + 1, name=c, supercategory='shape') for k, c in enumerate(classes)]
    coco = dict(
        info=dict(
            description=f'mmdccnext synthetic shapes, COCO 2017 layout ({split})',
            version=str(GENERATOR_VERSION),
            year=2017,
            contributor='mmdccnext',
            url='',
            date_created=''),
        licenses=[dict(id=1, name='CC0-1.0', url='')],
        images=images,
        annotations=annotations,
        categories=categories)
    _write_json(osp.join(tmp, 'annotations', f'instances_{split}2017.json'), coco)
    return dict(images=len(images), instances=len(annotations))


def generate_coco(root: str,
                  num_train: int = DEFAULTS['coco']['num_train'],
                  num_val: int = DEFAULTS['coco']['num_val'],
                  image_size: SizeArg = DEFAULTS['coco']['image_size'],
                  seed: int = 0,
                  classes: Optional[Sequence[str]] = None,
                  object_size: Sequence[float] = DEFAULTS['coco']['object_size'],
                  objects_per_image: Sequence[int] = DEFAULTS['coco']['objects_per_image'],
                  force: bool = False) -> dict:
    """Write a synthetic COCO 2017 data set to ``root`` (or find it complete) and summarise it.

    Layout: ``annotations/instances_{train,val}2017.json`` and ``{train,val}2017/<id:012d>.jpg``.
    Each annotation has ``bbox`` (xywh of the visible pixels), ``area`` (visible pixels),
    ``iscrowd=0`` and ``segmentation`` polygons (holes spliced in) that rasterise to exactly the
    visible mask. Category ids are ``1..K`` in the order of the (canonicalised) ``classes``.

    Args:
        root: data set folder, e.g. ``data/synthetic/coco``.
        num_train, num_val: number of images per split.
        image_size: ``(W, H)``, or ``((Wmin, Hmin), (Wmax, Hmax))`` for a random size per image.
        seed: everything is a function of the arguments; the same seed gives identical files.
        classes: a subset of :data:`SYNTHETIC_CLASSES` (default: all six), in canonical order.
        object_size: (min, max) diameter of an object in pixels (log-uniform).
        objects_per_image: (min, max) number of objects drawn (at least one).
        force: regenerate even if a complete data set with these parameters exists.

    Returns:
        dict with ``root``, ``task``, ``classes``, per-split ``images``/``instances`` counts,
        ``ann_files``, ``img_dirs`` and ``skipped`` (True if nothing was written).
    """
    classes = _resolve_classes(classes)
    size = _resolve_size(image_size)
    object_size = _check_range('object_size', object_size, float)
    objects_per_image = _check_range('objects_per_image', objects_per_image)
    params = dict(
        num_train=int(num_train),
        num_val=int(num_val),
        image_size=size,
        seed=int(seed),
        classes=classes,
        object_size=object_size,
        objects_per_image=objects_per_image)

    def writer(tmp):
        os.makedirs(osp.join(tmp, 'annotations'))
        splits = {
            split: _coco_split(tmp, split, num, seed, classes, size, object_size, objects_per_image)
            for split, num in (('train', num_train), ('val', num_val))
        }
        return dict(
            classes=classes,
            splits=splits,
            ann_files={s: f'annotations/instances_{s}2017.json'
                       for s in splits},
            img_dirs={s: f'{s}2017/'
                      for s in splits})

    return _build('coco', root, params, writer, force)


# --------------------------------------------------------------------------------------------
# ADE20K
# --------------------------------------------------------------------------------------------


def generate_ade20k(root: str,
                    num_train: int = DEFAULTS['ade20k']['num_train'],
                    num_val: int = DEFAULTS['ade20k']['num_val'],
                    image_size: SizeArg = DEFAULTS['ade20k']['image_size'],
                    seed: int = 0,
                    classes: Optional[Sequence[str]] = None,
                    object_size: Sequence[float] = DEFAULTS['ade20k']['object_size'],
                    objects_per_image: Sequence[int] = DEFAULTS['ade20k']['objects_per_image'],
                    force: bool = False) -> dict:
    """Write a synthetic ADE20K (ADEChallengeData2016 layout) data set to ``root``.

    Layout: ``images/{training,validation}/ADE_{train,val}_<n:08d>.jpg`` and
    ``annotations/{training,validation}/<same stem>.png`` -- single-channel uint8 labels where 0
    is "other" (ignored under ``reduce_zero_label=True``) and shape class ``k`` is ``k + 1``.

    mmseg's ``ADE20KDataset`` accepts only class names from its own 150, so for K classes use
    ``metainfo=dict(classes=ade20k_class_names(K))`` (label k+1 -> class k); or use
    ``BaseSegDataset`` with ``img_suffix='.jpg', seg_map_suffix='.png',
    reduce_zero_label=True`` and the shape names. Arguments as in :func:`generate_coco`.
    """
    classes = _resolve_classes(classes)
    size = _resolve_size(image_size)
    object_size = _check_range('object_size', object_size, float)
    objects_per_image = _check_range('objects_per_image', objects_per_image)
    params = dict(
        num_train=int(num_train),
        num_val=int(num_val),
        image_size=size,
        seed=int(seed),
        classes=classes,
        object_size=object_size,
        objects_per_image=objects_per_image)

    def write_split(tmp, split, folder, prefix, num):
        img_dir = osp.join(tmp, 'images', folder)
        ann_dir = osp.join(tmp, 'annotations', folder)
        os.makedirs(img_dir)
        os.makedirs(ann_dir)
        pixels = np.zeros(len(classes) + 1, np.int64)
        for i in range(num):
            rng = _image_rng(seed, 'ade20k', split, i)
            w, h = _sample_size(rng, size)
            n_obj = int(rng.integers(max(objects_per_image[0], 1), objects_per_image[1] + 1))
            img, labels, visible = _draw_scene(rng, h, w, classes, object_size, n_obj)
            seg = np.zeros((h, w), np.uint8)
            for label, mask in zip(labels, visible):
                seg[mask.astype(bool)] = label + 1
            pixels += np.bincount(seg.ravel(), minlength=len(classes) + 1)
            stem = f'{prefix}_{i + 1:08d}'
            _write_image(osp.join(img_dir, stem + '.jpg'), _finish(img, rng))
            _write_image(osp.join(ann_dir, stem + '.png'), seg)
        return dict(images=num, pixels_per_label=pixels.tolist())

    def writer(tmp):
        splits = {
            'train': write_split(tmp, 'train', 'training', 'ADE_train', num_train),
            'val': write_split(tmp, 'val', 'validation', 'ADE_val', num_val),
        }
        return dict(
            classes=classes,
            ade20k_classes=ade20k_class_names(len(classes)),
            splits=splits,
            img_dirs=dict(train='images/training', val='images/validation'),
            seg_map_dirs=dict(train='annotations/training', val='annotations/validation'))

    return _build('ade20k', root, params, writer, force)


# --------------------------------------------------------------------------------------------
# ImageNet
# --------------------------------------------------------------------------------------------


def generate_imagenet(root: str,
                      num_train: int = DEFAULTS['imagenet']['num_train'],
                      num_val: int = DEFAULTS['imagenet']['num_val'],
                      image_size: SizeArg = DEFAULTS['imagenet']['image_size'],
                      seed: int = 0,
                      classes: Optional[Sequence[str]] = None,
                      object_size: Sequence[float] = DEFAULTS['imagenet']['object_size'],
                      objects_per_image: Sequence[int] = DEFAULTS['imagenet']['objects_per_image'],
                      force: bool = False) -> dict:
    """Write a synthetic ImageNet-style classification data set to ``root``.

    Layout: ``{train,val}/<class>/<class>_<n:06d>.JPEG`` and ``meta/{train,val}.txt`` with
    ``"<class>/<file> <label>"`` lines, label = index in the (canonical, alphabetical)
    ``classes`` = index of the class folder in sorted order, so ``ImageNet(split=...)`` (reads
    meta) and ``CustomDataset(data_prefix=...)`` (scans folders) agree. Image ``i`` has class
    ``i % K`` (balanced). Each image has one dominant shape of diameter
    ``object_size`` x min(W, H) (fractions) drawn over ``objects_per_image`` (min, max) smaller
    distractor shapes of other classes. Other arguments as in :func:`generate_coco`.
    """
    classes = _resolve_classes(classes)
    size = _resolve_size(image_size)
    object_size = _check_range('object_size', object_size, float)
    objects_per_image = _check_range('objects_per_image', objects_per_image)
    if not 0 < object_size[0] <= object_size[1] <= 1:
        raise ValueError('for imagenet, object_size is a (min, max) fraction of min(W, H)')
    params = dict(
        num_train=int(num_train),
        num_val=int(num_val),
        image_size=size,
        seed=int(seed),
        classes=classes,
        object_size=object_size,
        objects_per_image=objects_per_image)

    def draw(rng, label):
        w, h = _sample_size(rng, size)
        side = min(w, h)
        others = [c for c in classes if c != classes[label]] or list(classes)
        n_small = int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))
        small = (max(6., 0.12 * side), max(7., 0.25 * side))
        img, _, _ = _draw_scene(rng, h, w, others, small, n_small)
        diameter = rng.uniform(object_size[0], object_size[1]) * (side - 2)
        placed = _place_shape(classes[label], rng, h, w, diameter)
        if placed is None:  # cannot happen for diameter <= side - 2; keep it safe
            placed = _place_shape(classes[label], rng, h, w, 0.5 * side)
        _paint(img, placed[0], classes[label], placed[1], rng)
        return _finish(img, rng)

    def write_split(tmp, split, num):
        for c in classes:  # every class folder exists, so folder scans find K classes
            os.makedirs(osp.join(tmp, split, c))
        lines, counts = [], [0] * len(classes)
        for i in range(num):
            label = i % len(classes)
            rng = _image_rng(seed, 'imagenet', split, i)
            rel = f'{classes[label]}/{classes[label]}_{i + 1:06d}.JPEG'
            _write_image(osp.join(tmp, split, rel), draw(rng, label))
            lines.append(f'{rel} {label}')
            counts[label] += 1
        _write_lines(osp.join(tmp, 'meta', f'{split}.txt'), lines)
        return dict(images=num, per_class=counts)

    def writer(tmp):
        os.makedirs(osp.join(tmp, 'meta'))
        splits = {s: write_split(tmp, s, n) for s, n in (('train', num_train), ('val', num_val))}
        return dict(
            classes=classes,
            splits=splits,
            ann_files=dict(train='meta/train.txt', val='meta/val.txt'),
            img_dirs=dict(train='train', val='val'))

    return _build('imagenet', root, params, writer, force)


_GENERATORS = dict(coco=generate_coco, ade20k=generate_ade20k, imagenet=generate_imagenet)


def generate(task: str, root: str, **kwargs) -> dict:
    """Dispatch to ``generate_<task>``; ``None`` keyword values mean "the default"."""
    if task not in _GENERATORS:
        raise ValueError(f'task must be one of {sorted(_GENERATORS)}, got {task!r}')
    return _GENERATORS[task](root, **{k: v for k, v in kwargs.items() if v is not None})
