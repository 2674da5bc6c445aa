"""Model-zoo names as checkpoint paths: ``zoo://<metafile model name>``.

Configs name their pretrained weights by zoo name (``zoo://dccnext-b2_8xb128_in1k``);
MMEngine's ``CheckpointLoader`` dispatches that scheme here. The name is looked up in the
``metafile.yml`` files of the configs; an entry without ``Weights`` (no checkpoint has
been released) gives one clear error saying how to get weights.
"""
import glob
import os.path as osp

from mmengine.fileio import load
from mmengine.runner.checkpoint import CheckpointLoader

ZOO_PREFIX = 'zoo://'


class NoWeightsError(FileNotFoundError):
    pass


def configs_root():
    """``configs/`` of a source checkout, or the copy mim packages as ``mmdccnext/.mim``."""
    package = osp.dirname(osp.dirname(osp.abspath(__file__)))
    candidates = (osp.join(package, '.mim', 'configs'),
                  osp.join(osp.dirname(package), 'configs'))
    for root in candidates:
        if osp.isdir(root):
            return root
    raise FileNotFoundError(f'no configs/ folder next to {package}')


def model_index(root=None):
    """``{name: metafile entry}`` over every ``configs/**/metafile.yml``."""
    root = root or configs_root()
    entries = {}
    for metafile in sorted(glob.glob(osp.join(root, '**', 'metafile.yml'), recursive=True)):
        for model in load(metafile).get('Models', []):
            entries[model['Name']] = model
    return entries


def lookup(name, root=None):
    models = model_index(root)
    if name not in models:
        raise KeyError(f'{ZOO_PREFIX}{name}: no model of that name in the model zoo; known '
                       f'names: {", ".join(sorted(models))}')
    return models[name]


def load_from_zoo(filename, map_location=None):
    name = filename[len(ZOO_PREFIX):]
    model = lookup(name)
    weights = model.get('Weights')
    if not weights:
        config = model.get('Config', 'its config')
        raise NoWeightsError(
            f'{filename}: no checkpoint of {name} has been released yet. Train it with '
            f'`python tools/train.py {config}`, then pass the file, e.g. '
            f'--cfg-options model.backbone.init_cfg.checkpoint=work_dirs/.../epoch_300.pth '
            f'(or model.backbone.init_cfg=None to start from scratch).')
    return CheckpointLoader.load_checkpoint(weights, map_location=map_location)


def register_zoo_loader():
    CheckpointLoader.register_scheme(prefixes=ZOO_PREFIX, force=True)(load_from_zoo)
