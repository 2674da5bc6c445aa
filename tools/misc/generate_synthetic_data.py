"""Write the synthetic COCO / ADE20K / ImageNet data sets (see mmdccnext.datasets.synthetic).

Examples::

    python tools/misc/generate_synthetic_data.py                     # all three, defaults
    python tools/misc/generate_synthetic_data.py --task coco --num-train 300 --num-val 50
    python tools/misc/generate_synthetic_data.py --task ade20k --size 256 256
    python tools/misc/generate_synthetic_data.py --task coco --size 192 160 320 240  # random size

Each task goes to ``<out>/<task>`` (``data/synthetic/coco`` etc.). A data set that is already
complete with the same parameters is left as it is (``--force`` regenerates it).
"""
import argparse
import os.path as osp

from mmdccnext.datasets import DEFAULTS, generate

TASKS = ('coco', 'ade20k', 'imagenet')


def _defaults(key):
    return ', '.join(f'{t} {DEFAULTS[t][key]}' for t in TASKS).replace('%', '%%')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Generate synthetic data sets')
    parser.add_argument('--task', choices=TASKS + ('all', ), default='all')
    parser.add_argument(
        '--out',
        default='data/synthetic',
        help='parent folder; each task is written to <out>/<task>')
    parser.add_argument(
        '--num-train', type=int, help=f'training images (default: {_defaults("num_train")})')
    parser.add_argument(
        '--num-val', type=int, help=f'validation images (default: {_defaults("num_val")})')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--size',
        type=int,
        nargs='+',
        metavar='N',
        help='image size "W H", or a random-size range "WMIN HMIN WMAX HMAX" '
        f'(default: {_defaults("image_size")})')
    parser.add_argument('--force', action='store_true', help='regenerate even if complete')
    args = parser.parse_args(argv)
    if args.size is not None and len(args.size) not in (2, 4):
        parser.error('--size takes 2 (W H) or 4 (WMIN HMIN WMAX HMAX) integers')
    return args


def main(argv=None):
    args = parse_args(argv)
    tasks = TASKS if args.task == 'all' else (args.task, )
    size = None if args.size is None else (tuple(args.size) if len(args.size) == 2 else
                                           (tuple(args.size[:2]), tuple(args.size[2:])))
    summaries = {}
    for task in tasks:
        s = generate(
            task,
            osp.join(args.out, task),
            num_train=args.num_train,
            num_val=args.num_val,
            image_size=size,
            seed=args.seed,
            force=args.force)
        counts = ', '.join(f'{k}: {v["images"]} images' +
                           (f' / {v["instances"]} instances' if 'instances' in v else '')
                           for k, v in s['splits'].items())
        state = 'already complete' if s['skipped'] else 'written'
        print(f'[synthetic] {task}: {s["root"]} ({state}; {counts}; '
              f'classes {", ".join(s["classes"])})')
        summaries[task] = s
    return summaries


if __name__ == '__main__':
    main()
