"""Local checkpoints written by mmengine's runner load and resume under torch >= 2.6."""
import functools
import http.server
import os.path as osp
import pickle
import threading

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader

import mmdccnext  # noqa: F401  (registers the checkpoint loaders)
from mmdccnext.utils import load_checkpoint_file


class ToyRegressor(BaseModel):

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 1)

    def forward(self, inputs, targets=None, mode='tensor'):
        out = self.linear(torch.stack(inputs))
        if mode == 'loss':
            return dict(loss=((out - torch.stack(targets))**2).mean())
        return out


class ToyData(torch.utils.data.Dataset):

    def __init__(self):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(16, 4, generator=g)
        self.y = self.x.sum(1, keepdim=True)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], targets=self.y[i])


def make_runner(work_dir, max_iters, resume=False, load_from=None):
    return Runner(
        model=ToyRegressor(),
        work_dir=str(work_dir),
        experiment_name=f'toy_{osp.basename(str(work_dir))}_{max_iters}_{resume}',
        train_dataloader=dict(
            dataset=ToyData(),
            sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=4,
            num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9)),
        param_scheduler=dict(type='LinearLR', start_factor=0.1, by_epoch=False, end=4),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
            logger=dict(type='LoggerHook', interval=1)),
        resume=resume,
        load_from=load_from,
        default_scope='mmengine')


def test_plain_torch_load_rejects_mmengine_checkpoint(tmp_path):
    """The problem is real: torch>=2.6 default loading refuses what mmengine writes."""
    make_runner(tmp_path, max_iters=2).train()
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / 'iter_2.pth')
    ckpt = load_checkpoint_file(str(tmp_path / 'iter_2.pth'))
    assert ckpt['meta']['iter'] == 2


def test_resume_round_trip_matches_uninterrupted_run(tmp_path):
    make_runner(tmp_path / 'a', max_iters=2).train()
    assert (tmp_path / 'a' / 'iter_2.pth').is_file()

    resumed = make_runner(tmp_path / 'a', max_iters=4, resume=True)
    resumed.train()
    assert resumed.iter == 4
    # LR schedule and momentum buffers came back: the result equals one 4-iteration run.
    straight = make_runner(tmp_path / 'b', max_iters=4)
    straight.train()
    for p, q in zip(resumed.model.parameters(), straight.model.parameters()):
        assert torch.equal(p, q)
    lr = resumed.optim_wrapper.get_lr()['lr'][0]
    assert lr == pytest.approx(straight.optim_wrapper.get_lr()['lr'][0])


def test_load_from_local_checkpoint(tmp_path):
    make_runner(tmp_path / 'a', max_iters=2).train()
    runner = make_runner(tmp_path / 'c', max_iters=0, load_from=str(tmp_path / 'a/iter_2.pth'))
    runner.load_or_resume()
    saved = load_checkpoint_file(str(tmp_path / 'a/iter_2.pth'))['state_dict']
    assert torch.equal(runner.model.linear.weight, saved['linear.weight'])


class Arbitrary:
    """A class nobody allow-listed: loading it would run arbitrary code paths."""

    def __init__(self):
        self.payload = 'x'


def test_local_loader_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save(dict(state_dict={}, extra=Arbitrary()), path)
    with pytest.raises(pickle.UnpicklingError):
        CheckpointLoader.load_checkpoint(str(path))


def test_missing_local_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='nothing.pth'):
        CheckpointLoader.load_checkpoint(str(tmp_path / 'nothing.pth'))


@pytest.fixture
def http_dir(tmp_path):
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()


@pytest.mark.slow
def test_http_checkpoints_load_weights_only(http_dir, tmp_path_factory, monkeypatch):
    root, url = http_dir
    torch.save(dict(state_dict=dict(w=torch.ones(2))), root / 'good.pth')
    torch.save(dict(state_dict={}, extra=Arbitrary()), root / 'evil.pth')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path_factory.mktemp('torch_home')))
    good = CheckpointLoader.load_checkpoint(f'{url}/good.pth')
    assert torch.equal(good['state_dict']['w'], torch.ones(2))
    with pytest.raises(pickle.UnpicklingError):
        CheckpointLoader.load_checkpoint(f'{url}/evil.pth')


class ReachesThroughGetattr:
    """Pickles as ``getattr(HistoryBuffer, '__init__')``: the first step of a gadget chain."""

    def __reduce__(self):
        from mmengine.logging.history_buffer import HistoryBuffer
        return getattr, (HistoryBuffer, '__init__')


def test_getattr_is_limited_to_history_buffer_statistics(tmp_path):
    path = tmp_path / 'gadget.pth'
    torch.save(dict(state_dict={}, extra=ReachesThroughGetattr()), path)
    with pytest.raises(pickle.UnpicklingError, match='only the statistics methods'):
        load_checkpoint_file(str(path))


# --- one error that names the file and what is wrong with it --------------------------------

def _damaged_files(root):
    torch.save(dict(state_dict=dict(w=torch.ones(1000))), root / 'good.pth')
    data = (root / 'good.pth').read_bytes()
    files = {
        'empty.pth': (b'', 'the file is empty'),
        'truncated.pth': (data[:len(data) // 2], 'truncated or corrupted: a zip archive'),
        'text.pth': (b'hello world\n', 'not a PyTorch checkpoint: neither a zip archive'),
        'random.pth': (bytes(range(7, 255)) * 20, 'not a PyTorch checkpoint'),
    }
    for name, (content, _) in files.items():
        (root / name).write_bytes(content)
    torch.save(dict(state_dict={}, extra=Arbitrary()), root / 'evil.pth')
    files['evil.pth'] = (None, r'it contains objects that are not allowed \(Unsupported global: '
                               r'GLOBAL test_checkpoint.Arbitrary')
    return files


def test_damaged_checkpoints_raise_one_error_naming_file_and_reason(tmp_path):
    from mmdccnext.utils.checkpoint import CheckpointError
    for name, (_, reason) in _damaged_files(tmp_path).items():
        for load in (load_checkpoint_file, CheckpointLoader.load_checkpoint):
            with pytest.raises(CheckpointError, match=f'checkpoint {tmp_path / name}: {reason}') \
                    as info:
                load(str(tmp_path / name))
            # never torch's advice to load with weights_only=False, not even in the chain
            assert 'weights_only' not in str(info.value), name
            assert info.value.__cause__ is None and info.value.__suppress_context__, name
    assert torch.equal(load_checkpoint_file(str(tmp_path / 'good.pth'))['state_dict']['w'],
                       torch.ones(1000))


def test_flipped_byte_is_found_by_the_crc_check(tmp_path):
    """torch.load does not check the archive's CRCs (a flipped byte in a tensor loads
    silently); the check that --resume runs on its candidates does."""
    from mmdccnext.utils.checkpoint import diagnose_checkpoint_file
    _damaged_files(tmp_path)
    data = bytearray((tmp_path / 'good.pth').read_bytes())
    offset = bytes(data).index(torch.ones(1000).numpy().tobytes())
    data[offset + 5] ^= 0xFF
    (tmp_path / 'flipped.pth').write_bytes(bytes(data))
    assert diagnose_checkpoint_file(str(tmp_path / 'good.pth')) is None
    assert diagnose_checkpoint_file(str(tmp_path / 'flipped.pth')) == (
        'corrupted: the archive member good/data/0 fails its CRC check')
