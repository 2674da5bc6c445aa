"""The logic behind ``tools/train.py`` and ``tools/test.py``: one entry for all tasks.

The task is the config's ``default_scope`` (mmpretrain, mmdet or mmseg); MMEngine's Runner
builds everything from the matching registries.
"""
import glob
import logging
import os
import os.path as osp
import re

from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import RUNNERS
from mmengine.runner import Runner, find_latest_checkpoint

from mmdccnext.utils.checkpoint import CheckpointError, diagnose_checkpoint_file
from mmdccnext.utils.version_check import check_mmcv
from .cli import ArgumentError, check_positionals
from .data_check import check_data_roots
from .dist import setup_cpu_distributed
from .zoo import ZOO_PREFIX, UnknownModelError, lookup

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
        raise ArgumentError(f'config: default_scope must be one of {TASKS} (it picks the '
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
        raise ArgumentError(f'--amp: needs optim_wrapper.type OptimWrapper, got {optim_wrapper}')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')


def prepare_runner(cfg, args, data_keys):
    """Check mmcv's ops (detection, segmentation) and the data of the loaders and
    evaluators in ``data_keys``, settle the (CPU) distributed set-up, build the Runner."""
    if cfg.default_scope in ('mmdet', 'mmseg'):
        check_mmcv(require_ops=True)  # their models need mmcv's compiled ops
    check_data_roots(cfg, data_keys, args.config)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    setup_cpu_distributed(cfg)
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def _step(path):
    match = re.fullmatch(r'(?:epoch|iter)_(\d+)\.pth', osp.basename(path))
    return int(match.group(1)) if match else None


def resume_checkpoint(work_dir):
    """The checkpoint ``--resume`` continues from: the one ``last_checkpoint`` names or,
    when that one is missing or damaged, the newest complete ``epoch_*``/``iter_*`` checkpoint
    beside it (with a warning saying so). None when the work dir has no ``last_checkpoint``
    (training starts from the beginning, as MMEngine does); :class:`CheckpointError` when
    no checkpoint there is complete."""
    latest = find_latest_checkpoint(work_dir)
    if latest is None:
        return None
    folder = osp.dirname(latest)
    others = sorted((p for p in glob.glob(osp.join(folder, '*.pth'))
                     if _step(p) is not None and p != latest), key=_step, reverse=True)
    damaged = []
    for path in [latest, *others]:
        reason = diagnose_checkpoint_file(path) if osp.isfile(path) else 'the file is missing'
        if reason is None:
            if not damaged:
                print_log(f'--resume: resuming from {path}', logger='current')
            else:
                print_log(f'--resume: the latest checkpoint {latest} (named by '
                          f'{osp.join(work_dir, "last_checkpoint")}) is damaged: {damaged[0][1]}; '
                          f'resuming from {path}, the newest complete checkpoint in {folder}',
                          logger='current', level=logging.WARNING)
            return path
        damaged.append((path, reason))
    raise CheckpointError(
        f'--resume: no complete checkpoint in {folder} to resume from: '
        + '; '.join(f'{path}: {reason}' for path, reason in damaged)
        + '. Keeping more than one (default_hooks.checkpoint.max_keep_ckpts) leaves an older '
        'one to fall back to; otherwise start again without --resume.')


def train_from_args(args):
    check_positionals('tools/train.py CONFIG [options]', config=args.config)
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    if args.amp:
        enable_amp(cfg)
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = resume_checkpoint(cfg.work_dir)
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    if getattr(args, 'auto_scale_lr', False):
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise ArgumentError('--auto-scale-lr: the config has no auto_scale_lr.base_batch_size')
        cfg.auto_scale_lr.enable = True
    data_keys = ['train_dataloader']
    if cfg.get('val_cfg') is not None:  # MMEngine builds the val loader and evaluator only then
        data_keys += ['val_dataloader', 'val_evaluator']
    runner = prepare_runner(cfg, args, data_keys)
    runner.train()
    return runner


def enable_show_dir(cfg, show_dir):
    """Turn on the task's visualisation hook, drawing every test image into ``show_dir``.

    The path is made absolute first: mmdet's hook puts a relative one under
    ``<work_dir>/<timestamp>/``. mmseg's hook has no folder of its own; as in mmseg's
    ``tools/test.py`` the visualizer's ``save_dir`` is set, whose local backend writes to
    ``<show_dir>/vis_data/vis_image/``.
    """
    show_dir = osp.abspath(show_dir)
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise ArgumentError('--show-dir: the config has no default_hooks.visualization')
    vis = hooks.visualization
    vis.interval = 1  # every image, not every 50th (mmseg) or 5000th (mmpretrain)
    if cfg.default_scope == 'mmpretrain':
        vis.update(enable=True, out_dir=show_dir)
    elif cfg.default_scope == 'mmdet':
        vis.update(draw=True, test_out_dir=show_dir)
        vis.setdefault('wait_time', 0)
    else:
        vis.update(draw=True)
        cfg.visualizer.save_dir = show_dir


def add_dump_metric(cfg, out):
    if not out.endswith(('.pkl', '.pickle')):
        raise ArgumentError(f'--out: expected a .pkl or .pickle path, got {out!r}')
    dump_type = 'DumpDetResults' if cfg.default_scope == 'mmdet' else 'DumpResults'
    dump = dict(type=dump_type, out_file_path=out)
    evaluator = cfg.test_evaluator
    if isinstance(evaluator, (list, tuple)):
        cfg.test_evaluator = [*evaluator, dump]
    else:
        cfg.test_evaluator = [evaluator, dump]


def checkpoint_source(checkpoint):
    """A file, an http(s) or ``zoo://`` URL, or a bare model-zoo name (made ``zoo://``)."""
    if osp.isfile(checkpoint) or '://' in checkpoint:
        return checkpoint
    try:
        lookup(checkpoint)
    except UnknownModelError as error:
        raise FileNotFoundError(f'checkpoint: {checkpoint!r} is no file, no URL and no '
                                f'model-zoo name ({error})') from None
    return ZOO_PREFIX + checkpoint


def check_key_match(model, checkpoint, source):
    """Refuse a checkpoint none of whose keys are the model's (its score would be that of
    random weights); warn with the share matched when some of the model's are missing."""
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else {}
    keys = {re.sub(r'^module\.', '', k) for k in state}  # as MMEngine's revise_keys
    model = model.module if is_model_wrapper(model) else model
    wanted = set(model.state_dict())
    matched = keys & wanted
    if not matched:
        raise ArgumentError(
            f'checkpoint {source}: none of its {len(keys)} keys (e.g. {sorted(keys)[:3]}) is a '
            f'key of the model ({len(wanted)} keys, e.g. {sorted(wanted)[:3]}): it is not a '
            f'checkpoint of this config, and testing it would score random weights')
    missing = sorted(wanted - keys)
    if missing:
        print_log(f'checkpoint {source} has {len(matched)} of the model\'s {len(wanted)} keys '
                  f'({len(matched) / len(wanted):.1%}); the others keep their initial values, '
                  f'e.g. {missing[:5]}', logger='current', level=logging.WARNING)
    return len(matched) / len(wanted)


def test_from_args(args):
    check_positionals('tools/test.py CONFIG CHECKPOINT', config=args.config,
                      checkpoint=args.checkpoint)
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    source = checkpoint_source(args.checkpoint)
    cfg.load_from = None  # loaded below, so that its keys can be checked
    cfg.resume = False
    if args.show_dir:
        enable_show_dir(cfg, args.show_dir)
    if args.out:
        add_dump_metric(cfg, args.out)
    runner = prepare_runner(cfg, args, ('test_dataloader', 'test_evaluator'))
    checkpoint = runner.load_checkpoint(source, map_location='cpu')
    check_key_match(runner.model, checkpoint, source)
    return runner.test()
