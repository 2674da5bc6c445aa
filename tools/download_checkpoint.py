"""Download a model-zoo checkpoint (verified, cached) and print its local path.

    python tools/download_checkpoint.py dccnext-b2_8xb128_in1k        # zoo name
    python tools/download_checkpoint.py configs/detection/retinanet_dccnext_b2.py
    python tools/download_checkpoint.py https://host/dir/name_20250101-0123abcd.pth
    python tools/download_checkpoint.py --list                         # what is released

Files are kept in $TORCH_HOME/hub/checkpoints (or --dest) and checked against the sha256 in
their name or in the model index; $MMDCCNEXT_MODEL_ZOO_MIRROR sets a mirror for zoo files.
"""
import argparse

from mmdccnext.apis import fetch_checkpoint, load_model_index
from mmdccnext.apis.cli import run


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Download a model-zoo checkpoint')
    parser.add_argument('source', nargs='?', help='zoo name, zoo config file, or http(s) URL')
    parser.add_argument('--dest', help='folder to keep it in (default: the torch hub cache)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.add_argument('--list', action='store_true', help='list the zoo and its weights')
    args = parser.parse_args(argv)
    if not args.list and not args.source:
        parser.error('give a zoo name, config or URL, or --list')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.list:
        for name, entry in load_model_index().items():
            print(f"{name:48s} {entry.get('Weights') or 'no weights released'}")
        return
    # an unknown name, unreleased weights, a failed download: one message, no traceback
    print(run(fetch_checkpoint, args.source, args.dest, not args.no_progress))


if __name__ == '__main__':
    main()
