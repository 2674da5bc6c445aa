"""Verified, cached checkpoint download for http(s) URLs and model-zoo weights.

Files land in ``$TORCH_HOME/hub/checkpoints`` (``torch.hub.get_dir()``), the cache torch.hub
and MMEngine use, under the file name of the URL. Published checkpoints are named
``<name>_<YYYYMMDD>-<sha256[:8]>.pth`` (``tools/model_converters/publish_model.py``); that
hash, or a full sha256 from the model index, is checked after every download and on every
cache hit, so a file is only ever used when its hash matches. A download goes to a temporary
file next to its destination and is renamed into place only when it is complete (as long as
the server announced) and verified: an interrupted or corrupted transfer never leaves a file
that looks complete. Dropped connections and HTTP 5xx are retried a bounded number of times;
a 4xx is final. A cached, verified file is used without any network access.

Checkpoints from the network are unpickled with ``weights_only=True`` and nothing
allow-listed: tensors and plain containers only.
"""
import hashlib
import http.client
import os
import os.path as osp
import pickle
import re
import time
import urllib.error
import urllib.parse
import urllib.request

import torch
from mmengine.dist import barrier, get_dist_info
from mmengine.logging import print_log
from mmengine.runner.checkpoint import CheckpointLoader

from mmdccnext.utils.fileio import atomic_open

# Model-zoo files are fetched from `<this base URL>/<file name>` when it is set.
MIRROR_ENV = 'MMDCCNEXT_MODEL_ZOO_MIRROR'
DEFAULT_RETRIES = 3
DEFAULT_TIMEOUT = 60.  # seconds without data before a connection counts as dropped
_CHUNK = 1 << 20
# `..._20250101-0123abcd.pth`: the hex after the last dash is a sha256 prefix
_HASH_IN_NAME = re.compile(r'-([0-9a-f]{8,64})\.[A-Za-z0-9]+$')


class DownloadError(RuntimeError):
    """A checkpoint could not be downloaded; nothing was written to the cache."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not have the expected sha256; the file was not kept."""


class _Transient(Exception):
    """A failure worth another attempt (dropped connection, short body, HTTP 5xx)."""


def checkpoint_cache_dir():
    """``$TORCH_HOME/hub/checkpoints``, where downloaded checkpoints are kept."""
    return osp.join(torch.hub.get_dir(), 'checkpoints')


def url_file_name(url):
    name = osp.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise ValueError(f'url: expected a URL ending in a file name, got {url!r}')
    return urllib.parse.unquote(name)


def sha256_from_file_name(name):
    """The sha256 prefix in ``<name>_<YYYYMMDD>-<sha256[:8]>.pth``, or None."""
    match = _HASH_IN_NAME.search(name)
    return match.group(1) if match else None


def sha256_of_file(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(_CHUNK), b''):
            digest.update(block)
    return digest.hexdigest()


def mirrored_url(url):
    """``url`` on the mirror named by ``$MMDCCNEXT_MODEL_ZOO_MIRROR``, if it is set."""
    base = os.environ.get(MIRROR_ENV, '').strip()
    if not base:
        return url
    if not base.startswith(('http://', 'https://')):
        raise ValueError(f'${MIRROR_ENV}: expected an http(s) base URL, got {base!r}')
    return f"{base.rstrip('/')}/{urllib.parse.quote(url_file_name(url))}"


def _expected_sha256(url, sha256):
    from_name = sha256_from_file_name(url_file_name(url))
    if sha256 is None:
        return from_name
    sha256 = sha256.lower()
    if not re.fullmatch(r'[0-9a-f]{8,64}', sha256):
        raise ValueError(f'sha256: expected 8 to 64 hex digits, got {sha256!r}')
    if from_name and not (sha256.startswith(from_name) or from_name.startswith(sha256)):
        raise ValueError(f'sha256: {sha256} contradicts the hash {from_name} in the file name '
                         f'of {url}')
    return sha256


