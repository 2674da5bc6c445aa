"""How the code blocks of README.md and docs/en/*.md run under pytest.

pytest-codeblocks (setup.cfg: ``--codeblocks``, ``testpaths``) collects every ```python,
```bash and ```sh block of the Markdown files as a test item. The hooks here give those items
what a reader who follows the README has: the project's environment entered (``python`` is
the interpreter running the tests, as after ``source .venv/bin/activate``) and a copy of the
checkout as the current folder. Each page gets its own scratch folder that mirrors the
repository by symlinks but has its own empty ``data/`` and ``work_dirs/``, so the blocks of a
page run in order on each other's outputs and nothing lands in the checkout. The variables of
:data:`DOCS_ENV`, which the pages mention where a command reads them, shorten the heavy blocks.
The convention for marking a block not to run: docs/en/development.md#documentation.
"""
import os
import os.path as osp
import shutil
import subprocess
import sys
import tempfile
import traceback

import pytest

REPO = osp.dirname(osp.abspath(__file__))
#: set while a block runs; a command reads them with a default, e.g. ``${NUM_TRAIN:-600}``
DOCS_ENV = {
    'NUM_TRAIN': '8',  # synthetic training images (one epoch = 1 iteration of batch 8)
    'NUM_VAL': '4',  # synthetic validation images
    'REPEAT': '1',  # benchmark repetitions
}
#: top-level entries of the checkout a page's scratch folder does not link (its own instead)
NOT_LINKED = {'data', 'work_dirs', '.git', '.pytest_cache', 'build'}
OUTPUT_TAIL = 3000  # characters of a failed command's stdout and stderr in its report
_FOLDERS = pytest.StashKey[dict]()
_BASE = pytest.StashKey[str]()


def is_doc_block(item):
    return type(item).__module__.split('.')[0] == 'pytest_codeblocks'


def pytest_collection_modifyitems(items):
    for item in items:
        if is_doc_block(item):
            item.add_marker(pytest.mark.docs)


def _scratch_folder(config, page):
    folders = config.stash.setdefault(_FOLDERS, {})
    if page not in folders:
        if _BASE not in config.stash:
            config.stash[_BASE] = tempfile.mkdtemp(prefix='mmdccnext-docs-')
        base = config.stash[_BASE]
        folder = osp.join(base, osp.relpath(page, REPO).replace(osp.sep, '__'))
        os.makedirs(folder)
        for entry in os.listdir(REPO):
            if entry not in NOT_LINKED:
                os.symlink(osp.join(REPO, entry), osp.join(folder, entry))
        for own in ('data', 'work_dirs'):
            os.makedirs(osp.join(folder, own))
        folders[page] = folder
    return folders[page]


def _tail(output):
    text = (output or b'').decode(errors='replace') if isinstance(output, bytes) else output or ''
    return text[-OUTPUT_TAIL:]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    if not is_doc_block(item):
        return (yield)
    cwd, environ = os.getcwd(), dict(os.environ)
    os.chdir(_scratch_folder(item.config, str(item.path)))
    os.environ.update(DOCS_ENV)
    os.environ['PATH'] = osp.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', '')
    if sys.prefix != sys.base_prefix:
        os.environ['VIRTUAL_ENV'] = sys.prefix
    try:
        return (yield)
    except subprocess.CalledProcessError as error:  # a bash block: its output says why
        raise RuntimeError(f'{item.path.name}, {item.name}: exit status {error.returncode}\n'
                           f'--- command ---\n{item.obj.code}'
                           f'--- stdout (end) ---\n{_tail(error.stdout)}\n'
                           f'--- stderr (end) ---\n{_tail(error.stderr)}') from None
    except RuntimeError as error:  # a python block: pytest-codeblocks keeps only str(error)
        cause = error.__context__
        if cause is None:
            raise
        trace = ''.join(traceback.format_exception(cause))
        raise RuntimeError(f'{error.args[0]}\n\n{trace}') from None
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environ)


def pytest_sessionfinish(session):
    base = session.config.stash.get(_BASE, None)
    if base is not None:
        shutil.rmtree(base, ignore_errors=True)
