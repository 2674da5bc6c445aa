"""The synthetic data sets: real on-disk formats, determinism, atomic writes, idempotence."""
import hashlib
import importlib.util
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mmdccnext.datasets import (MANIFEST_NAME, SYNTHETIC_CLASSES, ade20k_class_names,
                                generate_ade20k, generate_coco, generate_imagenet, mask_to_polygons,
                                read_manifest, synthetic)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SMALL_COCO = dict(num_train=6, num_val=4, image_size=(160, 120), object_size=(20, 70))


def _tree(root):
    """{relative path: sha1} of every file under root."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = osp.join(d, f)
            with open(p, 'rb') as fh:
                out[osp.relpath(p, root)] = hashlib.sha1(fh.read()).hexdigest()
    return out


def _mtimes(root):
    return {
        osp.relpath(osp.join(d, f), root): os.stat(osp.join(d, f)).st_mtime_ns
        for d, _, files in os.walk(root)
        for f in files
    }


def _siblings(root):
    parent, base = osp.split(str(root))
    return sorted(n for n in os.listdir(parent) if n.startswith(base + '.'))


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('syn') / 'coco')
    summary = generate_coco(root, **SMALL_COCO)
    assert not summary['skipped']
    return root


# ------------------------------------------------------------------------------ COCO


def test_coco_deterministic(coco_root, tmp_path):
    again = str(tmp_path / 'coco')
    generate_coco(again, **SMALL_COCO)
    a, b = _tree(coco_root), _tree(again)
    assert a == b  # every file byte-identical, annotations included
    assert 'annotations/instances_train2017.json' in a and MANIFEST_NAME in a
    other = str(tmp_path / 'coco_seed1')
    generate_coco(other, seed=1, **SMALL_COCO)
    c = _tree(other)
    assert c['annotations/instances_val2017.json'] != a['annotations/instances_val2017.json']
    # the val split does not depend on the number of training images
    fewer = str(tmp_path / 'coco_fewer')
    generate_coco(fewer, **dict(SMALL_COCO, num_train=2))
    assert _tree(fewer)['annotations/instances_val2017.json'] == \
        a['annotations/instances_val2017.json']


def test_coco_pycocotools(coco_root):
    from pycocotools.coco import COCO
    for split, num in (('train', 6), ('val', 4)):
        coco = COCO(osp.join(coco_root, 'annotations', f'instances_{split}2017.json'))
        cats = coco.loadCats(coco.getCatIds())
        assert [c['name'] for c in cats] == list(SYNTHETIC_CLASSES)
        assert [c['id'] for c in cats] == list(range(1, len(SYNTHETIC_CLASSES) + 1))
        assert len(coco.getImgIds()) == num
        n_anns = 0
        for img in coco.loadImgs(coco.getImgIds()):
            path = osp.join(coco_root, f'{split}2017', img['file_name'])
            with Image.open(path) as im:
                assert im.size == (img['width'], img['height']) == (160, 120)
                assert im.format == 'JPEG' and im.mode == 'RGB'
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img['id']))
            assert anns, 'every image has at least one object'
            for ann in anns:
                x, y, w, h = ann['bbox']
                assert ann['iscrowd'] == 0 and w > 0 and h > 0
                assert 0 <= x and 0 <= y and x + w <= img['width'] and y + h <= img['height']
                assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann['segmentation'])
                mask = coco.annToMask(ann)
                ys, xs = np.nonzero(mask)
                # the polygons rasterise to exactly the visible mask the box and area describe
                assert [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] \
                    == [x, y, w, h]
                assert mask.sum() == ann['area']
                n_anns += 1
        assert n_anns == len(coco.getAnnIds())


def test_coco_mmdet_dataset(coco_root):
    from mmcv.transforms import LoadImageFromFile
    from mmdet.datasets import CocoDataset
    from mmdet.datasets.transforms import LoadAnnotations

    # transforms as objects: no registry default scope is set for the other tests
    ds = CocoDataset(
        data_root=coco_root,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        metainfo=dict(classes=SYNTHETIC_CLASSES),
        test_mode=True,
        pipeline=[LoadImageFromFile(),
                  LoadAnnotations(with_bbox=True, with_mask=True)])
    assert len(ds) == 4 and ds.metainfo['classes'] == SYNTHETIC_CLASSES
    for i in range(len(ds)):
        r = ds[i]
        h, w = r['img'].shape[:2]
        boxes = r['gt_bboxes'].tensor.numpy()
        labels = r['gt_bboxes_labels']
        masks = r['gt_masks'].to_ndarray()
        assert len(boxes) == len(labels) == len(masks) > 0
        assert ((labels >= 0) & (labels < len(SYNTHETIC_CLASSES))).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        for box, mask in zip(boxes, masks):
            ys, xs = np.nonzero(mask)
            np.testing.assert_allclose(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_mask_to_polygons_holes_and_parts():
    import cv2
    from pycocotools import mask as mask_utils
    mask = np.zeros((60, 80), np.uint8)
    cv2.circle(mask, (40, 30), 20, 1, -1)
    cv2.circle(mask, (40, 30), 8, 0, -1)  # a hole (like a ring)
    cv2.circle(mask, (47, 21), 3, 0, -1)  # a second hole
    mask[5:50, 2:8] = 1  # a second part
    polys = mask_to_polygons(mask)
    assert len(polys) == 2
    back = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, 60, 80)))
    assert (back == mask).all()


# ------------------------------------------------------------------------------ ADE20K


def test_ade20k_mmseg_dataset(tmp_path):
    from mmcv.transforms import LoadImageFromFile
    from mmseg.datasets import ADE20KDataset, BaseSegDataset
    from mmseg.datasets.transforms import LoadAnnotations

    root = str(tmp_path / 'ade')
    s = generate_ade20k(root, num_train=3, num_val=2, image_size=(96, 80), object_size=(20, 60))
    assert s['ade20k_classes'] == list(ade20k_class_names(6))
    names = sorted(os.listdir(osp.join(root, 'images', 'training')))
    assert names == [f'ADE_train_{i:08d}.jpg' for i in (1, 2, 3)]
    assert sorted(os.listdir(osp.join(root, 'annotations', 'validation'))) == \
        ['ADE_val_00000001.png', 'ADE_val_00000002.png']
    for name in names:
        with Image.open(osp.join(root, 'annotations', 'training', name[:-4] + '.png')) as im:
            assert im.mode == 'L' and im.size == (96, 80)
            seg = np.asarray(im)
        assert seg.max() <= 6 and (seg == 0).any() and (seg > 0).any()

    pipeline = [LoadImageFromFile(), LoadAnnotations()]
    prefix = dict(img_path='images/training', seg_map_path='annotations/training')
    ade = ADE20KDataset(
        data_root=root,
        data_prefix=prefix,
        pipeline=pipeline,
        metainfo=dict(classes=ade20k_class_names(6)))
    shapes = BaseSegDataset(
        data_root=root,
        data_prefix=prefix,
        pipeline=pipeline,
        img_suffix='.jpg',
        seg_map_suffix='.png',
        reduce_zero_label=True,
        metainfo=dict(classes=SYNTHETIC_CLASSES))
    assert len(ade) == len(shapes) == 3
    for i in range(3):
        raw = np.asarray(Image.open(ade[i]['seg_map_path']))
        for r in (ade[i], shapes[i]):
            gt = r['gt_seg_map']
            assert gt.shape == r['img'].shape[:2] == (80, 96)
            assert set(np.unique(gt)) <= set(range(6)) | {255}
            # reduce_zero_label: 0 (other) -> 255 (ignored), k + 1 -> k
            assert (gt[raw == 0] == 255).all()
            assert (gt[raw > 0] == raw[raw > 0] - 1).all()


# ------------------------------------------------------------------------------ ImageNet


def test_imagenet_mmpretrain_datasets(tmp_path):
    from mmpretrain.datasets import CustomDataset, ImageNet

    root = str(tmp_path / 'imagenet')
    generate_imagenet(root, num_train=12, num_val=6, image_size=(64, 48))
    assert sorted(os.listdir(osp.join(root, 'train'))) == list(SYNTHETIC_CLASSES)
    with open(osp.join(root, 'meta', 'val.txt')) as f:
        lines = f.read().splitlines()
    assert lines[0] == 'circle/circle_000001.JPEG 0' and len(lines) == 6

    for split, num in (('train', 12), ('val', 6)):
        ds = ImageNet(data_root=root, split=split, metainfo=dict(classes=SYNTHETIC_CLASSES))
        assert ds.ann_file.endswith(f'meta/{split}.txt') and len(ds) == num
        scanned = CustomDataset(data_root=root, data_prefix=split)  # folder scan, no meta
        assert scanned.metainfo['classes'] == SYNTHETIC_CLASSES
        by_meta = {d['img_path']: d['gt_label'] for d in ds}
        by_scan = {d['img_path']: d['gt_label'] for d in scanned}
        assert by_meta == by_scan
        for path, label in by_meta.items():
            assert osp.basename(osp.dirname(path)) == SYNTHETIC_CLASSES[label]
            with Image.open(path) as im:
                assert im.size == (64, 48) and im.format == 'JPEG'
        assert sorted(by_meta.values()) == sorted(list(range(6)) * (num // 6))


# ------------------------------------------------------------------------------ idempotence


def test_idempotent(coco_root):
    before = _mtimes(coco_root)
    ino = os.stat(coco_root).st_ino
    s = generate_coco(coco_root, **SMALL_COCO)
    assert s['skipped'] and s['splits']['train']['images'] == 6
    assert _mtimes(coco_root) == before and os.stat(coco_root).st_ino == ino
    assert read_manifest(coco_root)['params']['seed'] == 0


def test_changed_params_regenerate(tmp_path):
    root = str(tmp_path / 'inet')
    generate_imagenet(root, num_train=6, num_val=6, image_size=(48, 48))
    s = generate_imagenet(root, num_train=6, num_val=6, image_size=(48, 48), seed=5)
    assert not s['skipped'] and read_manifest(root)['params']['seed'] == 5
    assert _siblings(root) == []


# ------------------------------------------------------------------------------ atomicity


def _fail_after(monkeypatch, n):
    real, calls = synthetic._write_image, []

    def writer(path, img):
        calls.append(path)
        if len(calls) > n:
            raise RuntimeError('simulated crash')
        real(path, img)

    monkeypatch.setattr(synthetic, '_write_image', writer)


def test_crash_leaves_no_dataset(tmp_path, monkeypatch):
    root = str(tmp_path / 'coco')
    _fail_after(monkeypatch, 3)
    with pytest.raises(RuntimeError, match='simulated crash'):
        generate_coco(root, **SMALL_COCO)
    assert not osp.exists(root) and _siblings(root) == []


def test_crash_keeps_old_complete_dataset(tmp_path, monkeypatch):
    root = str(tmp_path / 'coco')
    generate_coco(root, **SMALL_COCO)
    before = _tree(root)
    _fail_after(monkeypatch, 5)
    with pytest.raises(RuntimeError, match='simulated crash'):
        generate_coco(root, seed=1, **SMALL_COCO)
    assert _tree(root) == before and read_manifest(root)['params']['seed'] == 0
    assert _siblings(root) == []


def test_hard_crash_tmp_dir_cleaned_on_next_run(tmp_path):
    """A process killed mid-write leaves ROOT.tmp-<pid>; ROOT never appears; the next run
    removes the leftover and writes the data set."""
    root = str(tmp_path / 'inet')
    script = ('import importlib.util, os, sys\n'
              'spec = importlib.util.spec_from_file_location("syn", sys.argv[1])\n'
              'syn = importlib.util.module_from_spec(spec); spec.loader.exec_module(syn)\n'
              'real, n = syn._write_image, [0]\n'
              'def writer(path, img):\n'
              '    n[0] += 1\n'
              '    if n[0] > 4: os._exit(3)  # no cleanup, like SIGKILL\n'
              '    real(path, img)\n'
              'syn._write_image = writer\n'
              'syn.generate_imagenet(sys.argv[2], num_train=12, num_val=6, image_size=(48, 48))\n')
    proc = subprocess.run([sys.executable, '-c', script, synthetic.__file__, root])
    assert proc.returncode == 3
    assert not osp.exists(root)
    leftovers = _siblings(root)
    assert len(leftovers) == 1 and leftovers[0].startswith('inet.tmp-')
    assert len(_tree(osp.join(str(tmp_path), leftovers[0]))) > 1  # partial files, no manifest

    s = generate_imagenet(root, num_train=12, num_val=6, image_size=(48, 48))
    assert not s['skipped'] and read_manifest(root) is not None
    assert _siblings(root) == []


def test_replaces_incomplete_root_but_not_foreign_dirs(tmp_path):
    # a root with the generator's sentinel but no manifest: an incomplete run -> replaced
    root = tmp_path / 'coco'
    (root / 'train2017').mkdir(parents=True)
    (root / '.mmdccnext_synthetic').write_text('')
    (root / 'train2017' / 'junk.jpg').write_bytes(b'not a jpeg')
    assert not generate_coco(str(root), **SMALL_COCO)['skipped']
    assert not (root / 'train2017' / 'junk.jpg').exists() and read_manifest(str(root))

    # a folder the generator did not write (e.g. the real COCO) is never replaced silently
    foreign = tmp_path / 'real_coco'
    (foreign / 'annotations').mkdir(parents=True)
    (foreign / 'annotations' / 'instances_train2017.json').write_text('{}')
    with pytest.raises(FileExistsError):
        generate_coco(str(foreign), **SMALL_COCO)
    assert (foreign / 'annotations' / 'instances_train2017.json').read_text() == '{}'
    assert generate_coco(str(foreign), force=True, **SMALL_COCO)['splits']['val']['images'] == 4


# ------------------------------------------------------------------------------ CLI


def test_cli(tmp_path, capsys):
    path = osp.join(REPO, 'tools', 'misc', 'generate_synthetic_data.py')
    spec = importlib.util.spec_from_file_location('generate_synthetic_data', path)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    argv = [
        '--task', 'all', '--out',
        str(tmp_path), '--num-train', '6', '--num-val', '6', '--size', '64', '48'
    ]
    out = cli.main(argv)
    assert sorted(out) == ['ade20k', 'coco', 'imagenet']
    assert sorted(os.listdir(tmp_path)) == ['ade20k', 'coco', 'imagenet']
    assert osp.isfile(tmp_path / 'coco' / 'annotations' / 'instances_val2017.json')
    assert out['ade20k']['splits']['train']['images'] == 6
    assert all(cli.main(argv)[t]['skipped'] for t in out)
    assert 'already complete' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.parse_args(['--size', '64'])
