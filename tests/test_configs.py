"""Every config in configs/ builds its model and its data pipelines."""
import glob
import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.registry import init_default_scope

import mmdccnext  # noqa: F401

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(
    osp.relpath(p, REPO) for p in glob.glob(osp.join(REPO, 'configs', '*', '*.py')))


def test_every_task_has_configs():
    folders = {osp.basename(osp.dirname(c)) for c in CONFIGS}
    assert folders == {'classification', 'detection', 'segmentation'}


@pytest.mark.parametrize('config', CONFIGS)
def test_config_builds_model_and_pipelines(config):
    cfg = Config.fromfile(osp.join(REPO, config))
    scope = cfg.default_scope
    assert scope in ('mmpretrain', 'mmdet', 'mmseg')
    assert cfg.custom_imports['imports'] == ['mmdccnext']
    assert cfg.model.backbone.type == 'mmdccnext.DCCNeXt'
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS', 'TRANSFORMS'])
    model = registry.MODELS.build(cfg.model)
    assert sum(p.numel() for p in model.parameters()) > 0
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        pipeline = cfg[loader]['dataset']['pipeline']
        transforms = Compose(
            [registry.TRANSFORMS.build(t) if isinstance(t, dict) else t for t in pipeline])
        assert len(transforms.transforms) == len(pipeline)


@pytest.mark.parametrize('config', [c for c in CONFIGS if c.endswith(('_b2.py', 'in1k.py'))])
def test_real_configs_point_pretrained_weights_at_the_zoo(config):
    cfg = Config.fromfile(osp.join(REPO, config))
    if cfg.default_scope == 'mmpretrain':
        return  # the ImageNet configs train from scratch
    assert cfg.model.backbone.init_cfg.checkpoint.startswith('zoo://dccnext-')
    assert cfg.model.backbone.init_cfg.prefix == 'backbone.'
