"""Write the model table of docs/en/model_zoo.md from model-index.yml and its metafiles.

    python tools/docs/update_model_zoo.py           # rewrite the generated part in place
    python tools/docs/update_model_zoo.py --check   # exit 1 (and say so) if it is stale
"""
import argparse
import os.path as osp
import sys

from mmdccnext.apis.zoo import model_zoo_markdown
from mmdccnext.utils.fileio import write_file_atomic

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DOC = osp.join(REPO, 'docs', 'en', 'model_zoo.md')
BEGIN = '<!-- BEGIN GENERATED: tools/docs/update_model_zoo.py -->\n'
END = '<!-- END GENERATED -->\n'


def render(text, table):
    """``text`` with everything between the BEGIN and END markers replaced by ``table``."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f'{DOC}: expected one {BEGIN.strip()} line followed by one '
                         f'{END.strip()} line')
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    return head + BEGIN + table + END + tail


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--check', action='store_true',
                        help='do not write; exit 1 if the page is not up to date')
    parser.add_argument('--index', help='model-index.yml (default: the repository\'s)')
    args = parser.parse_args(argv)
    with open(DOC, encoding='utf-8') as f:
        text = f.read()
    index = args.index or osp.join(REPO, 'model-index.yml')
    new = render(text, model_zoo_markdown(index))
    if args.check:
        if new != text:
            print(f'{DOC} is out of date: run python tools/docs/update_model_zoo.py',
                  file=sys.stderr)
            return 1
        print(f'{DOC} is up to date')
        return 0
    if new != text:
        write_file_atomic(DOC, new.encode('utf-8'))
        print(f'wrote {DOC}')
    else:
        print(f'{DOC} is up to date')
    return 0


if __name__ == '__main__':
    sys.exit(main())
