"""Loading checkpoints: MMEngine's own under torch >= 2.6, and one clear error for bad files.

torch 2.6 made ``torch.load(weights_only=True)`` the default, and mmengine 0.10.7 calls it
without arguments, so checkpoints written by mmengine's own runner (which pickle a
``HistoryBuffer``, numpy arrays and scalars in ``message_hub``) no longer load and
``resume=True`` fails. :func:`register_checkpoint_loaders` (called when ``mmdccnext`` is
imported; on torch >= 2.6 only) makes MMEngine's local-file loader run with exactly those
classes allow-listed (plus a ``getattr`` that only resolves ``HistoryBuffer``'s own
statistics methods, which is how pickle names them); everything else about that loader is
MMEngine's. What importing mmdccnext changes, and why, in one place:
docs/en/get_started.md, "What ``import mmdccnext`` changes".

A file that does not load raises :class:`CheckpointError`, naming the file and what is
wrong with it (empty, truncated, corrupted, not a checkpoint, objects that are not allowed)
instead of torch's bare ``EOFError``/``KeyError`` or its advice to retry with
``weights_only=False`` (which would run whatever code the file carries).
"""
import inspect
import os.path as osp
import pickle
import re
import zipfile

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader
from mmengine.utils import digit_version


def _numpy_globals():
    from numpy.core.multiarray import _reconstruct, scalar
    dtype_classes = [type(np.dtype(t)) for t in (
        np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
        np.uint32, np.uint64, np.float16, np.float32, np.float64)]
    return [_reconstruct, scalar, np.ndarray, np.dtype, *dtype_classes]


def _history_buffer_getattr(obj, name):
    """Stands in for ``getattr`` while unpickling: only ``HistoryBuffer.<statistic>``.

    ``HistoryBuffer.__getstate__`` stores its statistics methods (``HistoryBuffer.min``,
    ...), which pickle writes as ``getattr(HistoryBuffer, 'min')``. A general ``getattr``
    would let a crafted file walk from an allowed class to arbitrary code.
    """
    value = getattr(obj, name, None) if obj is HistoryBuffer else None
    if name.startswith('_') or not inspect.isfunction(value):
        raise pickle.UnpicklingError(
            f'checkpoint asks for getattr({obj!r}, {name!r}); only the statistics methods '
            f'of mmengine\'s HistoryBuffer are allowed')
    return value


def mmengine_safe_globals():
    """The non-tensor objects mmengine's runner writes into checkpoints."""
    return [
        HistoryBuffer, *_numpy_globals(),
        (_history_buffer_getattr, '__builtin__.getattr'),
        (_history_buffer_getattr, 'builtins.getattr'),
    ]


class CheckpointError(pickle.UnpicklingError):
    """A checkpoint file does not load; the message names the file and the reason."""


def _disallowed(error):
    """What torch's weights-only unpickler refused, without its advice to load unsafely."""
    match = re.search(r'WeightsUnpickler error:\s*(.*?)(?:\s*Please use|\n\n|$)', str(error),
                      re.S)
    return match.group(1).strip() if match else None


def diagnose_checkpoint_file(filename):
    """Why ``filename`` is not a complete PyTorch checkpoint, or None when its structure is
    sound (a zip archive whose members all pass their CRC check, or a legacy pickle file).
    Reads the whole file; loads nothing."""
    size = osp.getsize(filename)
    if size == 0:
        return 'the file is empty (0 bytes)'
    with open(filename, 'rb') as f:
        head = f.read(4)
    if head == b'PK\x03\x04':
        try:
            with zipfile.ZipFile(filename) as archive:
                bad = archive.testzip()
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            return (f'truncated or corrupted: a zip archive of {size} bytes whose end is missing '
                    f'or damaged ({error})')
        if bad is not None:
            return f'corrupted: the archive member {bad} fails its CRC check'
        if not any(n.endswith('/data.pkl') or n == 'data.pkl' for n in names):
            return 'not a PyTorch checkpoint: a zip archive without data.pkl'
        return None
    if head[:1] == b'\x80':  # a pickle: the legacy (pre-1.6) torch.save format
        return None
    return (f'not a PyTorch checkpoint: neither a zip archive nor a pickle (the file starts '
            f'with {head!r})')


def torch_load_checked(filename, map_location=None, safe_globals=()):
    """``torch.load(weights_only=True)`` with ``safe_globals`` allowed; any failure becomes
    one :class:`CheckpointError` naming the file and what is wrong with it."""
    filename = osp.expanduser(str(filename))
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises EOFError, KeyError, RuntimeError, ...
        reason = diagnose_checkpoint_file(filename)
        if reason is None:
            refused = _disallowed(error) if isinstance(error, pickle.UnpicklingError) else None
            allowed = 'tensors, plain containers' + (
                ' and the classes mmengine writes' if safe_globals else '')
            reason = (f'it contains objects that are not allowed ({refused}); only {allowed} '
                      'are loaded' if refused else f'it does not load ({type(error).__name__}: '
                      f'{str(error).splitlines()[0] if str(error) else "no message"})')
        # `from None`: torch's own message advises `weights_only=False`, which would run
        # whatever code the file carries
        raise CheckpointError(f'checkpoint {filename}: {reason}') from None


def load_checkpoint_file(filename, map_location=None):
    """Load a local checkpoint (``weights_only=True``, mmengine's classes allowed)."""
    return torch_load_checked(filename, map_location, mmengine_safe_globals())


def load_from_local(filename, map_location=None):
    """MMEngine's local-file loader scheme: :func:`load_checkpoint_file`."""
    return load_checkpoint_file(filename, map_location)


def register_checkpoint_loaders():
    """On torch >= 2.6, route MMEngine's local checkpoint loading through
    :func:`load_from_local`; on older torch (``weights_only=False`` by default) nothing is
    changed. Idempotent; called when ``mmdccnext`` is imported (e.g. by ``custom_imports``).
    Returns whether the loader was replaced."""
    if digit_version(torch.__version__) < digit_version('2.6.0'):
        return False
    CheckpointLoader.register_scheme(prefixes='', force=True)(load_from_local)
    return True
