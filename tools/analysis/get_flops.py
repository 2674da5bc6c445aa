"""Parameters and FLOPs of DCCNeXt models from their configs.

Examples::

    # Table 1 (classifiers at 224x224, DCConv counted as in the paper)
    python tools/analysis/get_flops.py configs/classification/dccnext-b*_in1k.py \\
        --dcconv-convention paper

    # Table 6, B1 backbone at 1280x800 with and without sub-vector sampling
    python tools/analysis/get_flops.py configs/classification/dccnext-b1_8xb128_in1k.py \\
        --shape 800 1280 --backbone-only --dcconv-convention paper
    python tools/analysis/get_flops.py configs/classification/dccnext-b1_8xb128_in1k.py \\
        --shape 800 1280 --backbone-only --dcconv-convention paper \\
        --cfg-options model.backbone.subvector_stride=1

FLOPs are multiply-adds (MMEngine's FlopAnalyzer) plus DCConv under the chosen convention
(see ``mmdccnext.analysis.complexity``).
"""
import argparse
import os.path as osp

from mmengine.config import Config, DictAction

from mmdccnext.analysis import CONVENTIONS, build_model_from_cfg, format_count, get_complexity


def parse_args():
    parser = argparse.ArgumentParser(description='Parameters and FLOPs of a model')
    parser.add_argument('config', nargs='+', help='config file(s)')
    parser.add_argument(
        '--shape',
        type=int,
        nargs='+',
        default=[224, 224],
        help='input size: H W, or one number for a square input')
    parser.add_argument(
        '--in-channels', type=int, default=3,
        help='input channels (the backbone is built with model.backbone.in_channels set to it)')
    parser.add_argument(
        '--backbone-only',
        action='store_true',
        help='count cfg.model.backbone only (e.g. at detection sizes)')
    parser.add_argument(
        '--dcconv-convention',
        choices=CONVENTIONS,
        default='ours',
        help="DCConv clustering counted as N^2*C/d ('ours') or "
        "2*N^2*C/d multiply-adds ('paper')")
    parser.add_argument(
        '--show-table', action='store_true', help='print the per-module table of the first config')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, e.g. model.backbone.subvector_stride=1')
    return parser.parse_args()


def main():
    args = parse_args()
    if len(args.shape) == 1:
        h = w = args.shape[0]
    elif len(args.shape) == 2:
        h, w = args.shape
    else:
        raise ValueError('--shape takes H W or a single size')
    if args.in_channels < 1:
        raise ValueError(f'--in-channels: expected an int >= 1, got {args.in_channels}')
    rows = []
    for i, path in enumerate(args.config):
        cfg = Config.fromfile(path)
        # the stem must take what is fed in (model.backbone.in_channels of the config is 3)
        cfg.merge_from_dict({'model.backbone.in_channels': args.in_channels})
        if args.cfg_options:
            cfg.merge_from_dict(args.cfg_options)
        model = build_model_from_cfg(cfg, backbone_only=args.backbone_only)
        res = get_complexity(model, (args.in_channels, h, w), args.dcconv_convention)
        if args.show_table and i == 0:
            from mmengine.analysis import complexity_stats_table
            print(complexity_stats_table(res['analyzer'], show_param_shapes=False))
        dc = res['dcconv_cluster'] + res['dcconv_aggregate']
        rows.append(
            (osp.splitext(osp.basename(path))[0], format_count(res['params']),
             format_count(res['flops']), format_count(dc), format_count(res['dcconv_cluster'])))
    scope = 'backbone' if args.backbone_only else 'model'
    print(f'\nInput {args.in_channels}x{h}x{w}, {scope}, FLOPs = multiply-adds, DCConv '
          f'convention {args.dcconv_convention!r}')
    header = ('config', 'params', 'FLOPs', 'of which DCConv', 'DCConv clustering')
    widths = [max(len(str(r[j])) for r in rows + [header]) for j in range(len(header))]
    for r in [header, tuple('-' * n for n in widths)] + rows:
        print('| ' + ' | '.join(str(c).ljust(n) for c, n in zip(r, widths)) + ' |')


if __name__ == '__main__':
    main()
