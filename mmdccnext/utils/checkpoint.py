"""Loading MMEngine's own checkpoints under torch >= 2.6 (mmengine issue 1655).

torch 2.6 made ``torch.load(weights_only=True)`` the default, and mmengine 0.10.7 calls it
without arguments, so checkpoints written by mmengine's own runner (which pickle a
``HistoryBuffer``, numpy arrays and scalars in ``message_hub``) no longer load and
``resume=True`` fails. :func:`register_checkpoint_loaders` (called when ``mmdccnext`` is
imported; on torch >= 2.6 only) makes MMEngine's local-file loader run with exactly those
classes allow-listed (plus a ``getattr`` that only resolves ``HistoryBuffer``'s own
statistics methods, which is how pickle names them); everything else about that loader is
MMEngine's. What importing mmdccnext changes, and why, in one place:
docs/en/get_started.md, "What ``import mmdccnext`` changes".
"""
import inspect
import os.path as osp
import pickle

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader
from mmengine.runner.checkpoint import load_from_local as _mmengine_load_from_local
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


def load_checkpoint_file(filename, map_location=None):
    """``torch.load`` a local checkpoint with ``weights_only=True`` and mmengine's classes."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    with torch.serialization.safe_globals(mmengine_safe_globals()):
        return torch.load(filename, map_location=map_location, weights_only=True)


def load_from_local(filename, map_location=None):
    """MMEngine's own local-file loader, with mmengine's classes allow-listed."""
    with torch.serialization.safe_globals(mmengine_safe_globals()):
        return _mmengine_load_from_local(filename, map_location)


def register_checkpoint_loaders():
    """On torch >= 2.6, route MMEngine's local checkpoint loading through
    :func:`load_from_local`; on older torch (``weights_only=False`` by default) nothing is
    changed. Idempotent; called when ``mmdccnext`` is imported (e.g. by ``custom_imports``).
    Returns whether the loader was replaced."""
    if digit_version(torch.__version__) < digit_version('2.6.0'):
        return False
    CheckpointLoader.register_scheme(prefixes='', force=True)(load_from_local)
    return True
