"""AtomicCheckpointHook: a kill at any moment leaves a resumable work dir.

Unit tests run MMEngine's Runner in-process on a toy model and make the checkpoint write
fail half-way (as a SIGKILL would); the fault test kills a real ``tools/train.py`` process
with SIGKILL after its first checkpoint, resumes it with ``--resume`` and requires the same
final weights, optimizer and LR-scheduler state, bit for bit, as an uninterrupted run.
"""
import glob
import hashlib
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

from mmdccnext.engine import AtomicCheckpointHook
from mmdccnext.utils import load_checkpoint_file

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
HOOK = 'mmdccnext.AtomicCheckpointHook'


class SimulatedKill(BaseException):
    """Raised where the process would have died (not an Exception: nothing catches it)."""


class ToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.linear(torch.stack(inputs))
        return dict(loss=out.pow(2).mean()) if mode == 'loss' else out


class ToyDataset(Dataset):
    metainfo = dict()

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return dict(inputs=torch.tensor([float(i), 1.0]))


def toy_runner(work_dir, max_iters, resume=False, max_keep_ckpts=1):
    return Runner(
        model=ToyModel(),
        work_dir=str(work_dir),
        experiment_name=f'atomic_ckpt_{time.time_ns()}',
        train_dataloader=dict(
            dataset=ToyDataset(), sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=2, num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(
            type=HOOK, interval=2, by_epoch=False, max_keep_ckpts=max_keep_ckpts)),
        resume=resume,
        default_scope='mmengine')


def sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def last_checkpoint(work_dir):
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def test_registered_and_built_from_config(tmp_path):
    runner = toy_runner(tmp_path, max_iters=2)
    hooks = [h for h in runner.hooks if isinstance(h, CheckpointHook)]
    assert len(hooks) == 1 and type(hooks[0]) is AtomicCheckpointHook


