"""Mean |weight| per kernel tap of every DCConv block (paper Fig. 4), as a PNG.

Example::

    python tools/analysis/visualize_kernels.py \\
        configs/classification/dccnext-b2_8xb128_in1k.py CHECKPOINT --out kernels.png

Tap k weighs the k-th member of a cluster (0: the patch itself, then nearest first). Left: a
heat map of all DCConv blocks; right: line plots of ``--blocks`` (default: the first DCConv
block of each DCConv stage). Without a checkpoint the picture shows the initialisation.
"""
import argparse

from mmengine.config import DictAction

from mmdccnext.apis.cli import check_positionals, run
from mmdccnext.visualization import plot_kernel_profiles_from_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Plot DCConv kernel-tap profiles')
    parser.add_argument('config', help='classification, detection or segmentation config')
    parser.add_argument('checkpoint', nargs='?', default=None,
                        help='checkpoint (path, zoo://name or URL); omit for the '
                        'initialisation')
    parser.add_argument('--out', required=True, help='output PNG')
    parser.add_argument('--blocks', nargs='+', default=None,
                        help='blocks for the line plots, e.g. stages.2.0 stages.3.0')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random initialisation')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    run(check_positionals, 'visualize_kernels.py CONFIG [CHECKPOINT] --out OUT',
        config=args.config, checkpoint=args.checkpoint)
    profiles = run(lambda: plot_kernel_profiles_from_config(
        args.config, args.out, checkpoint=args.checkpoint, blocks=args.blocks,
        cfg_options=args.cfg_options, seed=args.seed))
    for name, profile in profiles.items():
        print(f'{name}: ' + ' '.join(f'{v:.4f}' for v in profile)
              + f'  (tap 0 / mean of the others: {profile[0] / profile[1:].mean():.2f})')
    print(f'wrote {args.out}')
    return profiles


if __name__ == '__main__':
    main()
