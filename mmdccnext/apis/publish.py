"""Publish a training checkpoint for the model zoo (``tools/model_converters/publish_model.py``).

A published file holds the weights (``state_dict``) and the plain-valued part of ``meta``
only: no optimizer, message hub, parameter schedulers or EMA copy, so it loads with
``torch.load(weights_only=True)`` and nothing allow-listed, which is how checkpoints from
the network are loaded. Its name carries the date and its sha256 prefix,
``<name>_<YYYYMMDD>-<sha256[:8]>.pth``, which the download checks.
"""
import collections
import datetime
import hashlib
import io
import os.path as osp
import re
from typing import NamedTuple

import torch

from mmdccnext.utils.checkpoint import load_checkpoint_file
from mmdccnext.utils.fileio import write_file_atomic
from .zoo import load_model_index

_PLAIN = (str, int, float, bool, type(None))  # exact types: numpy scalars subclass float


class PublishedCheckpoint(NamedTuple):
    path: str
    sha256: str
    name: str  # the model name, i.e. the file name without date and hash
    dropped: tuple  # top-level keys and meta keys that were left out


def _is_plain(value):
    if type(value) in _PLAIN:
        return True
    if type(value) in (list, tuple):
        return all(_is_plain(v) for v in value)
    if type(value) in (dict, collections.OrderedDict):
        return all(type(k) in (str, int) and _is_plain(v) for k, v in value.items())
    return False


def _weights(checkpoint, in_file):
    state_dict = checkpoint.get('state_dict', checkpoint)
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not state_dict or not_tensors:
        raise ValueError(f'in_file: {in_file} has no state_dict of tensors (non-tensor '
                         f'entries: {not_tensors[:5]})')
    return collections.OrderedDict((k, v.detach().cpu()) for k, v in state_dict.items())


def publish_checkpoint(in_file, out_file, date=None):
    """Write the published form of ``in_file`` as ``<out stem>_<date>-<sha256[:8]>.pth``.

    Args:
        in_file (str): a checkpoint written by MMEngine's runner (or a bare state dict).
        out_file (str): ``<dir>/<model name>.pth``; the date and hash are added to the name.
        date (str, optional): ``YYYYMMDD``; default today.

    Returns:
        PublishedCheckpoint: path, full sha256, model name and the keys left out.
    """
    if not str(out_file).endswith('.pth'):
        raise ValueError(f'out_file: expected a file name ending in .pth, got {out_file!r}')
    date = date or datetime.date.today().strftime('%Y%m%d')
    if not re.fullmatch(r'\d{8}', date):
        raise ValueError(f'date: expected YYYYMMDD, got {date!r}')
    checkpoint = load_checkpoint_file(str(in_file), map_location='cpu')
    if not isinstance(checkpoint, dict):
        raise ValueError(f'in_file: {in_file} is not a checkpoint dict')

    published = dict(state_dict=_weights(checkpoint, in_file))
    dropped, meta = [], None
    if 'state_dict' in checkpoint:  # else a bare state dict: everything in it was weights
        dropped = [k for k in checkpoint if k not in ('state_dict', 'meta')]
        meta = checkpoint.get('meta')
    if isinstance(meta, dict):
        published['meta'] = {k: v for k, v in meta.items() if _is_plain(v)}
        dropped += [f'meta.{k}' for k in meta if k not in published['meta']]

    # Serialised in memory: torch.save names the archive after a file it writes to, which
    # would make the bytes (and so the hash) depend on the temporary file's name.
    buffer = io.BytesIO()
    torch.save(published, buffer)
    data = buffer.getvalue()
    # what the network loader will do: must succeed with nothing allow-listed
    torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)
    sha256 = hashlib.sha256(data).hexdigest()

    out_dir = osp.dirname(osp.abspath(out_file))
    name = osp.basename(out_file)[:-len('.pth')]
    path = osp.join(out_dir, f'{name}_{date}-{sha256[:8]}.pth')
    write_file_atomic(path, data)
    return PublishedCheckpoint(path, sha256, name, tuple(dropped))


def metafile_snippet(published, base_url=None, index_file=None):
    """The lines to add to the model's entry in its ``metafile.yml``."""
    file_name = osp.basename(published.path)
    url = f"{base_url.rstrip('/')}/{file_name}" if base_url else f'<BASE_URL>/{file_name}'
    try:
        known = published.name in load_model_index(index_file)
    except FileNotFoundError:
        known = False
    where = (f'the entry `Name: {published.name}`' if known else
             f'a new entry `Name: {published.name}` (with In Collection, Config, Metadata)')
    lines = [f'# add to {where} in configs/<task>/metafile.yml:',
             f'    Weights: {url}',
             f'    Weights SHA256: {published.sha256}']
    if not base_url:
        lines.append('# <BASE_URL>: where the file is uploaded (--base-url)')
    return '\n'.join(lines)