def test_kill_during_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    put = LocalBackend.put
    seen = {}

    def put_half_then_die(self, obj, filepath):
        if 'iter_4' in osp.basename(filepath):
            seen['iter_2'] = sha256(tmp_path / 'iter_2.pth')  # as it was when the kill came
            seen['size'] = len(obj)
            put(self, obj[:len(obj) // 2], filepath)
            raise SimulatedKill
        put(self, obj, filepath)

    monkeypatch.setattr(LocalBackend, 'put', put_half_then_die)
    with pytest.raises(SimulatedKill):
        toy_runner(tmp_path, max_iters=4).train()

    # the previous checkpoint: not deleted (max_keep_ckpts=1), unchanged, and still named
    assert sha256(tmp_path / 'iter_2.pth') == seen['iter_2']
    assert last_checkpoint(tmp_path) == str(tmp_path / 'iter_2.pth')
    assert load_checkpoint_file(str(tmp_path / 'iter_2.pth'))['meta']['iter'] == 2
    # the half-written bytes only under the temporary name, no final name for them
    assert not osp.exists(tmp_path / 'iter_4.pth')
    partial = [name for top, _, names in os.walk(tmp_path) for name in names
               if osp.getsize(osp.join(top, name)) == seen['size'] // 2]
    assert partial == ['.iter_4.pth.tmp']

    # --resume picks the complete checkpoint and finishes; the temporary file is replaced
    monkeypatch.setattr(LocalBackend, 'put', put)
    runner = toy_runner(tmp_path, max_iters=4, resume=True)
    runner.train()
    assert last_checkpoint(tmp_path) == str(tmp_path / 'iter_4.pth')
    assert sorted(p.name for p in tmp_path.glob('*.pth*')) == ['iter_4.pth']
    assert not list(tmp_path.glob('.*.tmp'))
    ckpt = load_checkpoint_file(str(tmp_path / 'iter_4.pth'))
    assert ckpt['meta']['iter'] == 4
    assert ckpt['message_hub']['runtime_info']['keep_ckpt_ids'] == [2, 4]


def test_outdated_checkpoint_removed_only_after_new_one_and_last_checkpoint(
        tmp_path, monkeypatch):
    """max_keep_ckpts=1: at every moment a complete checkpoint is on disk and named."""
    replace, remove = os.replace, LocalBackend.remove
    events = []

    def spy_replace(src, dst):
        if str(dst).endswith('.pth'):
            # the new checkpoint appears while the previous one is still there
            events.append(('replace', osp.basename(dst), sorted(
                p.name for p in tmp_path.glob('iter_*.pth'))))
        replace(src, dst)

    def spy_remove(self, filepath):
        name = osp.basename(filepath)
        newer = last_checkpoint(tmp_path)
        assert newer != str(filepath)
        assert load_checkpoint_file(newer)['meta']['iter'] > int(name[5:-4])
        events.append(('remove', name, osp.basename(newer)))
        remove(self, filepath)

    monkeypatch.setattr(os, 'replace', spy_replace)
    monkeypatch.setattr(LocalBackend, 'remove', spy_remove)
    runner = toy_runner(tmp_path, max_iters=6)
    runner.train()
    assert events == [
        ('replace', 'iter_2.pth', []),
        ('replace', 'iter_4.pth', ['iter_2.pth']),
        ('remove', 'iter_2.pth', 'iter_4.pth'),
        ('replace', 'iter_6.pth', ['iter_4.pth']),
        ('remove', 'iter_4.pth', 'iter_6.pth'),
    ]
    assert runner.message_hub.get_info('keep_ckpt_ids') == [6]
    assert runner.message_hub.get_info('last_ckpt') == str(tmp_path / 'iter_6.pth')
    hub = load_checkpoint_file(str(tmp_path / 'iter_6.pth'))['message_hub']['runtime_info']
    assert hub['last_ckpt'] == str(tmp_path / 'iter_6.pth')
    assert hub['keep_ckpt_ids'] == [4, 6]  # 4 was still on disk when 6 was written


def test_kill_before_removal_is_cleaned_up_on_resume(tmp_path, monkeypatch):
    remove = LocalBackend.remove

    def die(self, filepath):
        raise SimulatedKill

    monkeypatch.setattr(LocalBackend, 'remove', die)
    with pytest.raises(SimulatedKill):
        toy_runner(tmp_path, max_iters=4).train()
    assert sorted(p.name for p in tmp_path.glob('iter_*.pth')) == ['iter_2.pth', 'iter_4.pth']
    assert last_checkpoint(tmp_path) == str(tmp_path / 'iter_4.pth')

    monkeypatch.setattr(LocalBackend, 'remove', remove)
    toy_runner(tmp_path, max_iters=6, resume=True).train()
    assert sorted(p.name for p in tmp_path.glob('iter_*.pth')) == ['iter_6.pth']


def test_non_local_backend_keeps_parent_behaviour(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(CheckpointHook, '_save_checkpoint_with_step',
                        lambda self, runner, step, meta: calls.append(step))
    runner = toy_runner(tmp_path, max_iters=2)
    hook = AtomicCheckpointHook(interval=1, by_epoch=False)
    hook.out_dir, hook.file_backend = 's3://bucket/work_dir', object()
    hook._save_checkpoint_with_step(runner, 1, dict(iter=1))
    assert calls == [1]
    assert not list(tmp_path.glob('*.pth*'))


def test_every_config_uses_the_hook():
    configs = sorted(glob.glob(osp.join(REPO, 'configs', '*', '*.py')))
    assert configs
    for path in configs:
        cfg = Config.fromfile(path)
        assert cfg.default_hooks.checkpoint.type == HOOK, path


# --- fault test: SIGKILL a real training process, resume it, compare bit for bit ------------

MAX_ITERS = 6


def fault_config(tmp_path):
    sys.path.insert(0, osp.join(REPO, 'tests', 'test_integration'))
    from synthetic_helpers import TINY, tiny_config

    from mmdccnext.datasets import generate
    root = tmp_path / 'synthetic'
    generate('coco', str(root / 'coco'), seed=0, **TINY['coco'])
    cfg = tiny_config(
        'detection/retinanet_dccnext-b0_fpn_synthetic.py', root, tmp_path / 'unused', **{
            'train_cfg': dict(_delete_=True, type='IterBasedTrainLoop', max_iters=MAX_ITERS),
            'train_dataloader.batch_size': 2,
            'train_dataloader.sampler': dict(type='InfiniteSampler', shuffle=False),
            # stochastic depth draws from torch's global RNG, whose state MMEngine does not
            # checkpoint (resume re-seeds it): with drop_path_rate > 0 a resumed run draws
            # other masks than an uninterrupted one
            'model.backbone.drop_path_rate': 0.0,
            # an LR that changes every iteration and in steps, to see it restored
            'param_scheduler': [
                dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4),
                dict(type='MultiStepLR', milestones=[5], gamma=0.5, by_epoch=False)],
            'default_hooks.logger.interval': 1,
            'default_hooks.checkpoint': dict(interval=2, by_epoch=False, max_keep_ckpts=1),
            'log_processor': dict(by_epoch=False),
            'randomness': dict(seed=0, deterministic=True),
        })
    pipeline = cfg.train_dataloader.dataset.pipeline
    cfg.train_dataloader.dataset.pipeline = [t for t in pipeline if t['type'] != 'RandomFlip']
    for key in ('val', 'test'):
        cfg[f'{key}_dataloader'] = cfg[f'{key}_cfg'] = cfg[f'{key}_evaluator'] = None
    assert cfg.default_hooks.checkpoint.type == HOOK
    path = str(tmp_path / 'retinanet_fault.py')
    cfg.dump(path)
    return path


def train_cmd(config, work_dir, *extra):
    return [sys.executable, osp.join(REPO, 'tools', 'train.py'), config,
            '--work-dir', str(work_dir), *extra]


def run(cmd, log):
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    with open(log, 'w') as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                              timeout=300)
    with open(log) as f:
        text = f.read()
    assert proc.returncode == 0, text[-3000:]
    return text


def assert_same(a, b, where):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f'{where}.{key}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f'{where}[{i}]')
    else:
        assert a == b, where


def hub_history(ckpt, key):
    """(values, counts) that the message hub logged for ``key`` over all iterations."""
    values, counts = ckpt['message_hub']['log_scalars'][key].data
    return values.tolist(), counts.tolist()


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    config = fault_config(tmp_path)
    ref_dir, killed_dir = tmp_path / 'uninterrupted', tmp_path / 'killed'

    run(train_cmd(config, ref_dir), tmp_path / 'uninterrupted.log')

    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    with open(tmp_path / 'killed.log', 'w') as out:
        proc = subprocess.Popen(train_cmd(config, killed_dir), stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=REPO)
        try:
            deadline = time.monotonic() + 300
            while not osp.exists(killed_dir / 'last_checkpoint'):
                assert proc.poll() is None, 'training ended before its first checkpoint'
                assert time.monotonic() < deadline, 'no checkpoint within 300 s'
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    first = last_checkpoint(killed_dir)
    assert first == str(killed_dir / 'iter_2.pth')
    assert load_checkpoint_file(first)['meta']['iter'] == 2
    assert not osp.exists(killed_dir / f'iter_{MAX_ITERS}.pth')

    log = run(train_cmd(config, killed_dir, '--resume'), tmp_path / 'resumed.log')
    assert f'Auto resumed from the latest checkpoint {first}' in log
    assert f'Iter(train) [3/{MAX_ITERS}]' in log
    assert f'Iter(train) [1/{MAX_ITERS}]' not in log  # continued, not restarted

    name = f'iter_{MAX_ITERS}.pth'
    ref = load_checkpoint_file(str(ref_dir / name))
    got = load_checkpoint_file(str(killed_dir / name))
    assert last_checkpoint(killed_dir) == str(killed_dir / name)
    assert got['meta']['iter'] == ref['meta']['iter'] == MAX_ITERS
    assert ref['state_dict'].keys() == got['state_dict'].keys()
    for key, tensor in ref['state_dict'].items():
        assert torch.equal(tensor, got['state_dict'][key]), f'state_dict.{key}'
    assert_same(ref['optimizer'], got['optimizer'], 'optimizer')
    assert_same(ref['param_schedulers'], got['param_schedulers'], 'param_schedulers')
    # the logged LR and loss of all iterations, the ones before the kill from the checkpoint
    for key in ('train/lr', 'train/loss'):
        values, counts = hub_history(got, key)
        assert len(values) == MAX_ITERS, key
        assert (values, counts) == hub_history(ref, key), key
    assert got['message_hub']['runtime_info']['keep_ckpt_ids'][-1] == MAX_ITERS
    assert sorted(p.name for p in killed_dir.glob('*.pth*')) == [name]
    for path in tmp_path.rglob('*.pth'):  # 140 MB each; pytest keeps the last runs' tmp dirs
        path.unlink()
