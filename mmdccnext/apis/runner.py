"""The logic behind ``tools/train.py`` and ``tools/test.py``: one entry for all tasks.

The task is the config's ``default_scope`` (mmpretrain, mmdet or mmseg); MMEngine's Runner
builds everything from the matching registries.
"""
import os
import os.path as osp

from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmdccnext.utils.version_check import check_mmcv
from .data_check import check_data_roots
from .dist import setup_cpu_distributed

TASKS = ('mmpretrain', 'mmdet', 'mmseg')


def load_config(config, cfg_options=None, work_dir=None, launcher='none'):
    """Read a config, apply ``--cfg-options``, and settle the launcher and work dir."""
    if not osp.isfile(config):
        raise FileNotFoundError(f'config: no such file {config!r}')
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope')
    if scope not in TASKS:
        raise ValueError(f'config: default_scope must be one of {TASKS} (it picks the '
                         f'task), got {scope!r} in {config}')
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    return cfg


def enable_amp(cfg):
    optim_wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if optim_wrapper == 'AmpOptimWrapper':
        print_log('AMP training is already enabled in the config.', logger='current')
        return
    if optim_wrapper != 'OptimWrapper':
        raise ValueError(f'--amp: needs optim_wrapper.type OptimWrapper, got {optim_wrapper}')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')


def prepare_runner(cfg, args, loaders):
    """Check mmcv's ops (detection, segmentation) and the data of ``loaders``, settle the
    (CPU) distributed set-up, build the Runner."""
    if cfg.default_scope in ('mmdet', 'mmseg'):
        check_mmcv(require_ops=True)  # their models need mmcv's compiled ops
    check_data_roots(cfg, loaders, args.config)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    setup_cpu_distributed(cfg)
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def train_from_args(args):
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    if args.amp:
        enable_amp(cfg)
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    if getattr(args, 'auto_scale_lr', False):
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise ValueError('--auto-scale-lr: the config has no auto_scale_lr.base_batch_size')
        cfg.auto_scale_lr.enable = True
    runner = prepare_runner(cfg, args, ('train_dataloader', 'val_dataloader'))
    runner.train()
    return runner


def enable_show_dir(cfg, show_dir):
    """Turn on the task's visualisation hook, writing pictures to ``show_dir``."""
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise ValueError('--show-dir: the config has no default_hooks.visualization')
    vis = hooks.visualization
    if cfg.default_scope == 'mmpretrain':
        vis.update(enable=True, out_dir=show_dir)
    else:  # mmdet and mmseg hooks share the keys
        vis.update(draw=True, test_out_dir=show_dir)
        vis.setdefault('wait_time', 0)


def add_dump_metric(cfg, out):
    if not out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out: expected a .pkl or .pickle path, got {out!r}')
    dump_type = 'DumpDetResults' if cfg.default_scope == 'mmdet' else 'DumpResults'
    dump = dict(type=dump_type, out_file_path=out)
    evaluator = cfg.test_evaluator
    if isinstance(evaluator, (list, tuple)):
        cfg.test_evaluator = [*evaluator, dump]
    else:
        cfg.test_evaluator = [evaluator, dump]


def test_from_args(args):
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    cfg.load_from = args.checkpoint
    cfg.resume = False
    if args.show_dir:
        enable_show_dir(cfg, args.show_dir)
    if args.out:
        add_dump_metric(cfg, args.out)
    runner = prepare_runner(cfg, args, ('test_dataloader', ))
    return runner.test()
