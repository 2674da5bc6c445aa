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
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.evaluator import BaseMetric, Evaluator
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.logging import MessageHub
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

from mmdccnext.engine import AtomicCheckpointHook
from mmdccnext.engine.hooks.checkpoint_hook import EpochSeededPipeline
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


# --- iteration-based loops: the random state of the main process comes back -----------------

class DropoutToy(ToyModel):
    """Draws from torch's global RNG in every training step, as drop-path does."""

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = nn.functional.dropout(self.linear(torch.stack(inputs)), 0.5, self.training)
        return dict(loss=out.pow(2).mean()) if mode == 'loss' else out


def dropout_runner(work_dir, max_iters, resume=False):
    torch.manual_seed(1)  # the model is built before the Runner seeds: the same initial weights
    return Runner(
        model=DropoutToy(), work_dir=str(work_dir),
        experiment_name=f'atomic_rng_{time.time_ns()}',
        train_dataloader=dict(
            dataset=ToyDataset(), sampler=dict(type='InfiniteSampler', shuffle=True),
            batch_size=2, num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type=HOOK, interval=2, by_epoch=False)),
        randomness=dict(seed=0), resume=resume, default_scope='mmengine')


def test_iteration_based_resume_continues_the_random_stream(tmp_path):
    straight = dropout_runner(tmp_path / 'straight', max_iters=6)
    straight.train()
    dropout_runner(tmp_path / 'resumed', max_iters=2).train()
    resumed = dropout_runner(tmp_path / 'resumed', max_iters=6, resume=True)
    resumed.train()
    assert resumed.iter == 6
    assert torch.equal(resumed.model.linear.weight, straight.model.linear.weight)
    assert torch.equal(resumed.model.linear.bias, straight.model.linear.bias)


# --- best checkpoints: kill between the new best and the periodic checkpoint naming it --------

class IterationMetric(BaseMetric):
    """``score``: the (0-based) training iteration validated after: each one a new best."""

    def process(self, data_batch, data_samples):
        self.results.append(0)

    def compute_metrics(self, results):
        return dict(score=float(MessageHub.get_current_instance().get_info('iter')))


def best_runner(work_dir, max_iters, resume=False):
    return Runner(
        model=ToyModel(), work_dir=str(work_dir),
        experiment_name=f'atomic_best_{time.time_ns()}',
        train_dataloader=dict(
            dataset=ToyDataset(), sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=2, num_workers=0),
        val_dataloader=dict(
            dataset=ToyDataset(), sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=4, num_workers=0),
        val_evaluator=Evaluator(IterationMetric()), val_cfg=dict(),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=2),
        default_hooks=dict(checkpoint=dict(type=HOOK, interval=2, by_epoch=False,
                                           max_keep_ckpts=1, save_best='score', rule='greater')),
        resume=resume, default_scope='mmengine')


def test_best_complete_but_not_yet_named_is_adopted_on_resume(tmp_path, monkeypatch):
    save = AtomicCheckpointHook._save_checkpoint_with_step
    saved = []

    def die_before_renaming_the_new_best(self, runner, step, meta):
        saved.append(step)
        if saved == [2, 2, 4, 4]:  # iter 4's periodic save again, after its best
            raise SimulatedKill
        return save(self, runner, step, meta)

    monkeypatch.setattr(AtomicCheckpointHook, '_save_checkpoint_with_step',
                        die_before_renaming_the_new_best)
    with pytest.raises(SimulatedKill):
        best_runner(tmp_path, max_iters=6).train()
    # both bests complete; the periodic checkpoint still names the old one
    assert checkpoint_files(tmp_path) == ['best_score_iter_2.pth', 'best_score_iter_4.pth',
                                          'iter_4.pth']
    hub = load_checkpoint_file(str(tmp_path / 'iter_4.pth'))['message_hub']['runtime_info']
    assert hub['best_ckpt'] == str(tmp_path / 'best_score_iter_2.pth')

    monkeypatch.setattr(AtomicCheckpointHook, '_save_checkpoint_with_step', save)
    runner = best_runner(tmp_path, max_iters=6, resume=True)
    runner.train()
    # iter 4's best was adopted (it replaced iter 2's), then replaced by iter 6's: one best
    assert checkpoint_files(tmp_path) == ['best_score_iter_6.pth', 'iter_6.pth']
    assert runner.message_hub.get_info('best_ckpt') == str(tmp_path / 'best_score_iter_6.pth')


