"""Run ``tools/train.py`` and SIGKILL the process at a chosen moment (no timing, no luck).

    MMDCCNEXT_FAULT=<moment>:<n> python tests/test_engine/fault_trigger.py <train.py args>

``iteration:<n>``: inside the n-th training iteration of this process, after the backward
pass and before the optimizer step. ``periodic:<n>`` / ``best:<n>``: during the n-th write of
a periodic (``epoch_*``/``iter_*``) / best (``best_*``) checkpoint of this process, once half
of its bytes are on disk. The kill is a real ``SIGKILL`` of this process: no handler, no
cleanup, as when the machine or the scheduler ends a job.
"""
import os
import os.path as osp
import runpy
import signal
import sys

from mmengine.fileio import LocalBackend
from mmengine.optim import OptimWrapper

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
moment, n = os.environ['MMDCCNEXT_FAULT'].split(':')
count = 0


def _tick():
    global count
    count += 1
    return count == int(n)


def _die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


if moment == 'iteration':
    step = OptimWrapper.step

    def step_or_die(self, *args, **kwargs):
        if _tick():
            _die()
        return step(self, *args, **kwargs)

    OptimWrapper.step = step_or_die
elif moment in ('periodic', 'best'):
    put = LocalBackend.put

    def put_or_die(self, obj, filepath):
        name = osp.basename(str(filepath))
        is_best = name.startswith('.best_')
        if name.endswith('.pth.tmp') and is_best == (moment == 'best') and _tick():
            put(self, obj[:len(obj) // 2], filepath)
            _die()
        return put(self, obj, filepath)

    LocalBackend.put = put_or_die
else:
    raise ValueError(f'MMDCCNEXT_FAULT: unknown moment {moment!r}')

sys.argv = [osp.join(REPO, 'tools', 'train.py'), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name='__main__')
