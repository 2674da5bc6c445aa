"""Verified, cached checkpoint download against a real HTTP server on 127.0.0.1.

A checkpoint published by ``publish_checkpoint`` is served, downloaded by zoo name, by URL and
through MMEngine (``load_from``, ``init_cfg``), verified, cached and loaded; corrupted,
truncated, wrongly hashed, missing (404), failing (500) and dropped transfers give a clear
error or a successful retry and never leave a file in the cache.
"""
import hashlib
import os
import pickle

import pytest
import torch
from mmengine.runner import Runner, load_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader
from zoo_helpers import TinyClassifier, fixed_input, outputs, write_index

import mmdccnext  # noqa: F401  (registers the checkpoint loaders)
from mmdccnext.apis import (ChecksumError, DownloadError, NoWeightsError, download_checkpoint,
                            fetch_checkpoint)
from mmdccnext.apis.download import MIRROR_ENV, sha256_from_file_name
from mmdccnext.apis.zoo import INDEX_ENV


def cache_listing(cache_dir):
    return sorted(os.listdir(cache_dir)) if cache_dir.is_dir() else []


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch, zoo_server, published):
    """A temporary model index with the published checkpoint served under /zoo/."""
    url = zoo_server.add(f'/zoo/{published.file_name}', published.data)
    index = write_index(tmp_path / 'index', [
        dict(Name='tiny-dccnext_in1k', Config='configs/tiny/tiny.py', Weights=url),
        dict(Name='tiny-unreleased_in1k', Config='configs/tiny/unreleased.py'),
    ])
    monkeypatch.setenv(INDEX_ENV, index)
    return url


@pytest.mark.slow
def test_published_name_carries_date_and_sha256(published):
    result = published.result
    assert published.file_name == f'tiny-dccnext_in1k_20250101-{result.sha256[:8]}.pth'
    assert hashlib.sha256(published.data).hexdigest() == result.sha256
    assert sha256_from_file_name(published.file_name) == result.sha256[:8]


@pytest.mark.slow
def test_zoo_name_downloads_verifies_caches_loads_and_works_offline(
        torch_home, tiny_zoo, zoo_server, published):
    path = f'/zoo/{published.file_name}'
    model = TinyClassifier()
    assert not torch.allclose(outputs(model), published.outputs)
    load_checkpoint(model, 'zoo://tiny-dccnext_in1k', map_location='cpu', strict=True)
    assert torch.equal(outputs(model), published.outputs)
    assert zoo_server.hits[path] == 1
    cached = torch_home / published.file_name
    assert cache_listing(torch_home) == [published.file_name]  # no temporary files left
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == published.result.sha256

    # cached: no second request; then offline: still loads from the verified cache
    load_checkpoint(TinyClassifier(), 'zoo://tiny-dccnext_in1k', map_location='cpu')
    assert zoo_server.hits[path] == 1
    zoo_server.stop()
    again = TinyClassifier()
    load_checkpoint(again, 'zoo://tiny-dccnext_in1k', map_location='cpu', strict=True)
    assert torch.equal(outputs(again), published.outputs)


@pytest.mark.slow
def test_backbone_init_cfg_names_zoo_weights(torch_home, tiny_zoo, published):
    """What the detection and segmentation configs do: Pretrained, zoo name, prefix."""
    model = TinyClassifier(backbone_init_cfg=dict(
        type='Pretrained', checkpoint='zoo://tiny-dccnext_in1k', prefix='backbone.'))
    model.init_weights()
    model.eval()
    with torch.no_grad():
        features = model.backbone(fixed_input())
    assert torch.equal(features[0], published.backbone_outputs[0])


@pytest.mark.slow
def test_runner_load_from_http_url(torch_home, tmp_path, zoo_server, published):
    url = zoo_server.add(f'/files/{published.file_name}', published.data)
    runner = Runner(model=TinyClassifier(), work_dir=str(tmp_path / 'work'), load_from=url,
                    default_scope='mmengine')
    runner.load_or_resume()
    assert torch.equal(outputs(runner.model), published.outputs)
    assert cache_listing(torch_home) == [published.file_name]


