"""Cluster maps of DCConv blocks on an image (paper Fig. 3), as a PNG.

Examples::

    # random initialisation, the first DCConv block of stages 3 and 4, one centre at (x, y)
    python tools/analysis/visualize_clusters.py \\
        configs/classification/dccnext-b2_8xb128_in1k.py photo.jpg \\
        --blocks stages.2.0 stages.3.0 --centers 220,140 --out clusters.png

    # a checkpoint, a detection config, 2 centres picked automatically
    python tools/analysis/visualize_clusters.py \\
        configs/detection/retinanet_dccnext-b0_fpn_synthetic.py work_dirs/demo/epoch_5.pth \\
        photo.jpg --num-centers 2 --out clusters.png

Red: the centre patch, orange: the other members of its cluster; one row per centre, one
panel per block. The image goes through the config's test pipeline (without crops) and the
model's data preprocessor; centres are pixels (x, y) of the original image.
"""
import argparse

from mmengine.config import DictAction

from mmdccnext.apis.cli import check_positionals, run
from mmdccnext.visualization import visualize_clusters_from_config


def center(text):
    try:
        x, y = (int(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'expected X,Y integer pixel coordinates (e.g. 120,80), got {text!r}')
    return x, y


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Draw the clusters of DCConv blocks')
    parser.add_argument('config', help='classification, detection or segmentation config')
    parser.add_argument('checkpoint', nargs='?', default=None,
                        help='checkpoint (path, zoo://name or URL); omit for a randomly '
                        'initialised model')
    parser.add_argument('image', help='image file')
    parser.add_argument('--out', required=True, help='output PNG')
    parser.add_argument('--blocks', nargs='+', default=None,
                        help='DCConv blocks, e.g. stages.2.0 stages.3.0 (default: the first '
                        'DCConv block of each DCConv stage)')
    parser.add_argument('--centers', nargs='+', type=center, default=None, metavar='X,Y',
                        help='centre pixels of the original image (default: automatic)')
    parser.add_argument('--num-centers', type=int, default=1,
                        help='number of automatic centres (without --centers)')
    parser.add_argument('--panel-size', type=int, default=None,
                        help='long side of each panel in pixels (default: the image size)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random initialisation')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    run(check_positionals, 'visualize_clusters.py CONFIG [CHECKPOINT] IMAGE --out OUT',
        config=args.config, checkpoint=args.checkpoint, image=args.image)
    result = run(lambda: visualize_clusters_from_config(
        args.config, args.image, args.out, checkpoint=args.checkpoint, blocks=args.blocks,
        centers=args.centers, num_centers=args.num_centers, panel_size=args.panel_size,
        cfg_options=args.cfg_options, seed=args.seed, device=args.device))
    model_input = result.model_input
    print(f'model input {tuple(model_input.inputs.shape[2:])} (image resized to '
          f'{model_input.content_shape}; left out: {", ".join(model_input.dropped) or "-"})')
    for note in result.notes:
        print(note)
    for row in result.panels:
        for panel in row:
            grid = result.clusters[panel.block].grid
            r, c = divmod(panel.center_patch, grid.shape[1])
            print(f'{panel.block}: {grid.shape[0]}x{grid.shape[1]} patches, stride '
                  f'{grid.stride[0]}; centre {panel.center_xy} -> patch ({r}, {c}), '
                  f'{len(panel.member_patches)} members'
                  + (f', {panel.hidden_members} in padding' if panel.hidden_members else ''))
    h, w = result.canvas.shape[:2]
    print(f'wrote {args.out} ({w}x{h})')
    return result


if __name__ == '__main__':
    main()
