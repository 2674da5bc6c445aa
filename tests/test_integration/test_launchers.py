"""The launch scripts start real multi-process training: torchrun, and Slurm's srun.

Two CPU processes (gloo) train the synthetic RetinaNet for a few iterations; both ranks must
log training iterations into their own log, the process group must have two members, and
exactly one checkpoint must be written.
"""
import glob
import os
import os.path as osp
import shutil
import socket
import subprocess
import sys

import pytest
from synthetic_helpers import REPO, tiny_config

# every test here starts real multi-process training runs
pytestmark = pytest.mark.slow

MAX_ITERS = 3


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def write_tiny_detector_config(synthetic_root, tmp_path):
    cfg = tiny_config(
        'detection/retinanet_dccnext-b0_fpn_synthetic.py',
        synthetic_root,
        tmp_path / 'work',
        **{
            'train_cfg':
            dict(_delete_=True, type='IterBasedTrainLoop', max_iters=MAX_ITERS, val_interval=1000),
            'train_dataloader.batch_size':
            2,
            'train_dataloader.sampler':
            dict(type='InfiniteSampler', shuffle=True),
            'param_scheduler': [dict(type='ConstantLR', factor=1.0, by_epoch=False)],
            'default_hooks.logger.interval':
            1,
            'log_processor.by_epoch':
            False,
            'default_hooks.checkpoint':
            dict(type='CheckpointHook', interval=MAX_ITERS, by_epoch=False),
            # DEBUG makes MMEngine write one log file per rank: evidence that each trained.
            'log_level':
            'DEBUG',
            'randomness':
            dict(seed=0)
        })
    path = tmp_path / 'tiny_retinanet.py'
    cfg.dump(str(path))
    return str(path), str(tmp_path / 'work')


def check_two_ranks_trained(work_dir, output):
    logs = sorted(glob.glob(osp.join(work_dir, '*', '*.log')))
    rank_logs = {'rank1' in osp.basename(log): log for log in logs}
    assert set(rank_logs) == {False, True}, f'expected a log of rank 0 and of rank 1: {logs}'
    for log in rank_logs.values():
        text = open(log).read()
        assert f'Iter(train) [{MAX_ITERS}/{MAX_ITERS}]' in text, log
    assert 'Distributed training: True' in open(rank_logs[False]).read()
    assert 'world size 2' in output or 'GPU number: 2' in open(rank_logs[False]).read()
    checkpoints = sorted(glob.glob(osp.join(work_dir, '*.pth')))
    assert [osp.basename(c) for c in checkpoints] == [f'iter_{MAX_ITERS}.pth']
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        assert f.read().strip() == checkpoints[0]


def test_dist_train_sh_runs_two_processes(synthetic_root, tmp_path):
    config, work_dir = write_tiny_detector_config(synthetic_root, tmp_path)
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        PORT=str(free_port()),
        MASTER_ADDR='127.0.0.1',
        OMP_NUM_THREADS='1')
    proc = subprocess.run(
        ['bash',
         osp.join(REPO, 'tools', 'dist_train.sh'), config, '2', '--work-dir', work_dir],
        env=env,
        capture_output=True,
        text=True,
        timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    check_two_ranks_trained(work_dir, proc.stdout + proc.stderr)


SLURM_TOOLS = ('munged', 'slurmctld', 'slurmd', 'srun', 'scontrol')


@pytest.mark.skipif(
    any(shutil.which(t) is None for t in SLURM_TOOLS) or os.geteuid() != 0,
    reason='needs root and Debian slurm-wlm + munge (munged, slurmctld, slurmd, srun, '
    'scontrol); `make test` installs them where apt-get is available')
def test_slurm_train_sh_runs_two_tasks(synthetic_root, tmp_path):
    config, work_dir = write_tiny_detector_config(synthetic_root, tmp_path)
    cluster = tmp_path / 'slurm'
    script = osp.join(REPO, 'tools', 'misc', 'slurm_local_cluster.sh')
    subprocess.run(['bash', script, 'start', str(cluster), '2'], check=True, timeout=120)
    try:
        env = dict(
            os.environ,
            SLURM_CONF=str(cluster / 'slurm.conf'),
            PYTHON=sys.executable,
            GPUS='2',
            GPUS_PER_NODE='2',
            CPUS_PER_TASK='1',
            GRES='none',
            SRUN_ARGS='--time=15',
            MASTER_PORT=str(free_port()),
            OMP_NUM_THREADS='1')
        proc = subprocess.run([
            'bash',
            osp.join(REPO, 'tools', 'slurm_train.sh'), 'debug', 'tiny-retinanet', config, work_dir
        ],
                              env=env,
                              capture_output=True,
                              text=True,
                              timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
        check_two_ranks_trained(work_dir, proc.stdout + proc.stderr)
    finally:
        subprocess.run(['bash', script, 'stop', str(cluster)], timeout=60)