@pytest.mark.slow
def test_entry_without_weights_says_how_to_get_them(torch_home, tiny_zoo):
    with pytest.raises(NoWeightsError, match=r'tools/train.py configs/tiny/unreleased.py`, '
                       r'which ends with work_dirs/unreleased/epoch_N.pth; use that file'):
        CheckpointLoader.load_checkpoint('zoo://tiny-unreleased_in1k')
    with pytest.raises(KeyError, match=r'tiny-nothing: no model of that name.*did you mean '
                       r'tiny-dccnext_in1k\?.*all 2'):
        CheckpointLoader.load_checkpoint('zoo://tiny-nothing')


@pytest.mark.slow
def test_fetch_by_name_config_and_url(torch_home, tiny_zoo, published):
    by_name = fetch_checkpoint('tiny-dccnext_in1k', progress=False)
    assert by_name == str(torch_home / published.file_name)
    assert fetch_checkpoint('configs/tiny/tiny.py', progress=False) == by_name
    assert fetch_checkpoint(tiny_zoo, progress=False) == by_name
    with pytest.raises(KeyError, match='no model-zoo entry has this config'):
        fetch_checkpoint('configs/tiny/other.py')


@pytest.mark.slow
def test_corrupted_file_is_refused_and_not_kept(torch_home, zoo_server, published):
    corrupted = bytearray(published.data)
    corrupted[len(corrupted) // 2] ^= 0xFF
    url = zoo_server.add(f'/zoo/{published.file_name}', bytes(corrupted))
    with pytest.raises(ChecksumError, match=f'expected {published.result.sha256[:8]}.*not kept'):
        download_checkpoint(url, progress=False)
    assert cache_listing(torch_home) == []


@pytest.mark.slow
def test_full_sha256_from_the_index_is_checked(torch_home, tmp_path, monkeypatch, zoo_server,
                                               published):
    """A file name without a hash: the metafile's `Weights SHA256` decides."""
    url = zoo_server.add('/zoo/tiny.pth', published.data)
    wrong = hashlib.sha256(b'something else').hexdigest()
    monkeypatch.setenv(INDEX_ENV, write_index(tmp_path / 'index', [
        dict(Name='wrong', Config='c.py', Weights=url, **{'Weights SHA256': wrong}),
        dict(Name='right', Config='c.py', Weights=url,
             **{'Weights SHA256': published.result.sha256}),
    ]))
    with pytest.raises(ChecksumError, match=f'expected {wrong}'):
        CheckpointLoader.load_checkpoint('zoo://wrong')
    assert cache_listing(torch_home) == []
    model = TinyClassifier()
    load_checkpoint(model, 'zoo://right', strict=True)
    assert torch.equal(outputs(model), published.outputs)
    # a hash in the metafile that contradicts the one in the file name is a clear error
    with pytest.raises(ValueError, match='contradicts the hash'):
        download_checkpoint(f'{zoo_server.base}/zoo/{published.file_name}', sha256=wrong)


@pytest.mark.slow
def test_truncated_transfer_is_retried_then_fails_cleanly(torch_home, zoo_server, published):
    url = zoo_server.add(f'/cut/{published.file_name}', published.data, 'truncate')
    with pytest.raises(DownloadError, match=r'gave up after 2 attempts.*connection closed after '
                       rf'{len(published.data) // 2} of {len(published.data)} bytes'):
        download_checkpoint(url, progress=False, retries=2)
    assert zoo_server.hits[f'/cut/{published.file_name}'] == 2
    assert cache_listing(torch_home) == []


@pytest.mark.slow
def test_connection_dropped_once_is_retried(torch_home, zoo_server, published):
    url = zoo_server.add(f'/flaky/{published.file_name}', published.data, 'drop-once')
    path = download_checkpoint(url, progress=False)
    assert zoo_server.hits[f'/flaky/{published.file_name}'] == 2
    assert cache_listing(torch_home) == [published.file_name]
    model = TinyClassifier()
    load_checkpoint(model, path, strict=True)
    assert torch.equal(outputs(model), published.outputs)


@pytest.mark.slow
def test_http_404_is_final_and_500_is_retried(torch_home, zoo_server, published):
    with pytest.raises(DownloadError, match='HTTP 404 .*server does not have this file'):
        download_checkpoint(f'{zoo_server.base}/missing/{published.file_name}', progress=False)
    assert zoo_server.hits[f'/missing/{published.file_name}'] == 1

    url = zoo_server.add(f'/error/{published.file_name}', published.data, 500)
    with pytest.raises(DownloadError, match='gave up after 2 attempts.*HTTP 500'):
        download_checkpoint(url, progress=False, retries=2)
    assert zoo_server.hits[f'/error/{published.file_name}'] == 2
    assert cache_listing(torch_home) == []


@pytest.mark.slow
def test_404_through_the_zoo_names_the_url(torch_home, tmp_path, monkeypatch, zoo_server):
    url = f'{zoo_server.base}/gone/tiny_20250101-0123abcd.pth'
    monkeypatch.setenv(INDEX_ENV, write_index(tmp_path / 'index', [
        dict(Name='gone', Config='c.py', Weights=url)]))
    with pytest.raises(DownloadError, match=f'HTTP 404 Not Found for {url}'):
        CheckpointLoader.load_checkpoint('zoo://gone')


@pytest.mark.slow
def test_mirror_from_environment(torch_home, tmp_path, monkeypatch, zoo_server,
                                 published):
    # the official host is unreachable (nothing listens on port 9 of 127.0.0.1)
    monkeypatch.setenv(INDEX_ENV, write_index(tmp_path / 'index', [
        dict(Name='tiny', Config='c.py', Weights=f'http://127.0.0.1:9/x/{published.file_name}')]))
    zoo_server.add(f'/mirror/{published.file_name}', published.data)
    monkeypatch.setenv(MIRROR_ENV, f'{zoo_server.base}/mirror/')
    model = TinyClassifier()
    load_checkpoint(model, 'zoo://tiny', strict=True)
    assert torch.equal(outputs(model), published.outputs)
    assert zoo_server.hits[f'/mirror/{published.file_name}'] == 1


@pytest.mark.slow
def test_foreign_file_in_cache_is_replaced_not_trusted(torch_home, tiny_zoo, zoo_server,
                                                       published):
    torch_home.mkdir(parents=True)
    (torch_home / published.file_name).write_bytes(published.data[:100])  # not what was published
    model = TinyClassifier()
    load_checkpoint(model, 'zoo://tiny-dccnext_in1k', strict=True)
    assert torch.equal(outputs(model), published.outputs)
    assert zoo_server.hits[f'/zoo/{published.file_name}'] == 1
    assert (torch_home / published.file_name).read_bytes() == published.data


class Arbitrary:
    """Not a tensor or plain container: unpickling it means importing and running our code."""

    def __init__(self):
        self.payload = 'x'


@pytest.mark.slow
def test_pickled_object_from_network_is_refused(torch_home, tmp_path, zoo_server):
    evil = tmp_path / 'evil.pth'
    torch.save(dict(state_dict=dict(w=torch.ones(2)), extra=Arbitrary()), evil)
    url = zoo_server.add('/evil.pth', evil.read_bytes())
    with pytest.raises(pickle.UnpicklingError, match=r'it contains objects that are not allowed '
                       r'\(Unsupported global: GLOBAL test_checkpoint_download.Arbitrary.*'
                       r'came from the network') as info:
        CheckpointLoader.load_checkpoint(url)
    assert 'weights_only' not in str(info.value)


@pytest.mark.slow
def test_progress_bar_on_stderr(torch_home, zoo_server, published, capfd):
    url = zoo_server.add(f'/zoo/{published.file_name}', published.data)
    download_checkpoint(url, progress=True)
    err = capfd.readouterr().err
    assert published.file_name in err and 'kB' in err
    (torch_home / published.file_name).unlink()
    download_checkpoint(url, progress=False)
    assert published.file_name not in capfd.readouterr().err


@pytest.mark.parametrize('kwargs, message', [
    (dict(url='ftp://host/x.pth'), 'url: expected an http'),
    (dict(url='http://host/x.pth', retries=0), 'retries: expected an int >= 1'),
    (dict(url='http://host/x.pth', sha256='xyz'), 'sha256: expected 8 to 64 hex digits'),
    (dict(url='http://host/'), 'url: expected a URL ending in a file name'),
])
def test_bad_arguments_are_named(torch_home, kwargs, message):
    with pytest.raises(ValueError, match=message):
        download_checkpoint(**kwargs)


def test_bad_mirror_and_index_settings_are_named(torch_home, tmp_path, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, 'ftp://mirror')
    monkeypatch.setenv(INDEX_ENV, write_index(tmp_path / 'index', [
        dict(Name='tiny', Config='c.py', Weights='http://host/tiny_20250101-0123abcd.pth')]))
    with pytest.raises(ValueError, match=f'\\${MIRROR_ENV}: expected an http'):
        fetch_checkpoint('tiny')
    monkeypatch.setenv(INDEX_ENV, str(tmp_path / 'nowhere.yml'))
    with pytest.raises(FileNotFoundError, match=f'\\${INDEX_ENV}=.*no such model-index file'):
        fetch_checkpoint('tiny')


# --- no Content-Length, no hash: verified by loading; leftovers of killed downloads ----------

@pytest.mark.slow
def test_no_content_length_cut_short_is_not_cached(torch_home, zoo_server, published):
    """No hash in the name, no Content-Length, connection closed after half the bytes: what
    arrived does not load, so it is retried and never cached."""
    url = zoo_server.add('/cut/tiny.pth', published.data, 'no-length-cut')
    with pytest.raises(DownloadError, match=r'gave up after 2 attempts.*without Content-Length'
                       r'.*do not load as a checkpoint.*truncated'):
        download_checkpoint(url, progress=False, retries=2)
    assert zoo_server.hits['/cut/tiny.pth'] == 2
    assert cache_listing(torch_home) == []


@pytest.mark.slow
def test_no_content_length_complete_is_verified_by_loading_and_cached(torch_home, zoo_server,
                                                                      published):
    url = zoo_server.add('/whole/tiny.pth', published.data, 'no-length')
    path = download_checkpoint(url, progress=False)
    assert cache_listing(torch_home) == ['tiny.pth']
    assert open(path, 'rb').read() == published.data
    assert download_checkpoint(url, progress=False) == path
    assert zoo_server.hits['/whole/tiny.pth'] == 1  # the second call is a cache hit


@pytest.mark.slow
def test_damaged_unhashed_file_in_cache_is_downloaded_again(torch_home, zoo_server, published):
    """What an earlier version cached from a cut-short transfer without Content-Length."""
    url = zoo_server.add('/zoo/tiny.pth', published.data)
    torch_home.mkdir(parents=True)
    (torch_home / 'tiny.pth').write_bytes(published.data[:len(published.data) // 2])
    assert open(download_checkpoint(url, progress=False), 'rb').read() == published.data
    assert zoo_server.hits['/zoo/tiny.pth'] == 1


@pytest.mark.slow
def test_download_killed_with_sigkill_leaves_one_partial_that_the_next_removes(
        torch_home, zoo_server, published):
    import signal
    import subprocess
    import sys
    import time
    name = published.file_name
    url = zoo_server.add(f'/hold/{name}', published.data, 'hold')
    # leftovers of earlier versions: one per attempt, under random names
    torch_home.mkdir(parents=True)
    old = [torch_home / f'.{name}.0123456789ab.partial', torch_home / f'{name}.{"e" * 32}.partial']
    for path in old:
        path.write_bytes(b'x' * 10)
    unrelated = torch_home / 'other.pth.partial'
    unrelated.write_bytes(b'y')
    code = ('import sys; from mmdccnext.apis import download_checkpoint; '
            'download_checkpoint(sys.argv[1], progress=False)')
    proc = subprocess.Popen([sys.executable, '-c', code, url], env=dict(os.environ))
    partial = torch_home / f'.{name}.partial'
    try:
        # the server sent half and waits: kill the client once that half is on disk
        deadline = time.monotonic() + 300
        while not (partial.is_file() and partial.stat().st_size == len(published.data) // 2):
            assert proc.poll() is None, 'the download ended although the server holds it'
            assert time.monotonic() < deadline, 'the first half never reached the disk'
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        proc.kill()
        zoo_server.release.set()
    # the attempt removed the old leftovers on start and left its own, fixed name only
    assert cache_listing(torch_home) == [f'.{name}.partial', 'other.pth.partial']
    assert partial.stat().st_size == len(published.data) // 2

    url = zoo_server.add(f'/zoo/{name}', published.data)
    path = download_checkpoint(url, progress=False)
    assert open(path, 'rb').read() == published.data
    assert cache_listing(torch_home) == sorted([name, 'other.pth.partial'])
