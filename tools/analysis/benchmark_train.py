"""Training-step images/s: DCCNeXt backbones vs ConvNeXt-T, eager and torch.compile (CPU).

Same process, same threads, same input; interleaved rounds, medians and ratios to
ConvNeXt-T eager and to the same model eager (see :mod:`mmdccnext.analysis.train_benchmark`).

Examples::

    python tools/analysis/benchmark_train.py --threads 1
    python tools/analysis/benchmark_train.py --models DCCNeXt-B2 --modes eager compiled
    python tools/analysis/benchmark_train.py --profile --models DCCNeXt-B2 ConvNeXt-T
"""
import argparse
import json
import os

import torch

from mmdccnext.analysis.train_benchmark import (MODES, TRAIN_MODELS, TRAIN_SETTINGS,
                                                build_train_model, make_batch, run_train_benchmark,
                                                train_breakdown)
from mmdccnext.deployment.benchmark import machine
from mmdccnext.utils.fileio import write_file_atomic


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', nargs='+', default=['DCCNeXt-B2', 'ConvNeXt-T'],
                        choices=TRAIN_MODELS)
    parser.add_argument('--settings', nargs='+', default=['224x224 b16'],
                        choices=list(TRAIN_SETTINGS))
    parser.add_argument('--modes', nargs='+', default=['eager'], choices=MODES)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--repeat', type=int, default=5, help='interleaved rounds (median)')
    parser.add_argument(
        '--min-seconds', type=float, default=1.0, help='minimum duration of one timing')
    parser.add_argument('--json', help='also write all results to this JSON file')
    parser.add_argument(
        '--profile', action='store_true',
        help='instead of timing: where the time of one step goes, by kind of operation')
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeat < 1:
        parser.error('--threads and --repeat must be >= 1')
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f'{machine()}; {os.cpu_count()} CPUs, torch {torch.__version__}')
    if args.profile:
        for name in args.settings:
            setting = TRAIN_SETTINGS[name]
            x = make_batch(setting)
            for model in args.models:
                for mode in args.modes:
                    spent = train_breakdown(build_train_model(model, setting.dense), x, mode)
                    total = spent['total']
                    parts = ', '.join(f'{k} {v:.0f} ms ({100 * v / total:.0f}%)'
                                      for k, v in spent.items() if k != 'total')
                    print(f'{name} | {model} {mode} | total {total:.0f} ms | {parts}',
                          flush=True)
        return
    rows = run_train_benchmark(args.models, args.settings, args.modes, args.threads,
                               args.repeat, args.min_seconds,
                               log=lambda table: print(table + '\n', flush=True))
    if args.json:
        write_file_atomic(args.json, json.dumps(rows, indent=1))


if __name__ == '__main__':
    main()
