"""Modules registered under scope ``mmdccnext`` build from the downstream registries."""
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmdccnext  # noqa: F401
from mmdccnext.registry import MODELS


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', 'mmpretrain'])
def test_build_by_scoped_type_from_downstream_registry(scope):
    registry = {
        'mmdet': 'mmdet.registry',
        'mmseg': 'mmseg.registry',
        'mmpretrain': 'mmpretrain.registry'
    }[scope]
    downstream_models = __import__(registry, fromlist=['MODELS']).MODELS
    init_default_scope(scope)
    op = downstream_models.build(dict(type='mmdccnext.DCConv', channels=16, kernel_size=4))
    assert type(op) is MODELS.get('DCConv')
    y = op(torch.randn(1, 16, 5, 6))
    assert y.shape == (1, 16, 5, 6)


def test_custom_imports_in_a_config(tmp_path):
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text("custom_imports = dict(imports=['mmdccnext'], "
                        "allow_failed_imports=False)\n"
                        "default_scope = 'mmdet'\n"
                        "op = dict(type='mmdccnext.DCConv', channels=8, kernel_size=3)\n")
    cfg = Config.fromfile(str(cfg_file))
    from mmdet.registry import MODELS as MMDET_MODELS
    init_default_scope(cfg.default_scope)
    assert MMDET_MODELS.build(cfg.op).weight.shape == (3, 8)


def test_register_all_modules_sets_scope():
    from mmengine import DefaultScope

    from mmdccnext.utils import register_all_modules
    register_all_modules()
    assert DefaultScope.get_current_instance().scope_name == 'mmdccnext'
    assert MODELS.get('DCConv') is not None
