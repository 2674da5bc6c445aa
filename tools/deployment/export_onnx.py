"""Export a DCCNeXt classifier and its multi-scale backbone to ONNX (standard operators only).

Example::

    python tools/deployment/export_onnx.py \\
        configs/classification/dccnext-b0_8xb128_in1k.py work_dirs/b0/epoch_300.pth \\
        --shape 224 224 --dynamic --out work_dirs/b0/dccnext-b0.onnx

writes ``dccnext-b0.onnx`` (image -> logits) and ``dccnext-b0_backbone.onnx`` (image ->
stage0 ... stage3). The input is the normalised RGB image (mean / std in the metadata);
see :mod:`mmdccnext.deployment.onnx`. Then the exported classifier runs in ONNX Runtime
next to the eager PyTorch classifier on a random image of the export shape: images/s (same
process, interleaved rounds) and peak memory (each in a fresh process), and their ratios
(``--no-compare`` skips this; :mod:`mmdccnext.deployment.benchmark`).
"""
import argparse

import numpy as np

from mmdccnext.deployment import export_onnx, read_metadata
from mmdccnext.deployment.benchmark import compare_classifier, format_comparison


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='classification config file')
    parser.add_argument(
        'checkpoint', nargs='?', help='checkpoint (file, http(s) or zoo://); default: '
        "the config's initialisation (random weights)")
    parser.add_argument(
        '--shape', type=int, nargs=2, metavar=('H', 'W'), required=True,
        help='input height and width of the export')
    parser.add_argument(
        '--dynamic', action='store_true', help='symbolic batch, height and width')
    parser.add_argument('--out', required=True, help='ONNX file of the classifier')
    parser.add_argument(
        '--backbone-out', help='ONNX file of the backbone (default: OUT with _backbone)')
    parser.add_argument(
        '--cluster-indices', action='store_true',
        help='also output the cluster indices of every DCConv layer')
    parser.add_argument(
        '--no-compare', action='store_true',
        help='skip the comparison of the exported classifier with the eager one')
    parser.add_argument('--threads', type=int, default=1,
                        help='threads of both sides in the comparison (default 1)')
    parser.add_argument('--repeat', type=int, default=3,
                        help='interleaved timing rounds of the comparison (default 3)')
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeat < 1:
        parser.error('--threads and --repeat must be >= 1')
    return args


def main(argv=None):
    args = parse_args(argv)
    result = export_onnx(
        args.config,
        args.checkpoint,
        shape=tuple(args.shape),
        out_file=args.out,
        backbone_file=args.backbone_out,
        dynamic=args.dynamic,
        cluster_indices=args.cluster_indices)
    print(f'classifier: {result["classifier"]}')
    print(f'backbone:   {result["backbone"]}')
    if result['new_norms']:
        outputs = ', '.join('stage' + name[len('norm'):] for name in result['new_norms'])
        print(f'note: the backbone outputs {outputs} are normed by new LayerNorms (weight 1, '
              'bias 0): the classifier has no norm for those stages')
    if not args.no_compare:
        shape = read_metadata(result['classifier'])['export_shape']
        # a random image: a constant one would make every patch a duplicate
        image = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        print('exported classifier in ONNX Runtime vs eager PyTorch, random image '
              f'{tuple(shape)}:')
        print(format_comparison(
            compare_classifier(args.config, args.checkpoint, result['classifier'], image,
                               threads=args.threads, repeat=args.repeat)))


if __name__ == '__main__':
    main()
