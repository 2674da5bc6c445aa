"""Checkpoint loading under torch >= 2.6 (mmengine issue 1655).

torch 2.6 made ``torch.load(weights_only=True)`` the default, and mmengine 0.10.7 calls it
without arguments, so checkpoints written by mmengine's own runner (which pickle a
``HistoryBuffer``, numpy arrays and scalars in ``message_hub``) no longer load and
``resume=True`` fails. Here the local-file loader is replaced by one that keeps
``weights_only=True`` and allow-lists exactly those classes (plus a ``getattr`` that only
resolves ``HistoryBuffer``'s own statistics methods, which is how pickle names them), and
the http(s) loader by the verified, cached download of ``mmdccnext.apis.download``, which
loads with ``weights_only=True`` and nothing allow-listed (torch.hub's default is
``weights_only=False``), so no file is ever unpickled with arbitrary globals.
"""
import inspect
import os.path as osp
import pickle

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader


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
    return load_checkpoint_file(filename, map_location)


def load_from_http(filename, map_location=None, model_dir=None, progress=True):
    """Network checkpoints: verified, cached download (``mmdccnext.apis.download``), then
    plain tensors and containers only (``weights_only=True``)."""
    # imported when used: mmdccnext.utils loads first (before the mmcv check), apis later
    from mmdccnext.apis.download import load_checkpoint_from_url
    return load_checkpoint_from_url(
        filename, map_location=map_location, cache_dir=model_dir, progress=progress)


def register_checkpoint_loaders():
    """Route mmengine's local and http(s) checkpoint loading through the loaders above.

    Idempotent; called when ``mmdccnext`` is imported (e.g. by ``custom_imports``).
    """
    CheckpointLoader.register_scheme(prefixes='', force=True)(load_from_local)
    CheckpointLoader.register_scheme(
        prefixes=('http://', 'https://'), force=True)(load_from_http)
