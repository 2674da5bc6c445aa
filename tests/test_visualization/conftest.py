import os.path as osp

import pytest
from mmengine.config import Config
from vis_helpers import REPO, photo

from mmdccnext.visualization import build_test_transforms, model_for_pictures

CLS_CONFIG = osp.join(REPO, 'configs/classification/dccnext-b0_synthetic.py')


@pytest.fixture(scope='session')
def image():
    """The photograph at 301x237 (W x H)."""
    return photo(301, 237)


@pytest.fixture(scope='session')
def cls_cfg():
    return Config.fromfile(CLS_CONFIG)


@pytest.fixture(scope='session')
def cls_model(cls_cfg):
    """The synthetic-data B0 classifier, randomly initialised, and its test transforms."""
    model = model_for_pictures(cls_cfg)
    cfg = model.cfg
    return model, build_test_transforms(cfg)
