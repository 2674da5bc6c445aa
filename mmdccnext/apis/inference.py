"""One way to build a model of ours: a config (file, ``Config`` or model-zoo name) and weights.

:func:`init_model` hands the building to the library the config's ``default_scope`` names:
MMPretrain's ``mmpretrain.apis.init_model``, MMDetection's ``mmdet.apis.init_detector`` or
MMSegmentation's ``mmseg.apis.init_model``; so a model built here is what those libraries'
own tools and Inferencers would build. The FLOP counter, the ONNX exporter and the
visualisation tools all build their models here.
"""
import copy
import logging
import os
import os.path as osp
import warnings

import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.runner import load_checkpoint

from mmdccnext.utils.version_check import check_mmcv
from .cli import check_positionals
from .zoo import find_entry, model_index_file

#: The config's ``default_scope`` -> the library function that builds its model.
BUILDERS = {
    'mmpretrain': ('mmpretrain.apis', 'init_model'),
    'mmdet': ('mmdet.apis', 'init_detector'),
    'mmseg': ('mmseg.apis', 'init_model'),
}


def config_file(name):
    """The config file of the model-zoo entry ``name`` (``zoo://`` optional)."""
    index = model_index_file()
    entry = find_entry(name, index)  # KeyError naming the known models
    return osp.join(osp.dirname(index), entry['Config'])


def get_config(config, cfg_options=None):
    """A ``Config`` from a config file, a ``Config`` (copied) or a model-zoo name."""
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)  # the overrides below must not reach the caller's
    elif isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if not osp.isfile(path):
            if path.endswith('.py'):
                raise FileNotFoundError(f'config: no such file {path!r}')
            path = config_file(path)
        cfg = Config.fromfile(path)
    else:
        raise TypeError(f'config must be a path, a Config or a model-zoo name, got '
                        f'{type(config).__name__}')
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def drop_pretrained(cfg):
    """Remove every ``init_cfg`` of type ``Pretrained`` (in place): the weights come from
    the ``checkpoint`` argument only, and building never downloads anything."""
    if isinstance(cfg, dict):
        init = cfg.get('init_cfg')
        if isinstance(init, dict) and init.get('type') == 'Pretrained':
            cfg.pop('init_cfg')
        for value in cfg.values():
            drop_pretrained(value)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            drop_pretrained(value)
    return cfg


def _library_builder(scope):
    import importlib
    module, name = BUILDERS[scope]
    return getattr(importlib.import_module(module), name)


def quiet_init_weights(model):
    """``model.init_weights()`` without MMEngine's INFO line per parameter."""
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # init_weights reports every parameter at INFO level
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)


def init_model(config, checkpoint=None, device='cpu', cfg_options=None, *, seed=None,
               init_weights=True, strict=False):
    """Build the classifier, detector or segmentor of ``config`` in eval mode.

    Args:
        config (str | Config): a config file, a ``Config`` or a model-zoo name
            (``'dccnext-b0_8xb128_in1k'``, ``'retinanet_dccnext_b2'``, ...).
        checkpoint (str, optional): weights: a local file, an http(s) URL or
            ``zoo://<name>``, loaded with MMEngine's ``load_checkpoint`` (``strict`` as
            given); the checkpoint's ``meta.dataset_meta`` becomes ``model.dataset_meta``.
            ``None``: no weights are loaded.
        device (str | torch.device): where the model goes.
        cfg_options (dict, optional): overrides merged into the config.
        seed (int, optional): ``torch.manual_seed`` before building, for a reproducible
            random initialisation.
        init_weights (bool): without a checkpoint, run the config's initialisation
            (``model.init_weights()``); ``False`` keeps PyTorch's default initialisation
            (enough for counting parameters and FLOPs, and faster).
        strict (bool): passed to ``load_checkpoint``.

    ``init_cfg`` entries of type ``Pretrained`` are dropped before building (weights come
    from ``checkpoint`` only). Detection and segmentation models need mmcv's compiled ops,
    which are checked first. Returns the model, with the config as ``model.cfg``.
    """
    # checked before the (slow) build; e.g. a tool's positional arguments in another order
    check_positionals('init_model(config, checkpoint=None, ...)', checkpoint=checkpoint,
                      config=config if isinstance(config, (str, os.PathLike)) else None)
    if checkpoint is not None and not (osp.isfile(checkpoint) or '://' in checkpoint):
        raise FileNotFoundError(f'checkpoint: no such file {checkpoint!r}')
    cfg = get_config(config, cfg_options)
    scope = cfg.get('default_scope')
    if scope not in BUILDERS:
        raise ValueError(f'config: default_scope must be one of {tuple(BUILDERS)} (it picks '
                         f'the library that builds the model), got {scope!r}')
    if scope in ('mmdet', 'mmseg'):
        check_mmcv(require_ops=True)
    drop_pretrained(cfg.model)
    # as MMEngine's Runner: a top-level data_preprocessor (mmpretrain configs) is the model's
    if cfg.get('data_preprocessor') is not None:
        cfg.model.setdefault('data_preprocessor', cfg.data_preprocessor)
    if seed is not None:
        torch.manual_seed(seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        # weights are loaded below, the same way for the three libraries
        model = _library_builder(scope)(cfg, checkpoint=None, device='cpu')
    for w in caught:  # init_detector's "checkpoint is None, use COCO classes" is not news
        if 'checkpoint is None' not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if checkpoint is None:
        if init_weights:
            quiet_init_weights(model)
    else:
        loaded = load_checkpoint(model, checkpoint, map_location='cpu', strict=strict,
                                 logger='current')
        dataset_meta = (loaded.get('meta') or {}).get('dataset_meta') \
            if isinstance(loaded, dict) else None
        if dataset_meta:
            model.dataset_meta = dataset_meta
    model.cfg = cfg
    return model.to(device).eval()
