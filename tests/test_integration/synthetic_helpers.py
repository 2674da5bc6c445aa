"""Tiny synthetic data sets in the real formats, and configs pointed at them."""
import os.path as osp

from mmengine.config import Config

import mmdccnext  # noqa: F401
from mmdccnext.datasets import generate

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

TINY = {
    'coco': dict(num_train=16, num_val=8, image_size=(128, 96), object_size=(20, 48)),
    'ade20k': dict(num_train=16, num_val=4, image_size=(128, 128), object_size=(24, 64)),
    'imagenet': dict(num_train=48, num_val=12, image_size=(64, 64)),
}


def make_tiny_datasets(root):
    for task, kwargs in TINY.items():
        generate(task, str(root / task), seed=0, **kwargs)
    return root


def tiny_config(name, synthetic_root, work_dir, **options):
    """A ``*_synthetic.py`` config on the tiny data set, small and quick, in ``work_dir``."""
    cfg = Config.fromfile(osp.join(REPO, 'configs', name))
    task = {'mmdet': 'coco', 'mmseg': 'ade20k', 'mmpretrain': 'imagenet'}[cfg.default_scope]
    root = str(synthetic_root / task)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader]['dataset']['data_root'] = root
        cfg[loader]['num_workers'] = 0
        cfg[loader]['persistent_workers'] = False
    if task == 'coco':
        ann = osp.join(root, 'annotations', 'instances_val2017.json')
        cfg.val_evaluator['ann_file'] = ann
        cfg.test_evaluator['ann_file'] = ann
    if task == 'coco':  # the tiny images need no upscaling
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            for transform in cfg[loader]['dataset']['pipeline']:
                if transform['type'] == 'Resize':
                    transform['scale'] = TINY['coco']['image_size']
    cfg.work_dir = str(work_dir)
    cfg.merge_from_dict(options)
    return cfg
