"""Train any mmdccnext config (classification, detection or segmentation) with MMEngine.

The task comes from the config's ``default_scope`` (mmpretrain / mmdet / mmseg); this entry
is the same for all three, and the configs also run under those libraries' own
``tools/train.py`` and ``mim train``.
"""
import argparse

from mmengine.config import DictAction

from mmdccnext.apis import train_from_args
from mmdccnext.apis.cli import run


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a DCCNeXt model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='directory for logs and checkpoints')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from the given checkpoint, or from the latest one in the work dir '
        'when no path is given')
    parser.add_argument('--amp', action='store_true', help='mixed-precision training')
    parser.add_argument(
        '--auto-scale-lr', action='store_true',
        help='scale the LR by the actual total batch size (config: auto_scale_lr)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, default={},
        help='override config entries, e.g. train_cfg.max_iters=10')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    run(train_from_args, parse_args(argv))


if __name__ == '__main__':
    main()
