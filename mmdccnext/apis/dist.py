"""Distributed training on machines without CUDA (CPU processes over gloo).

MMEngine 0.10.7's ``init_dist`` calls ``torch.cuda.set_device`` (and, for slurm, divides by
the GPU count), and its Runner hands ``device_ids=[LOCAL_RANK]`` to DDP, which DDP refuses
for CPU modules. On a CUDA-less machine we therefore start the process group ourselves
(MMEngine then skips its own init) and ask for a DDP wrapper without ``device_ids``.
With CUDA present, nothing here changes MMEngine's behaviour.
"""
import os
import subprocess

import torch
import torch.distributed as torch_dist


def _slurm_env_to_torch_env():
    """Translate the SLURM_* variables of one srun task to torch's env:// variables."""
    node_list = os.environ['SLURM_NODELIST']
    first_host = subprocess.run(['scontrol', 'show', 'hostnames', node_list],
                                capture_output=True, text=True,
                                check=True).stdout.split()[0]
    os.environ.setdefault('MASTER_ADDR', first_host)
    os.environ.setdefault('MASTER_PORT', '29500')
    os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
    os.environ['RANK'] = os.environ['SLURM_PROCID']
    os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')


def uses_cpu_distributed(launcher):
    return launcher != 'none' and not torch.cuda.is_available()


def setup_cpu_distributed(cfg):
    """Start a gloo process group for ``cfg.launcher`` and adapt ``cfg`` for CPU DDP."""
    if not uses_cpu_distributed(cfg.launcher):
        return
    if cfg.launcher == 'slurm':
        _slurm_env_to_torch_env()
    elif cfg.launcher != 'pytorch':
        raise ValueError(f'launcher: CPU-only distributed runs support "pytorch" and '
                         f'"slurm", got {cfg.launcher!r}')
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend='gloo', init_method='env://')
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel',
        broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper['device_ids'] = None  # CPU modules: DDP requires device_ids=None
    cfg.model_wrapper_cfg = wrapper
