"""Evaluate a checkpoint of any mmdccnext config (classification, detection, segmentation)."""
import argparse

from mmengine.config import DictAction

from mmdccnext.apis import test_from_args
from mmdccnext.apis.cli import run


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (evaluate) a DCCNeXt model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument(
        'checkpoint',
        help='checkpoint: a file, an http(s) URL, or a model-zoo name (zoo://<name> or <name>)')
    parser.add_argument('--work-dir', help='directory for the evaluation logs')
    parser.add_argument(
        '--show-dir',
        help='draw the prediction of every test image into this folder (relative to the '
        'current folder, not to the work dir; segmentation configs write into '
        'DIR/vis_data/vis_image/, as MMSegmentation does)')
    parser.add_argument('--out', help='dump the raw predictions to this pickle file')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, default={},
        help='override config entries, e.g. test_dataloader.batch_size=1')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    run(test_from_args, parse_args(argv))


if __name__ == '__main__':
    main()
