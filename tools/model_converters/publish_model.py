"""Publish a training checkpoint for the model zoo.

    python tools/model_converters/publish_model.py work_dirs/dccnext-b2_8xb128_in1k/epoch_300.pth \\
        release/dccnext-b2_8xb128_in1k.pth --base-url https://example.org/mmdccnext/v0.1

keeps the weights and the plain-valued meta data (drops optimizer, message hub, schedulers,
EMA copy), writes ``release/dccnext-b2_8xb128_in1k_<YYYYMMDD>-<sha256[:8]>.pth`` and prints
the ``Weights`` lines for the model's entry in its ``metafile.yml``.
"""
import argparse

from mmdccnext.apis import metafile_snippet, publish_checkpoint


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Publish a checkpoint for the model zoo')
    parser.add_argument('in_file', help='checkpoint written by training')
    parser.add_argument(
        'out_file', help='<dir>/<model name>.pth; date and sha256 prefix are added to the name')
    parser.add_argument('--date', help='YYYYMMDD in the file name (default: today)')
    parser.add_argument(
        '--base-url', help='URL of the folder the file will be uploaded to (for the snippet)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    published = publish_checkpoint(args.in_file, args.out_file, date=args.date)
    if published.dropped:
        print(f'left out: {", ".join(published.dropped)}')
    print(f'published: {published.path}')
    print(f'sha256: {published.sha256}')
    print(metafile_snippet(published, base_url=args.base_url))


if __name__ == '__main__':
    main()