def download_checkpoint(url, sha256=None, cache_dir=None, progress=True,
                        retries=DEFAULT_RETRIES, timeout=DEFAULT_TIMEOUT):
    """Local path of the verified copy of ``url``, downloaded into the cache if needed.

    Args:
        url (str): http(s) URL of the checkpoint.
        sha256 (str, optional): its full sha256 (or a prefix); by default the hash in the
            file name, if it has one. Without either, the file is checked for completeness
            only.
        cache_dir (str, optional): default ``$TORCH_HOME/hub/checkpoints``.
        progress (bool): show a progress bar on stderr.
        retries (int): attempts before giving up on dropped connections and HTTP 5xx.
        timeout (float): seconds without data after which a connection counts as dropped.
    """
    if not isinstance(url, str) or not url.startswith(('http://', 'https://')):
        raise ValueError(f'url: expected an http(s) URL, got {url!r}')
    if not isinstance(retries, int) or retries < 1:
        raise ValueError(f'retries: expected an int >= 1, got {retries!r}')
    expected = _expected_sha256(url, sha256)
    cache_dir = osp.expanduser(cache_dir or checkpoint_cache_dir())
    os.makedirs(cache_dir, exist_ok=True)
    path = osp.join(cache_dir, url_file_name(url))
    if osp.isfile(path):
        if expected is None:
            return path  # only complete transfers are ever renamed into place
        actual = sha256_of_file(path)
        if actual.startswith(expected):
            return path
        # Not one of ours (we only rename verified files): never use it, fetch it again.
        print_log(f'{path} in the checkpoint cache has sha256 {actual}, expected {expected}: '
                  'removing it and downloading again', logger='current', level=30)
        os.remove(path)

    last_error = None
    for attempt in range(1, retries + 1):
        try:
            _download_once(url, path, expected, progress, timeout)
            return path
        except _Transient as error:
            last_error = error
            if attempt < retries:
                print_log(f'downloading {url} failed ({error}); attempt {attempt + 1} of '
                          f'{retries}', logger='current', level=30)
                time.sleep(min(0.5 * 2**(attempt - 1), 8.))
    raise DownloadError(
        f'{url}: gave up after {retries} attempts, last error: {last_error}. Nothing was '
        f'written to {cache_dir}. If this is a model-zoo file, a mirror can be set with '
        f'${MIRROR_ENV}; a file downloaded by other means can be passed as a local path.')


def _download_once(url, path, expected, progress, timeout):
    request = urllib.request.Request(url, headers={'User-Agent': 'mmdccnext'})
    # `<name>.<random>.partial` beside the cached file, renamed onto it only when the
    # transfer is complete and verified; removed on any error
    with atomic_open(path, 'wb', suffix='.partial') as out:
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as error:
            message = f'HTTP {error.code} {error.reason} for {url}'
            if error.code >= 500 or error.code in (408, 429):
                raise _Transient(message) from error
            hint = ('the server does not have this file' if error.code in (404, 410) else
                    'the server refuses it (not retried)')
            raise DownloadError(f'{message}: {hint}') from error
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            raise _Transient(f'cannot connect: {getattr(error, "reason", error)}') from error
        with response:
            total = response.headers.get('Content-Length')
            total = int(total) if total and total.isdigit() else None
            digest, received = _copy_with_progress(response, out, total, progress,
                                                   url_file_name(url))
        if total is not None and received != total:
            raise _Transient(f'connection closed after {received} of {total} bytes')
        if expected is not None and not digest.startswith(expected):
            raise ChecksumError(
                f'{url}: sha256 of the downloaded file is {digest}, expected {expected}; the '
                'file is corrupted or is not the published checkpoint, so it was not kept')


def _copy_with_progress(response, out, total, progress, label):
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
    digest = hashlib.sha256()
    received = 0
    columns = (TextColumn('{task.description}'), BarColumn(), DownloadColumn(),
               TransferSpeedColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task(label, total=total)
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as error:  # reset, timeout, ...
                raise _Transient(f'connection dropped after {received} bytes: {error!r}') \
                    from error
            if not chunk:
                break
            out.write(chunk)
            digest.update(chunk)
            received += len(chunk)
            bar.update(task, advance=len(chunk))
    return digest.hexdigest(), received


def load_downloaded_checkpoint(path, map_location=None):
    """``torch.load`` a file that came from the network: tensors and plain containers only."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise pickle.UnpicklingError(
            f'{path} came from the network and holds more than tensors and plain containers, '
            f'so it is not loaded (weights_only=True). Publish checkpoints with '
            f'tools/model_converters/publish_model.py. torch says: {error}') from error


def load_checkpoint_from_url(url, map_location=None, sha256=None, cache_dir=None,
                             progress=True):
    """Download (or take from the cache) and load a checkpoint, verified and weights-only.

    In distributed runs rank 0 downloads first, the other ranks then read the cache.
    """
    rank, world_size = get_dist_info()
    if rank == 0:
        path = download_checkpoint(url, sha256, cache_dir, progress)
    if world_size > 1:
        barrier()
        if rank > 0:
            path = download_checkpoint(url, sha256, cache_dir, progress=False)
    return load_downloaded_checkpoint(path, map_location)


def load_from_http(filename, map_location=None, model_dir=None, progress=True):
    """``CheckpointLoader`` scheme for http(s) URLs: the verified, cached download, loaded
    with ``weights_only=True`` and nothing allow-listed (MMEngine's own goes through
    ``torch.hub``, which unpickles with ``weights_only=False``)."""
    return load_checkpoint_from_url(
        filename, map_location=map_location, cache_dir=model_dir, progress=progress)


def register_http_loader():
    """Route MMEngine's http(s) checkpoint loading through :func:`load_from_http`.

    Idempotent; called when ``mmdccnext`` is imported (see docs/en/get_started.md, "What
    ``import mmdccnext`` changes")."""
    CheckpointLoader.register_scheme(
        prefixes=('http://', 'https://'), force=True)(load_from_http)
