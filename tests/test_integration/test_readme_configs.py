"""The README's "Using it from OpenMMLab configs" snippets, as printed, over the libraries'
own base configs: each builds and trains one iteration (on tiny synthetic data in the
formats those bases read), and the gradient reaches the DCCNeXt backbone."""
import math
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from synthetic_helpers import TINY

from mmdccnext.models import DCCNeXt

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SYNTHETIC_CLASSES = ('circle', 'cross', 'ring', 'square', 'star', 'triangle')


def readme_snippets():
    """``{library: code}`` of the README's config blocks, found by their ``_base_``."""
    with open(osp.join(REPO, 'README.md'), encoding='utf-8') as f:
        blocks = re.findall(r'^```python\n(.*?)^```', f.read(), flags=re.S | re.M)
    snippets = {}
    for block in blocks:
        match = re.search(r"^_base_ = '(mmdet|mmseg|mmpretrain)::", block, flags=re.M)
        if match:
            assert match.group(1) not in snippets, f'two README snippets over {match.group(1)}'
            snippets[match.group(1)] = block
    return snippets


def test_readme_has_a_snippet_per_library():
    assert set(readme_snippets()) == {'mmdet', 'mmseg', 'mmpretrain'}


def _on_tiny_data(cfg, root):
    """The harness, not the snippet: the base's data sections pointed at the tiny synthetic
    set, small images, one iteration, no validation."""
    task = {'mmdet': 'coco', 'mmseg': 'ade20k', 'mmpretrain': 'imagenet'}[cfg.default_scope]
    loader = cfg.train_dataloader
    loader.update(batch_size=2, num_workers=0, persistent_workers=False)
    dataset = loader.dataset
    dataset.data_root = str(root / task)
    if task == 'coco':  # CocoDataset keeps only annotations of its classes
        dataset.metainfo = dict(classes=SYNTHETIC_CLASSES)
        for transform in dataset.pipeline:
            if transform['type'] == 'Resize':
                transform['scale'] = TINY['coco']['image_size']
    elif task == 'ade20k':
        crop = (96, 96)
        cfg.model.data_preprocessor['size'] = crop
        for transform in dataset.pipeline:
            if transform['type'] == 'RandomResize':
                transform['scale'] = (256, 128)
            if transform['type'] == 'RandomCrop':
                transform['crop_size'] = crop
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=1, val_interval=1000)
    cfg.param_scheduler = []
    for phase in ('val', 'test'):
        for key in (f'{phase}_dataloader', f'{phase}_evaluator', f'{phase}_cfg'):
            cfg[key] = None
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=-1)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.randomness = dict(seed=0)
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize('library', ['mmdet', 'mmseg', 'mmpretrain'])
def test_readme_snippet_trains_one_iteration(library, synthetic_root, tmp_path):
    config = tmp_path / f'readme_{library}.py'
    config.write_text(readme_snippets()[library])
    cfg = _on_tiny_data(Config.fromfile(str(config)), synthetic_root)
    cfg.work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(cfg)
    backbone = runner.model.backbone
    assert isinstance(backbone, DCCNeXt)
    before = {k: v.detach().clone() for k, v in backbone.named_parameters()}

    runner.train()

    loss = runner.message_hub.get_scalar('train/loss').current()
    assert math.isfinite(loss)
    changed = [k for k, v in backbone.named_parameters() if not torch.equal(v, before[k])]
    # the first stage and the last one both learn: the head's loss reaches the whole backbone
    assert any(k.startswith('stages.0.') for k in changed), changed
    assert any(k.startswith('stages.3.') for k in changed), changed
