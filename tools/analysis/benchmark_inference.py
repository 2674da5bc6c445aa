"""Inference images/s and memory: DCCNeXt-B0/B1/B2 vs ConvNeXt-T and ResNet-50 (CPU).

Backbones in PyTorch eager and ONNX Runtime, and whole models (RetinaNet, Mask R-CNN, Semantic
FPN with DCCNeXt-B2 against the same config with ConvNeXt-T, through the libraries' inference
APIs): every model built as the libraries build it, same process, same threads, same input;
interleaved rounds, medians and ratios to ConvNeXt-T (see
:mod:`mmdccnext.analysis.inference_benchmark`).

Examples::

    python tools/analysis/benchmark_inference.py --threads 2 --repeat 5
    python tools/analysis/benchmark_inference.py --models DCCNeXt-B2 ConvNeXt-T \\
        --settings "224x224 b32" --engines torch --no-memory
    python tools/analysis/benchmark_inference.py --profile --models DCCNeXt-B2 ConvNeXt-T \\
        --settings "1280x800 b1"
    python tools/analysis/benchmark_inference.py --whole RetinaNet "Mask R-CNN" "Semantic FPN"
    python tools/analysis/benchmark_inference.py --whole RetinaNet --profile
"""
import argparse
import json
import os

import torch

from mmdccnext.analysis.inference_benchmark import (ENGINES, MODEL_NAMES, SETTINGS, WHOLE_BACKBONES,
                                                    WHOLE_MODELS, build_backbone, build_whole_model,
                                                    make_image, make_input, run_benchmark,
                                                    run_whole_benchmark, time_breakdown,
                                                    whole_breakdown)
from mmdccnext.deployment.benchmark import machine
from mmdccnext.utils.fileio import write_file_atomic


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', nargs='+', default=list(MODEL_NAMES), choices=MODEL_NAMES)
    parser.add_argument('--settings', nargs='+', default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument('--engines', nargs='+', default=list(ENGINES), choices=ENGINES)
    parser.add_argument(
        '--whole', nargs='+', choices=list(WHOLE_MODELS), metavar='MODEL',
        help=f'instead of the backbones: whole models ({", ".join(WHOLE_MODELS)}) with '
        'DCCNeXt-B2 against the same config with ConvNeXt-T')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--repeat', type=int, default=5, help='interleaved rounds (median)')
    parser.add_argument(
        '--min-seconds', type=float, default=1.0, help='minimum duration of one timing')
    parser.add_argument('--no-memory', action='store_true', help='skip the memory runs')
    parser.add_argument(
        '--work-dir', default='work_dirs/benchmark_inference',
        help='where the ONNX files are exported (and reused)')
    parser.add_argument('--json', help='also write all results to this JSON file')
    parser.add_argument(
        '--profile', action='store_true',
        help='instead of timing: where the time of one eager forward pass goes (with '
        '--whole: of one image, by part of the model)')
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeat < 1:
        parser.error('--threads and --repeat must be >= 1')
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f'{machine()}; {os.cpu_count()} CPUs, torch {torch.__version__}')
    if args.whole and args.profile:
        for task in args.whole:
            for backbone in WHOLE_BACKBONES:
                spent, layout = whole_breakdown(task, build_whole_model(task, backbone),
                                                make_image(task))
                parts = ', '.join(f'{k} {v:.0f} ms' for k, v in spent.items())
                print(f'{task} | {backbone} | {parts}')
                print(f'    maps handed to the neck (shape, stride, contiguous): {layout}')
        return
    if args.whole:
        results = run_whole_benchmark(
            args.whole, args.threads, args.repeat, args.min_seconds, memory=not args.no_memory,
            log=lambda table: print(table + '\n', flush=True))
        if args.json:
            write_file_atomic(args.json, json.dumps(results, indent=1))
        return
    if args.profile:
        for name in args.settings:
            setting = SETTINGS[name]
            x = make_input(setting)
            for model in args.models:
                spent = time_breakdown(build_backbone(model, setting.dense), x)
                total = spent['total']
                parts = ', '.join(f'{k} {v:.0f} ms ({100 * v / total:.0f}%)'
                                  for k, v in spent.items() if k != 'total')
                print(f'{name} | {model} | total {total:.0f} ms | {parts}')
        return
    results = run_benchmark(
        args.models, args.settings, args.engines, args.threads, args.repeat,
        args.min_seconds, memory=not args.no_memory, work_dir=args.work_dir,
        log=lambda table: print(table + '\n', flush=True))
    if args.json:
        write_file_atomic(args.json, json.dumps(results, indent=1))


if __name__ == '__main__':
    main()
