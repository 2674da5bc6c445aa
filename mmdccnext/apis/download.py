"""Verified, cached checkpoint download for http(s) URLs and model-zoo weights.

Files land in ``$TORCH_HOME/hub/checkpoints`` (``torch.hub.get_dir()``), the cache torch.hub
and MMEngine use, under the file name of the URL. Published checkpoints are named
``<name>_<YYYYMMDD>-<sha256[:8]>.pth`` (``tools/model_converters/publish_model.py``), the
``name-<sha256 prefix>`` convention of ``torch.hub.load_state_dict_from_url(check_hash=True)``;
that hash, or a full sha256 from the model index, is checked after every download and on every
cache hit, so a file is only ever used when its hash matches.

A download goes to one fixed temporary file per target, ``.<name>.partial`` beside it, which
a new attempt overwrites and a failed one removes (leftovers of interrupted downloads of
earlier versions, ``<name>.<hex>.partial``, are removed when the file is next downloaded), and
is renamed into place only when verified: its sha256 when one is known; else its length
against the Content-Length the server announced; and when the server announced none either
(so a connection closed early would look like the end of the file), by loading it as a
checkpoint (``weights_only=True``) before it is cached. Dropped connections, short bodies and
HTTP 5xx are retried a bounded number of times; a 4xx is final. A cached file is used without
any network access.

Why this is not a layer over ``torch.hub.download_url_to_file``: its temporary file is
``<dst>.<uuid4>.partial`` (a new name per attempt, never removed after a kill: the pile-up
this module avoids), it does not compare the bytes received with Content-Length (a transfer
cut short is renamed into place unless a hash is given), it opens the URL without a timeout
(a server that stops sending hangs it forever) and it has no retries; with those replaced
nothing of it would remain. The hash convention is the same, so files cached by either are
shared.

Checkpoints from the network are unpickled with ``weights_only=True`` and nothing
allow-listed: tensors and plain containers only.
"""
import glob
import hashlib
import http.client
import os
import os.path as osp
import re
import time
import urllib.error
import urllib.parse
import urllib.request

import torch
from mmengine.dist import barrier, get_dist_info
from mmengine.logging import print_log
from mmengine.runner.checkpoint import CheckpointLoader

from mmdccnext.utils.checkpoint import CheckpointError, diagnose_checkpoint_file, torch_load_checked
from mmdccnext.utils.fileio import atomic_path

# Model-zoo files are fetched from `<this base URL>/<file name>` when it is set.
MIRROR_ENV = 'MMDCCNEXT_MODEL_ZOO_MIRROR'
DEFAULT_RETRIES = 3
DEFAULT_TIMEOUT = 60.  # seconds without data before a connection counts as dropped
_CHUNK = 1 << 20
# `..._20250101-0123abcd.pth`: the hex after the last dash is a sha256 prefix (torch.hub's
# convention; stricter than its HASH_REGEX, which also takes 0 to 7 hex digits as a hash)
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
            only: its length against Content-Length or, without that header, by loading it.
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
            # only verified transfers are renamed into place, but an earlier version cached
            # a transfer cut short when the server sent no Content-Length
            damage = diagnose_checkpoint_file(path)
            if damage is None:
                return path
            print_log(f'{path} in the checkpoint cache is damaged ({damage}): removing it and '
                      'downloading again', logger='current', level=30)
            os.remove(path)
        elif (actual := sha256_of_file(path)).startswith(expected):
            return path
        else:
            # Not one of ours (we only rename verified files): never use it, fetch it again.
            print_log(f'{path} in the checkpoint cache has sha256 {actual}, expected '
                      f'{expected}: removing it and downloading again', logger='current',
                      level=30)
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


def _remove_old_partials(path):
    """Temporary files of interrupted downloads by earlier versions (one per attempt):
    ``.<name>.<hex>.partial`` (ours) and ``<name>.<hex>.partial`` (torch.hub's)."""
    head, name = osp.split(path)
    for pattern in (f'.{glob.escape(name)}.*.partial', f'{glob.escape(name)}.*.partial'):
        for leftover in glob.glob(osp.join(head, pattern)):
            if re.fullmatch(r'[0-9a-f]{8,32}', leftover.rsplit('.', 2)[-2]):
                os.remove(leftover)


def _download_once(url, path, expected, progress, timeout):
    request = urllib.request.Request(url, headers={'User-Agent': 'mmdccnext'})
    _remove_old_partials(path)
    # `.<name>.partial`: the same name for every attempt (an attempt killed with SIGKILL
    # leaves it, the next one overwrites it); renamed onto the cached file only when the
    # transfer is verified, removed on any error
    with atomic_path(path, unique=False, suffix='.partial') as tmp:
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
        with response, open(tmp, 'wb') as out:
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
        if expected is None and total is None:
            # nothing says where the file ends: only a checkpoint that loads is complete
            try:
                torch_load_checked(tmp, map_location='cpu')
            except CheckpointError as error:
                raise _Transient(
                    f'the server sent {received} bytes without Content-Length and the URL has '
                    f'no sha256, and they do not load as a checkpoint: {error}') from None


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
                chunk = response.read1(_CHUNK)  # what has arrived, not a full chunk
            except (OSError, http.client.HTTPException) as error:  # reset, timeout, ...
                raise _Transient(f'connection dropped after {received} bytes: {error!r}') \
                    from error
            if not chunk:
                break
            out.write(chunk)
            out.flush()  # on disk as it arrives (what a kill leaves is what came)
            digest.update(chunk)
            received += len(chunk)
            bar.update(task, advance=len(chunk))
    return digest.hexdigest(), received


def load_downloaded_checkpoint(path, map_location=None):
    """Load a file that came from the network: tensors and plain containers only, any
    failure one :class:`~mmdccnext.utils.checkpoint.CheckpointError` naming the file."""
    try:
        return torch_load_checked(path, map_location)
    except CheckpointError as error:
        raise CheckpointError(f'{error} (it came from the network; publish checkpoints with '
                              f'tools/model_converters/publish_model.py)') from None


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
