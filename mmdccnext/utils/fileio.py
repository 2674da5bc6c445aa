"""Files written whole or not at all: a temporary file in the same directory, then a rename.

The one implementation of this for the package (checkpoints, downloads, ONNX files, pictures,
released weights, benchmark results, the synthetic data's manifest). A temporary file beside
the destination (so the rename stays on one file system) is written, fsynced, renamed onto
the destination with ``os.replace`` (atomic on POSIX and Windows) and the directory is
fsynced, so that after a crash the destination holds either its old or its new content, and
a temporary file is removed when writing it fails.
"""
import contextlib
import os
import os.path as osp
import uuid


def temporary_path(path, unique=True, suffix='.tmp'):
    """The temporary name for ``path``: ``.<name>.<random>.tmp`` beside it, or
    ``.<name>.tmp`` with ``unique=False`` (a writer that is retried, e.g. after a resume,
    then replaces its own leftover instead of leaving one per attempt)."""
    head, tail = osp.split(osp.abspath(path))
    tag = f'.{uuid.uuid4().hex[:12]}' if unique else ''
    return osp.join(head, f'.{tail}{tag}{suffix}')


def commit_file(tmp, path):
    """fsync the written and closed ``tmp``, rename it onto ``path``, fsync the directory."""
    with open(tmp, 'rb') as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if os.name == 'posix':  # make the rename itself durable
        fd = os.open(osp.dirname(osp.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path, unique=True, suffix='.tmp'):
    """Yield a temporary path beside ``path`` for the caller to write by any means (e.g. a
    library's ``save(filename)``); on success it is committed onto ``path``, on any error
    it is removed and ``path`` keeps its previous content."""
    path = osp.abspath(path)
    os.makedirs(osp.dirname(path), exist_ok=True)
    tmp = temporary_path(path, unique, suffix)
    try:
        yield tmp
        commit_file(tmp, path)
    finally:
        if osp.lexists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_open(path, mode='wb', unique=True, suffix='.tmp'):
    """``open`` a temporary file for writing (``'wb'`` or ``'w'``), committed onto ``path``
    when the block ends without an error (see :func:`atomic_path`)."""
    if mode not in ('wb', 'w'):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    with atomic_path(path, unique, suffix) as tmp:
        # 'x': never write into a file someone else created under the same name
        with open(tmp, mode.replace('w', 'x') if unique else mode) as f:
            yield f


def write_file_atomic(path, data):
    """Write ``data`` (bytes or str) to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_open(path, 'w' if isinstance(data, str) else 'wb') as f:
        f.write(data)