# --- what the data workers draw: a function of (seed, epoch, sample), not of the worker ------

def draw(results):
    """A pipeline drawing as augmentations do, from numpy, python and torch."""
    return (results['sample_idx'], np.random.rand(), random.random(), torch.rand(1).item())


class Draws(Dataset):

    def __init__(self, seeded, epoch):
        self.pipeline = EpochSeededPipeline(draw, 123, epoch) if seeded else draw

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return self.pipeline(dict(sample_idx=i))


def draws_per_epoch(num_workers, persistent, first=0, epochs=2, seeded=True):
    """What a loader yields in ``epochs`` epochs from ``first`` (a resume starts at > 0)."""
    import multiprocessing
    epoch = multiprocessing.RawValue('q', first)
    loader = torch.utils.data.DataLoader(
        Draws(seeded, epoch), batch_size=2, num_workers=num_workers,
        persistent_workers=persistent, collate_fn=list,
        worker_init_fn=lambda worker: (np.random.seed(worker), random.seed(worker)))
    result = []
    for e in range(first, first + epochs):
        epoch.value = e  # what AtomicCheckpointHook.before_train_epoch does
        result.append([sample for batch in loader for sample in batch])
    return result


def test_epoch_seeded_pipeline_draws_the_same_in_any_worker_and_after_a_restart():
    reference = draws_per_epoch(num_workers=0, persistent=False)
    assert reference[0] != reference[1]  # new draws each epoch
    assert draws_per_epoch(2, persistent=True) == reference  # real worker processes
    # resumed at epoch 1: fresh workers draw what the persistent ones drew in epoch 1
    assert draws_per_epoch(2, persistent=True, first=1, epochs=1) == reference[1:]
    # why it is needed: unseeded persistent workers carry their state into epoch 1
    plain = draws_per_epoch(2, persistent=True, seeded=False)
    assert draws_per_epoch(2, persistent=True, first=1, epochs=1, seeded=False) != plain[1:]


# --- fault test: SIGKILL a real training process at three moments, resume, compare bitwise --

CONFIG = osp.join(REPO, 'configs', 'classification', 'dccnext-b0_synthetic.py')
MAX_EPOCHS = 3


def train_cmd(data_root, work_dir, *extra, fault=None):
    """tools/train.py on the shipped synthetic config with its augmentations (random crop,
    flip), drop-path and 2 data workers; only the schedule length changes (3 epochs, with a
    checkpoint and a validation each), a best checkpoint is kept, and the run is seeded."""
    script = osp.join(REPO, 'tests', 'test_engine', 'fault_trigger.py') if fault else \
        osp.join(REPO, 'tools', 'train.py')
    return [sys.executable, script, CONFIG, '--work-dir', str(work_dir), *extra,
            '--cfg-options', *(f'{d}.dataset.data_root={data_root}'
                               for d in ('train_dataloader', 'val_dataloader', 'test_dataloader')),
            'randomness.seed=0', f'train_cfg.max_epochs={MAX_EPOCHS}', 'train_cfg.val_interval=1',
            'default_hooks.checkpoint.interval=1', 'default_hooks.logger.interval=1',
            # 'less': with this seed, epochs 1 and 2 are each a new best, so the second best
            # write has a previous best to lose
            'default_hooks.checkpoint.save_best=accuracy/top1',
            'default_hooks.checkpoint.rule=less']


def run(cmd, log, fault=None):
    """Run to the end (``fault`` None) or until the trigger SIGKILLs it; the log's text."""
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    env.pop('MMDCCNEXT_FAULT', None)
    if fault:
        env['MMDCCNEXT_FAULT'] = fault
    with open(log, 'w') as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                              timeout=600)
    with open(log) as f:
        text = f.read()
    assert proc.returncode == (-signal.SIGKILL if fault else 0), text[-3000:]
    return text


def assert_same(a, b, where):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and np.array_equal(a, b), where
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


