"""What the command-line tools share: positional arguments checked for what they are, and
a user's mistake reported as one message instead of a traceback.

A mistake in what was passed (a missing file or data set, an unknown model-zoo name, a
checkpoint without released weights, a damaged download, swapped arguments) ends the tool
with ``error: <message>`` on stderr and exit status 1. Anything else is a bug and keeps its
traceback; ``MMDCCNEXT_TRACEBACK=1`` keeps it for the mistakes too.
"""
import os
import os.path as osp
import sys
import zipfile

from mmdccnext.utils.checkpoint import CheckpointError
from .download import DownloadError
from .zoo import UnknownModelError

#: the file kinds a tool's positional arguments are checked for, by file name
EXTENSIONS = {
    'config': ('.py', ),
    'checkpoint': ('.pth', '.pt', '.ckpt', '.bin', '.safetensors'),
    'image': ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm',
              '.jp2'),
}


class ArgumentError(ValueError):
    """A tool's or function's argument is not what it should be (e.g. swapped)."""


#: the user's mistakes (FileNotFoundError covers the missing data set and unreleased weights)
USER_ERRORS = (ArgumentError, FileNotFoundError, UnknownModelError, CheckpointError,
               DownloadError)


def file_kind(path):
    """``'config'``, ``'checkpoint'`` or ``'image'`` by the name of ``path`` (URLs and
    ``zoo://`` names are checkpoints unless they end like an image); for a name without a
    known extension, by its content (a zip archive is a torch checkpoint, a file OpenCV has a
    reader for is an image); ``None`` when unknown."""
    path = os.fspath(path)
    ext = osp.splitext(path.split('?')[0])[1].lower()
    for kind, extensions in EXTENSIONS.items():
        if ext in extensions:
            return kind
    if '://' in path:
        return 'checkpoint'
    if osp.isfile(path):
        if zipfile.is_zipfile(path):
            return 'checkpoint'
        import cv2
        if cv2.haveImageReader(path):
            return 'image'
    return None


def check_positionals(usage, **arguments):
    """Raise :class:`ArgumentError` when an argument (name: ``config``, ``checkpoint`` or
    ``image``) is clearly a file of another kind, saying which are swapped and the usage."""
    problems, kinds = [], {}
    for name, value in arguments.items():
        if value is None:
            continue
        kind = kinds[name] = file_kind(value)
        if kind is not None and kind != name:
            problems.append(f'{name}: {value!r} is {"an" if kind == "image" else "a"} {kind}, '
                            f'not {"an" if name == "image" else "a"} {name}')
    if not problems:
        return
    swapped = [n for n, k in kinds.items() if k is not None and k != n and k in arguments]
    hint = (f'{" and ".join(swapped)} look swapped' if len(swapped) == 2 else
            'an argument missing or out of order?')
    raise ArgumentError(f'{"; ".join(problems)} ({hint}); usage: {usage}')


def run(main, *args, **kwargs):
    """``main(*args, **kwargs)``, with a user's mistake (:data:`USER_ERRORS`) reported as
    ``error: <message>`` and exit status 1, no traceback."""
    try:
        return main(*args, **kwargs)
    except USER_ERRORS as error:
        if os.environ.get('MMDCCNEXT_TRACEBACK'):
            raise
        sys.exit(f'error: {error}')
