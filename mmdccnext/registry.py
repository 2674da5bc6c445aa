"""Child registries of MMEngine's roots, scope ``mmdccnext``.

A config under any OpenMMLab default scope (mmdet, mmseg, mmpretrain) reaches these with
``custom_imports=dict(imports=['mmdccnext'])`` and ``type='mmdccnext.Name'``; the
``locations`` let ``register_all_modules`` / lazy lookups import the registering modules.
"""
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import Registry

MODELS = Registry(
    'model',
    parent=MMENGINE_MODELS,
    scope='mmdccnext',
    locations=['mmdccnext.ops', 'mmdccnext.models'])

OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor',
    parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
    scope='mmdccnext',
    locations=['mmdccnext.engine'])

HOOKS = Registry(
    'hook', parent=MMENGINE_HOOKS, scope='mmdccnext',
    locations=['mmdccnext.engine'])
