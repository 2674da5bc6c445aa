"""One DCConv layer exported to ONNX and run in ONNX Runtime, next to the eager layer.

For every map size N = H * W: the extra peak memory of a forward pass (each side in a fresh
process) and its time (both in this process, interleaved rounds, median ratio), 1 thread by
default. See :mod:`mmdccnext.deployment.benchmark`.

Example::

    python tools/deployment/benchmark_export_layer.py --channels 160 --kernel-size 12 \\
        --sizes 1000 2000 4000 8000 10000 16000
"""
import argparse
import os.path as osp
import tempfile

from mmdccnext.deployment.benchmark import (LAYER_HEADER, compare_dcconv_layer, export_dcconv_layer,
                                            machine)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--channels', type=int, default=160, help='C (default 160)')
    parser.add_argument('--kernel-size', type=int, default=12, help='K (default 12)')
    parser.add_argument(
        '--sizes', type=int, nargs='+', default=[1000, 2000, 4000, 8000, 10000, 16000],
        help='numbers of patches N')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--repeat', type=int, default=3, help='interleaved rounds (median)')
    parser.add_argument('--min-seconds', type=float, default=1.0,
                        help='minimum duration of one timing')
    parser.add_argument('--onnx', help='where to write the exported layer (default: a '
                        'temporary file)')
    args = parser.parse_args(argv)
    if args.channels < 1 or args.kernel_size < 1 or args.threads < 1 or args.repeat < 1:
        parser.error('--channels, --kernel-size, --threads and --repeat must be >= 1')
    if min(args.sizes) < args.kernel_size + 3:
        parser.error(f'--sizes must be >= kernel size + 3 = {args.kernel_size + 3} (the '
                     'exported clustering needs that many patches)')
    return args


def main(argv=None):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.onnx or osp.join(tmp, 'dcconv.onnx')
        export_dcconv_layer(args.channels, args.kernel_size, path)
        import torch
        torch.set_num_threads(args.threads)
        print(f'DCConv C={args.channels}, K={args.kernel_size}; {machine()}')
        print(LAYER_HEADER)
        compare_dcconv_layer(args.channels, args.kernel_size, args.sizes, path, args.threads,
                             args.repeat, args.min_seconds)


if __name__ == '__main__':
    main()