def checkpoint_files(work_dir):
    """Every file beside the checkpoints, temporary ones included."""
    return sorted(p.name for p in work_dir.iterdir() if p.name.endswith(('.pth', '.tmp')))


@pytest.mark.slow
def test_sigkill_at_three_moments_then_resume_equals_uninterrupted_run(tmp_path):
    from mmdccnext.datasets import generate
    data = tmp_path / 'imagenet'
    generate('imagenet', str(data), seed=0, num_train=48, num_val=12, image_size=(64, 64))
    ref_dir, work = tmp_path / 'uninterrupted', tmp_path / 'killed'
    best1, best2 = 'best_accuracy_top1_epoch_1.pth', 'best_accuracy_top1_epoch_2.pth'

    run(train_cmd(data, ref_dir), tmp_path / 'uninterrupted.log')
    assert checkpoint_files(ref_dir) == [best2, f'epoch_{MAX_EPOCHS}.pth']

    # 1. mid-iteration: the 3rd iteration (epoch 2 of 2 iterations each), before its step
    run(train_cmd(data, work, fault=True), tmp_path / 'killed1.log', fault='iteration:3')
    assert checkpoint_files(work) == [best1, 'epoch_1.pth']
    assert last_checkpoint(work) == str(work / 'epoch_1.pth')

    # 2. during the write of the next periodic checkpoint (epoch 2), half of it on disk
    log = run(train_cmd(data, work, '--resume', fault=True), tmp_path / 'killed2.log',
              fault='periodic:1')
    assert f'--resume: resuming from {work / "epoch_1.pth"}' in log
    assert checkpoint_files(work) == ['.epoch_2.pth.tmp', best1, 'epoch_1.pth']
    assert last_checkpoint(work) == str(work / 'epoch_1.pth')
    assert load_checkpoint_file(str(work / 'epoch_1.pth'))['meta']['epoch'] == 1

    # 3. during the write of the second best checkpoint: the first one stays, complete
    run(train_cmd(data, work, '--resume', fault=True), tmp_path / 'killed3.log',
        fault='best:1')
    assert checkpoint_files(work) == ['.best_accuracy_top1_epoch_2.pth.tmp', best1,
                                      'epoch_2.pth']
    assert load_checkpoint_file(str(work / best1))['meta']['epoch'] == 1
    assert last_checkpoint(work) == str(work / 'epoch_2.pth')

    # resume: the validation of epoch 2 (whose best was cut off) runs again, then epoch 3
    log = run(train_cmd(data, work, '--resume'), tmp_path / 'resumed.log')
    assert 'running it again' in log
    assert f'Epoch(train) [{MAX_EPOCHS}][1/2]' in log
    assert 'Epoch(train) [2][1/2]' not in log  # continued, not restarted
    assert checkpoint_files(work) == checkpoint_files(ref_dir)  # no leftovers, no lost best

    name = f'epoch_{MAX_EPOCHS}.pth'
    ref = load_checkpoint_file(str(ref_dir / name))
    got = load_checkpoint_file(str(work / name))
    assert last_checkpoint(work) == str(work / name)
    assert got['meta']['epoch'] == ref['meta']['epoch'] == MAX_EPOCHS
    assert len(ref['state_dict']) > 100 and ref['state_dict'].keys() == got['state_dict'].keys()
    for key, tensor in ref['state_dict'].items():
        assert torch.equal(tensor, got['state_dict'][key]), f'state_dict.{key}'
    assert_same(ref['optimizer'], got['optimizer'], 'optimizer')
    assert_same(ref['param_schedulers'], got['param_schedulers'], 'param_schedulers')
    assert_same(ref['resume_state'], got['resume_state'], 'resume_state')
    # the logged LR and loss of every iteration, those before the kills from the checkpoint
    for key in ('train/lr', 'train/loss'):
        values, counts = hub_history(got, key)
        assert len(values) == 2 * MAX_EPOCHS, key
        assert (values, counts) == hub_history(ref, key), key
    ref_best, got_best = (load_checkpoint_file(str(d / best2)) for d in (ref_dir, work))
    assert_same(ref_best['state_dict'], got_best['state_dict'], 'best.state_dict')
    for path in tmp_path.rglob('*.pth'):  # pytest keeps the last runs' tmp dirs
        path.unlink()
